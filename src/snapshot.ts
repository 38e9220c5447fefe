import type { LRUCache } from 'lru-cache';
import { QcowError, hex } from './errors.js';
import { type Header, checkTable } from './format/header.js';
import { MAX_SNAPSHOTS, MAX_SNAPSHOT_EXTRA_DATA, MAX_SNAPSHOT_TABLE_BYTES, SNAPSHOT_ENTRY_FIXED, type SnapshotEntry, decodeSnapshotEntry } from './format/snapshot-entry.js';
import type { ImageFile } from './io/image-file.js';
import { checkL1Table, loadL1Table } from './translate/l1-table.js';
import type { ImageProblem } from './problems.js';

/**
 * An internal snapshot: the table entry plus what follows from it. Its L1 table is read the first time
 * it is asked for, so opening an image with many snapshots reads only the snapshot table.
 */
export class Snapshot implements SnapshotEntry {
  readonly index: number;
  readonly entryOffset: number;
  readonly l1TableOffset: number;
  readonly l1Size: number;
  readonly uniqueId: string;
  readonly name: string;
  readonly time: { seconds: number; nanoseconds: number };
  readonly guestRuntime: bigint;
  readonly vmStateSize: number;
  readonly vmStateSize32: number;
  readonly extraDataSize: number;
  readonly extraData: SnapshotEntry['extraData'];
  /** The disk size when the snapshot was taken (extra data), else the image's current size. */
  readonly diskSize: number;
  /** Guest offset in the snapshot's L1 space where the VM state starts: the first L2 span past the disk. */
  readonly vmStateOffset: number;

  constructor(
    entry: SnapshotEntry,
    currentSize: number,
    l2Span: number,
    private readonly file: ImageFile,
    private readonly clusterSize: number,
    /**
     * Where loaded L1 tables are kept (the image's bounded SharedCaches.snapshotL1); without it the
     * table is read again on every call.
     */
    private readonly l1Cache?: LRUCache<string, Float64Array>,
  ) {
    this.index = entry.index;
    this.entryOffset = entry.entryOffset;
    this.l1TableOffset = entry.l1TableOffset;
    this.l1Size = entry.l1Size;
    this.uniqueId = entry.uniqueId;
    this.name = entry.name;
    this.time = entry.time;
    this.guestRuntime = entry.guestRuntime;
    this.vmStateSize = entry.vmStateSize;
    this.vmStateSize32 = entry.vmStateSize32;
    this.extraDataSize = entry.extraDataSize;
    this.extraData = entry.extraData;
    this.diskSize = entry.extraData.diskSize ?? currentSize;
    this.vmStateOffset = Math.ceil(this.diskSize / l2Span) * l2Span;
    if (!Number.isSafeInteger(this.vmStateOffset + this.vmStateSize)) {
      throw new QcowError('EBADIMAGE', file.path, `snapshot ${entry.index} ("${entry.name}"): disk size ${this.diskSize} plus VM state size ${this.vmStateSize} is too large`);
    }
  }

  /** The snapshot's date. */
  get date(): Date {
    return new Date(this.time.seconds * 1000 + Math.floor(this.time.nanoseconds / 1e6));
  }

  get hasVmState(): boolean {
    return this.vmStateSize > 0;
  }

  /**
   * Offsets of the L2 tables this snapshot's L1 table names (0 = none), loaded on first use and kept in
   * the image's bounded L1 cache (shared by snapshots naming the same table).
   */
  l1Table(): Float64Array {
    const key = `${this.file.id}:${this.l1TableOffset}:${this.l1Size}`;
    const cached = this.l1Cache?.get(key);
    if (cached) return cached;
    const l1 = loadL1Table(this.file, this.l1TableOffset, this.l1Size, this.clusterSize, `snapshot ${this.index} ("${this.name}", id ${this.uniqueId})`);
    this.l1Cache?.set(key, l1);
    return l1;
  }
}

/** An entry whose own fields are bad but whose extent is known: the table goes on after it. */
export type BadEntryHandler = (index: number, entryOffset: number, err: QcowError) => void;

/**
 * Reads and decodes the snapshot table the header points to, bounded by QEMU's limits. Without
 * `onBadEntry` any bad entry refuses the table; with it, an entry whose length fields are sound but
 * whose other fields are not is reported there and skipped.
 */
