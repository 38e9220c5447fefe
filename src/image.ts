import path from 'node:path';
import fs from 'node:fs';
import { QcowError, hex } from './errors.js';
import { type Header, decodeHeader, headerBytesWanted, l2EntriesPerTable, probeMagic } from './format/header.js';
import { MAX_SNAPSHOTS, MAX_SNAPSHOT_TABLE_BYTES, type SnapshotEntry, decodeSnapshotEntry } from './format/snapshot.js';
import { HostFile } from './io/host-file.js';
import { type CacheOptions, SharedCaches } from './translate/caches.js';
import { Qcow2Metadata } from './translate/qcow2-metadata.js';
import type { Disk } from './disk/disk.js';
import { Qcow2Disk } from './disk/qcow2-disk.js';
import { RawDisk } from './disk/raw-disk.js';
import { Snapshot, loadL1Table } from './snapshot.js';

export interface OpenOptions extends CacheOptions {
  /** Longest backing chain followed below the top image (default 32). */
  maxChainDepth?: number;
  /** Admit block devices as backing or data files (default: regular files only). */
  allowNonRegularFiles?: boolean;
  /** Read the external data file from this path instead of the name the image gives. */
  dataFile?: string;
  /** Ignore the backing file: unallocated runs read as zeros (QEMU's `backing: null`). */
  noBacking?: boolean;
}

export type ImageFormat = 'qcow2' | 'raw';

/** One image of the backing chain below the top one. */
export interface BackingLink {
  /** 1 for the top image's backing file, 2 for its backing file, and so on. */
  depth: number;
  /** The name as the image above wrote it. */
  name: string;
  /** The resolved path that was opened. */
  path: string;
  format: ImageFormat;
  /** Where the format came from: the image above's backing format extension, or probing the file. */
  formatSource: 'header' | 'probed';
  /** Virtual size (for raw: the file size rounded up to whole 512-byte sectors, as QEMU counts it). */
  size: number;
  /** For qcow2 links. */
  header?: Header;
}

/** An opened qcow2 image: its header, snapshots and backing chain, and a Disk for every view. */
export interface QcowImage {
  readonly path: string;
  readonly header: Header;
  readonly fileSize: number;
  readonly mtime: Date;
  readonly snapshots: readonly Snapshot[];
  readonly backingChain: readonly BackingLink[];
  /** The external data file's resolved path, where the image has one. */
  readonly dataFilePath?: string;
  /** The disk as it is now: the header's L1 table, merged with the backing chain. */
  readonly active: Disk;
  /** The disk as it was at a snapshot, with the snapshot's own size. */
  snapshotDisk(snapshot: Snapshot): Disk;
  /** The VM state a snapshot saved, or undefined when it saved none. */
  vmState(snapshot: Snapshot): Disk | undefined;
  /** Finds a snapshot by unique ID, else by name (the way `qemu-img snapshot -a` looks them up). */
  findSnapshot(idOrName: string): Snapshot | undefined;
  readonly caches: SharedCaches;
  close(): void;
}

const DEFAULT_MAX_CHAIN_DEPTH = 32;

/** Opens a qcow2 image read-only. Throws a QcowError (one line, naming the file) for a bad image. */
export async function openImage(imagePath: string, options: OpenOptions = {}): Promise<QcowImage> {
  return openImageSync(imagePath, options);
}

export function openImageSync(imagePath: string, options: OpenOptions = {}): QcowImage {
  const caches = new SharedCaches(options);
  const opened: HostFile[] = [];
  try {
    return buildImage(path.resolve(imagePath), options, caches, opened);
  } catch (err) {
    for (const f of opened) f.close();
    throw err;
  }
}

