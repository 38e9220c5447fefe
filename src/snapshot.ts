import { QcowError, hex } from './errors.js';
import { MAX_L1_BYTES } from './format/header.js';
import { l1EntryOffset } from './format/l2.js';
import type { SnapshotEntry } from './format/snapshot.js';
import type { HostFile } from './io/host-file.js';
import type { LRUCache } from 'lru-cache';

/** Reads and decodes an L1 table (offsets of L2 tables; 0 where none), checked against the file. */
export function loadL1Table(file: HostFile, offset: number, entries: number, clusterSize: number, what: string): Float64Array {
  if (entries * 8 > MAX_L1_BYTES) {
    throw new QcowError('EIO', file.path, `${what}: l1_size ${entries} is too large (at most ${MAX_L1_BYTES / 8} entries)`);
  }
  const l1 = new Float64Array(entries);
  if (entries === 0) return l1;
  if (offset % clusterSize !== 0) throw new QcowError('EIO', file.path, `${what}: L1 table offset ${hex(offset)} is not cluster aligned`);
  if (offset + entries * 8 > file.size) {
    throw new QcowError('EIO', file.path, `${what}: L1 table at ${hex(offset)} (${entries} entries) extends past the end of the file (size ${file.size})`);
  }
  const bytes = file.readExact(offset, entries * 8, `${what} L1 table`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < entries; i++) l1[i] = l1EntryOffset(view.getUint32(i * 8), view.getUint32(i * 8 + 4));
  return l1;
}

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
    private readonly file: HostFile,
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