export function readSnapshotTable(file: ImageFile, header: Header, onBadEntry?: BadEntryHandler): SnapshotEntry[] {
  const count = header.nbSnapshots;
  if (count === 0) return [];
  checkTable(file.path, file.size, header.clusterSize, 'snapshots_offset', header.snapshotsOffset, SNAPSHOT_ENTRY_FIXED, 'snapshot table');
  if (count > MAX_SNAPSHOTS) throw new QcowError('EBADIMAGE', file.path, `nb_snapshots ${count} is too large (at most ${MAX_SNAPSHOTS})`);
  const tableEnd = Math.min(file.size, header.snapshotsOffset + MAX_SNAPSHOT_TABLE_BYTES);
  const entries: SnapshotEntry[] = [];
  let window = Buffer.alloc(0);
  let at = 0;
  for (let i = 0; i < count; i++) {
    for (;;) {
      let decoded: ReturnType<typeof decodeSnapshotEntry>;
      try {
        decoded = decodeSnapshotEntry(window, at, i, header.snapshotsOffset, file.path);
      } catch (err) {
        const end = entryEnd(window, at);
        if (!onBadEntry || !(err instanceof QcowError) || end === undefined || end > window.length) throw err;
        onBadEntry(i, header.snapshotsOffset + at, err);
        at = Math.ceil(end / 8) * 8;
        break;
      }
      if (decoded) {
        entries.push(decoded.entry);
        at = decoded.next;
        break;
      }
      // Read on: the table is read in growing steps so a huge count cannot make us read blindly.
      const have = header.snapshotsOffset + window.length;
      if (have >= tableEnd) {
        const why = tableEnd < file.size ? `the snapshot table exceeds ${MAX_SNAPSHOT_TABLE_BYTES} bytes` : `it runs past the end of the file (size ${file.size})`;
        // Name the sizes that make the entry this long, where its fixed part is there to say them.
        const sizes =
          at + 40 <= window.length
            ? ` (extra_data_size ${window.readUInt32BE(at + 36)}, id_str_size ${window.readUInt16BE(at + 12)}, name_size ${window.readUInt16BE(at + 14)})`
            : '';
        throw new QcowError('EBADIMAGE', file.path, `snapshot ${i} of ${count} (entry at ${hex(header.snapshotsOffset + at)}) is cut short${sizes}: ${why}`);
      }
      const more = Math.min(tableEnd - have, Math.max(65536, window.length));
      const next = Buffer.allocUnsafe(window.length + more);
      window.copy(next);
      file.readAt(next, window.length, more, have, 'snapshot table');
      window = next;
    }
  }
  return entries;
}

/** Where the entry at `at` ends, from its length fields; undefined where they are not there or too large. */
function entryEnd(window: Buffer, at: number): number | undefined {
  if (at + SNAPSHOT_ENTRY_FIXED > window.length) return undefined;
  const extra = window.readUInt32BE(at + 36);
  if (extra > MAX_SNAPSHOT_EXTRA_DATA) return undefined;
  return at + SNAPSHOT_ENTRY_FIXED + extra + window.readUInt16BE(at + 12) + window.readUInt16BE(at + 14);
}

/** The problem text of a QcowError, without the file name it starts with. */
function why(err: QcowError): string {
  return err.message.startsWith(`${err.file}: `) ? err.message.slice(err.file.length + 2) : err.message;
}

function problem(what: string, offset: number, err: QcowError, hides: string): ImageProblem {
  return { what, offset, where: hex(offset), why: why(err), hides };
}

/**
 * The image's snapshots. Unless `strict`, a damaged part hides only what depends on it, and is listed:
 * a snapshot table that cannot be read hides every snapshot (what an unreadable table holds cannot be
 * trusted, not even its first entries); an entry with bad extra data, bad sizes or an L1 table that is
 * not within the file hides that snapshot. With `strict` the first of these refuses the image.
 */
export function openSnapshots(
  file: ImageFile,
  header: Header,
  l2Span: number,
  l1Cache: LRUCache<string, Float64Array> | undefined,
  strict: boolean,
): { snapshots: Snapshot[]; problems: ImageProblem[] } {
  const problems: ImageProblem[] = [];
  let entries: SnapshotEntry[];
  try {
    entries = readSnapshotTable(
      file,
      header,
      strict
        ? undefined
        : (index, entryOffset, err) => {
            const field = /l1_table_offset/.test(err.message) ? 'entry' : 'extra data';
            problems.push(problem(`snapshot ${index}: ${field}`, field === 'entry' ? entryOffset : entryOffset + SNAPSHOT_ENTRY_FIXED, err, `snapshot ${index}`));
          },
    );
  } catch (err) {
    if (strict || !(err instanceof QcowError)) throw err;
    const count = header.nbSnapshots;
    return { snapshots: [], problems: [problem('snapshot table', header.snapshotsOffset, err, count === 1 ? 'the only snapshot' : `all ${count} snapshots`)] };
  }
  const snapshots: Snapshot[] = [];
  for (const entry of entries) {
    const what = `snapshot ${entry.index} ("${entry.name}", id ${entry.uniqueId})`;
    let snapshot: Snapshot;
    try {
      snapshot = new Snapshot(entry, header.size, l2Span, file, header.clusterSize, l1Cache);
    } catch (err) {
      if (strict || !(err instanceof QcowError)) throw err;
      problems.push(problem(`${what}: extra data`, entry.entryOffset + SNAPSHOT_ENTRY_FIXED, err, `snapshot ${entry.index}`));
      continue;
    }
    try {
      checkL1Table(file, entry.l1TableOffset, entry.l1Size, header.clusterSize, what);
    } catch (err) {
      if (!(err instanceof QcowError)) throw err;
      if (strict) throw new QcowError('EBADIMAGE', err.file, why(err), { cause: err });
      problems.push(problem(`${what}: L1 table`, entry.l1TableOffset, err, `snapshot ${entry.index}`));
      continue;
    }
    snapshots.push(snapshot);
  }
  return { snapshots, problems };
}