function buildImage(imagePath: string, options: OpenOptions, caches: SharedCaches, opened: HostFile[]): QcowImage {
  const file = HostFile.open(imagePath);
  opened.push(file);
  const header = readHeader(file);
  if (header.cryptMethod !== 'none') {
    throw new QcowError('EUNSUPPORTED', file.path, `encrypted images (${header.cryptMethod === 'aes' ? 'AES-CBC' : 'LUKS'}) are not supported yet`);
  }

  let dataFile = file;
  let dataFilePath: string | undefined;
  if (header.hasDataFile) {
    const name = options.dataFile ?? header.dataFile;
    if (name === undefined) throw new QcowError('EBADIMAGE', file.path, 'needs an external data file but names none (pass dataFile)');
    dataFilePath = options.dataFile ? path.resolve(options.dataFile) : resolveNamedFile(file.path, name, 'external data file');
    dataFile = options.dataFile ? HostFile.open(dataFilePath, { allowNonRegular: options.allowNonRegularFiles }) : openNamedFile(file.path, 'external data file', name, dataFilePath, options);
    opened.push(dataFile);
  }

  const meta = new Qcow2Metadata(header, file, dataFile, caches, 0);
  const backingChain: BackingLink[] = [];
  const backing = options.noBacking ? undefined : openBacking(file.path, header, 1, options, caches, opened, backingChain, [realpath(file.path)]);
  const activeL1 = loadL1Table(file, header.l1TableOffset, header.l1Size, header.clusterSize, 'active');
  const active = new Qcow2Disk(meta, () => activeL1, header.size, backing);
  const l2Span = l2EntriesPerTable(header) * header.clusterSize;
  const snapshots = readSnapshotTable(file, header).map((e) => new Snapshot(e, header.size, l2Span, file, header.clusterSize, caches.snapshotL1));

  const disks = new Map<Snapshot, Disk>();
  const vmStates = new Map<Snapshot, Disk>();
  return {
    path: file.path,
    header,
    fileSize: file.size,
    mtime: file.mtime,
    snapshots,
    backingChain,
    dataFilePath,
    active,
    caches,
    snapshotDisk(s) {
      let disk = disks.get(s);
      if (!disk) {
        disk = new Qcow2Disk(meta, () => s.l1Table(), s.diskSize, backing);
        disks.set(s, disk);
      }
      return disk;
    },
    vmState(s) {
      if (!s.hasVmState) return undefined;
      let disk = vmStates.get(s);
      if (!disk) {
        disk = new Qcow2Disk(meta, () => s.l1Table(), s.vmStateSize, undefined, s.vmStateOffset);
        vmStates.set(s, disk);
      }
      return disk;
    },
    findSnapshot(idOrName) {
      return snapshots.find((s) => s.uniqueId === idOrName) ?? snapshots.find((s) => s.name === idOrName);
    },
    close() {
      for (const f of opened) f.close();
      caches.l2.clear();
      caches.clusters.clear();
      caches.snapshotL1.clear();
      caches.inflater?.close();
    },
  };
}

function readHeader(file: HostFile): Header {
  const first = Buffer.alloc(Math.min(file.size, 4096));
  file.readAt(first, 0, first.length, 0, 'header');
  const { qcow, version } = probeMagic(first);
  if (qcow && version !== 1) {
    const want = Math.min(file.size, headerBytesWanted(first));
    if (want > first.length) {
      const whole = Buffer.alloc(want);
      file.readAt(whole, 0, want, 0, 'header');
      return decodeHeader(whole, file.path, file.size);
    }
  }
  if (file.size === 0) throw new QcowError('EBADIMAGE', file.path, 'is empty (0 bytes), not a qcow2 image');
  return decodeHeader(first, file.path, file.size);
}

function readSnapshotTable(file: HostFile, header: Header): SnapshotEntry[] {
  const count = header.nbSnapshots;
  if (count === 0) return [];
  if (count > MAX_SNAPSHOTS) throw new QcowError('EBADIMAGE', file.path, `nb_snapshots ${count} is too large (at most ${MAX_SNAPSHOTS})`);
  const tableEnd = Math.min(file.size, header.snapshotsOffset + MAX_SNAPSHOT_TABLE_BYTES);
  const entries: SnapshotEntry[] = [];
  let window = Buffer.alloc(0);
  let at = 0;
  for (let i = 0; i < count; i++) {
    for (;;) {
      const decoded = decodeSnapshotEntry(window, at, i, header.snapshotsOffset, file.path);
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

function openBacking(
  namingPath: string,
  header: Header,
  depth: number,
  options: OpenOptions,
  caches: SharedCaches,
  opened: HostFile[],
  chain: BackingLink[],
  seen: string[],
): Disk | undefined {
  if (header.backingFile === undefined) return undefined;
  const maxDepth = options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (depth > maxDepth) throw new QcowError('EBADIMAGE', namingPath, `backing chain is deeper than ${maxDepth} images`);
  const name = header.backingFile;
  const target = resolveNamedFile(namingPath, name, 'backing file');
  const real = realpath(target);
  if (seen.includes(real)) {
    throw new QcowError('EBADIMAGE', namingPath, `backing file cycle: ${[...seen, real].map((p) => path.basename(p)).join(' -> ')}`);
  }
  const file = openNamedFile(namingPath, 'backing file', name, target, options);
  opened.push(file);

  let format: ImageFormat;
  let formatSource: BackingLink['formatSource'] = 'header';
  // An empty backing format extension means "probe", as in QEMU.
  if (header.backingFormat !== undefined && header.backingFormat !== '') {
    if (header.backingFormat === 'qcow2' || header.backingFormat === 'raw') format = header.backingFormat;
    else if (header.backingFormat === 'file') format = 'raw';
    else throw new QcowError('EUNSUPPORTED', namingPath, `backing file ${name} has format "${header.backingFormat}", which is not supported (qcow2 and raw are)`);
  } else {
    format = probeFormat(file);
    formatSource = 'probed';
  }

  if (format === 'raw') {
    const raw = new RawDisk(file, depth);
    chain.push({ depth, name, path: file.path, format, formatSource, size: raw.size });
    return raw;
  }
  const backingHeader = readHeader(file);
  if (backingHeader.cryptMethod !== 'none') throw new QcowError('EUNSUPPORTED', file.path, 'encrypted backing files are not supported yet');
  let dataFile = file;
  if (backingHeader.hasDataFile) {
    if (backingHeader.dataFile === undefined) throw new QcowError('EBADIMAGE', file.path, 'needs an external data file but names none');
    dataFile = openNamedFile(file.path, 'external data file', backingHeader.dataFile, resolveNamedFile(file.path, backingHeader.dataFile, 'external data file'), options);
    opened.push(dataFile);
  }
  chain.push({ depth, name, path: file.path, format, formatSource, size: backingHeader.size, header: backingHeader });
  const meta = new Qcow2Metadata(backingHeader, file, dataFile, caches, depth);
  const below = openBacking(file.path, backingHeader, depth + 1, options, caches, opened, chain, [...seen, real]);
  const l1 = loadL1Table(file, backingHeader.l1TableOffset, backingHeader.l1Size, backingHeader.clusterSize, 'active');
  return new Qcow2Disk(meta, () => l1, backingHeader.size, below);
}

/**
 * Opens a file an image names (backing or external data file) so that a failure starts with the image
 * that names it: `top.qcow2: backing file "base.qcow2" (/abs/base.qcow2): no such file`. The code is
 * kept (ENOENT, EACCES, EBADIMAGE).
 */
function openNamedFile(namingPath: string, what: string, name: string, target: string, options: OpenOptions): HostFile {
  try {
    return HostFile.open(target, { allowNonRegular: options.allowNonRegularFiles });
  } catch (err) {
    if (!(err instanceof QcowError)) throw err;
    const problem = err.message.startsWith(`${err.file}: `) ? err.message.slice(err.file.length + 2) : err.message;
    throw new QcowError(err.code, namingPath, `${what} "${name}" (${target}): ${problem}`, { cause: err });
  }
}

/** Formats we recognise by their magic but cannot read: never mistake them for raw data. */
const FOREIGN_MAGICS: [string, Buffer][] = [
  ['vmdk', Buffer.from('KDMV')],
  ['vdi', Buffer.from('<<< ')],
  ['vhdx', Buffer.from('vhdxfile')],
  ['vpc', Buffer.from('conectix')],
  ['qed', Buffer.from('QED\0')],
  ['luks', Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])],
];

function probeFormat(file: HostFile): ImageFormat {
  const head = Buffer.alloc(Math.min(file.size, 512));
  file.readAt(head, 0, head.length, 0, 'header');
  const { qcow, version } = probeMagic(head);
  if (qcow) {
    if (version === 1) throw new QcowError('EUNSUPPORTED', file.path, 'qcow version 1 backing files are not supported');
    return 'qcow2';
  }
  for (const [fmt, magic] of FOREIGN_MAGICS) {
    if (head.subarray(0, magic.length).equals(magic)) throw new QcowError('EUNSUPPORTED', file.path, `looks like a ${fmt} image, which is not supported as a backing file`);
  }
  return 'raw';
}

/**
 * Resolves a backing or data file name the way QEMU does for plain files: relative to the folder of the
 * image that names it. Protocol names (`nbd:`, `http://`, `json:{...}`) are refused: we only read files.
 */
function resolveNamedFile(namingPath: string, name: string, what: string): string {
  if (name === '') throw new QcowError('EBADIMAGE', namingPath, `${what} name is empty`);
  if (name.includes('\0')) throw new QcowError('EBADIMAGE', namingPath, `${what} name contains a NUL byte`);
  let plain = name;
  const colon = name.indexOf(':');
  const slash = name.indexOf('/');
  if (colon > 0 && (slash < 0 || colon < slash)) {
    if (name.startsWith('file:')) plain = name.slice(5);
    else {
      const protocol = name.startsWith('json:') ? 'json:' : `${name.slice(0, colon)}:`;
      throw new QcowError('EBADIMAGE', namingPath, `${what} "${name}" uses the ${protocol} protocol; only local files are read`);
    }
  }
  return path.resolve(path.dirname(namingPath), plain);
}

function realpath(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return p;
  }
}
