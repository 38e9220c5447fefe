import type { EncryptionInfo } from '../encryption.js';
import type { BackingLink, QcowImage, RemoteSource } from '../image.js';
import type { Snapshot } from '../snapshot.js';
import type { ImageProblem } from '../problems.js';
import type { FeatureName } from '../format/header.js';
import { EXT_BACKING_FORMAT, EXT_BITMAPS, EXT_CRYPTO, EXT_DATA_FILE, EXT_FEATURE_TABLE } from '../format/header.js';
import { snapshotFileNames, snapshotStems } from '../names/snapshot-names.js';
import type { Volume } from '../volume/partitions.js';
import { type ImageVolumes, imageVolumes } from '../volume/image-volumes.js';
import type { MemoryOptions } from '../memory/guest-memory.js';
import { type MemoryInfo, describeMemory } from './describe-memory.js';

/**
 * A plain, JSON-serialisable description of an opened image: what the mount shows as `info.json` and
 * what `qcow-info --json` prints. 64-bit counters (feature masks, guest runtime, icount) are decimal
 * strings; offsets and sizes are numbers (the library checks they are safe integers).
 */
export interface ImageInfo {
  /** Absolute path of the image file. */
  image: string;
  /** Size of the image file on the host, in bytes. */
  fileSize: number;
  /** The image file's mtime, ISO 8601. */
  fileMtime: string;
  /** 'qcow': a qcow version 1 image (no snapshots, refcounts, features or extensions). */
  format: 'qcow2' | 'qcow';
  version: 1 | 2 | 3;
  /** The size QEMU shows: the header's size rounded down to whole 512-byte sectors. */
  virtualSize: number;
  clusterSize: number;
  clusterBits: number;
  compressionType: 'zlib' | 'zstd';
  refcountOrder: number;
  /** Bits per refcount entry (2^refcount_order). */
  refcountBits: number;
  encryption: 'none' | 'aes' | 'luks';
  /**
   * For an encrypted image, what `qemu-img info` shows of it (LUKS: cipher, mode, IV generator, hash,
   * key slots, payload offset) and whether a passphrase opened it. Never a key or a passphrase.
   */
  encrypt: EncryptionInfo | null;
  /** Encrypted images of the chain no passphrase was given for (their data cannot be read). */
  locked: string[];
  dirty: boolean;
  corrupt: boolean;
  extendedL2: boolean;
  lazyRefcounts: boolean;
  header: {
    headerLength: number;
    backingFileOffset: number;
    backingFileSize: number;
    l1Size: number;
    l1TableOffset: number;
    refcountTableOffset: number;
    refcountTableClusters: number;
    nbSnapshots: number;
    snapshotsOffset: number;
    /** Feature masks as decimal strings (64-bit). */
    incompatibleFeatures: string;
    compatibleFeatures: string;
    autoclearFeatures: string;
  };
  /** Names of the feature bits that are set, by kind. */
  features: { incompatible: string[]; compatible: string[]; autoclear: string[] };
  extensions: {
    /** Every extension in file order: type as hex, a name where known, where its data is and its length. */
    list: { type: string; name: string; offset: number; length: number }[];
    backingFormat: string | null;
    featureNameTable: FeatureName[];
    bitmaps: { count: number; directorySize: number; directoryOffset: number } | null;
    encryptionHeader: { offset: number; length: number } | null;
    dataFile: string | null;
  };
  backingFile: string | null;
  backingChain: (Omit<BackingLink, 'header' | 'encryption'> & { encryption?: 'aes' | 'luks'; encrypt?: EncryptionInfo })[];
  dataFile: { name: string | null; path: string; raw: boolean } | null;
  snapshots: SnapshotInfo[];
  /** The active disk's partition table, or null where it has none. */
  partitions: PartitionsInfo | null;
  /** A running QEMU held the image for writing when it was opened (read with --force-share). */
  heldForWriting: boolean;
  /**
   * Set by a mount when the image file changed after it was opened (a live image): the size and mtime
   * now, and when that was noticed. null while it has not changed.
   */
  imageChanged: { noticed: string; fileSize: number; fileMtime: string } | null;
  /** Set by a mount: how FUSE requests reach the daemon (-o fuse_uring: io_uring when negotiated). */
  fuseTransport?: 'io_uring' | 'dev';
  /** Damaged parts left out (what, where, why, what they hide); empty for a sound image. */
  problems: ImageProblem[];
  /** The file names the mount shows (relative to the mount point). */
  files: { active: string; info: string; snapshots: string };
  /** Only for an image read over HTTP(S). */
  remote?: RemoteInfo;
}

/** An image read over HTTP(S): where from (no credentials, no query string), what the server said, the fetching so far. */
export interface RemoteInfo {
  url: string;
  /** The object's size and validators as the server gave them at open (a change later fails reads). */
  size: number;
  etag: string | null;
  lastModified: string | null;
  /** Counters when this description was made (for a mount: when it was mounted), over the whole chain. */
  cache: { limit: number; bytes: number; hits: number; misses: number; readAhead: number };
  requests: number;
  bytesFetched: number;
  retries: number;
  failures: number;
}

export interface SnapshotInfo {
  index: number;
  id: string;
  name: string;
  /** The snapshot's date, ISO 8601 in UTC, to the millisecond. */
  date: string;
  /** Seconds since the epoch and the nanoseconds within the second, as stored. */
  dateSeconds: number;
  dateNanoseconds: number;
  /** Guest runtime when the snapshot was taken (vm_clock_nsec), in nanoseconds, as a decimal string. */
  vmClockNs: string;
  /** The same, as QEMU prints it: HH:MM:SS.mmm (hours may exceed 99). */
  vmClock: string;
  vmStateSize: number;
  diskSize: number;
  /** Instruction count for record/replay, as a decimal string, or null when none was recorded. */
  icount: string | null;
  l1Size: number;
  l1TableOffset: number;
  extraDataSize: number;
  /**
   * File names in the mount, relative to the mount point; vmstate only where VM state was saved; ram and
   * core (guest memory) where its RAM could be rebuilt (described only when memory is: see `memory`).
   */
  files: { raw: string; vmstate: string | null; ram?: string | null; core?: string | null };
  /** The RAM in the VM state (null without VM state); present when memory was described. */
  memory?: MemoryInfo | null;
  /** This snapshot's partition table (tables differ per snapshot), or null where it has none. */
  partitions: PartitionsInfo | null;
}

/** A disk view's partition table, as info.json and `qcow-info` show it. */
export interface PartitionsInfo {
  scheme: 'mbr' | 'gpt';
  sectorSize: number;
  /** MBR disk signature (0x...) or GPT disk GUID. */
  diskId: string | null;
  /** The GPT header copy the entries came from. */
  gptCopy: 'primary' | 'backup' | null;
  partitions: PartitionInfo[];
  /** What is wrong with the table (bad CRC and the copy used, overlaps, out-of-disk entries, EBR loops). */
  problems: string[];
}

export interface PartitionInfo {
  /** Linux numbering: MBR primaries 1-4 by slot, logicals from 5; GPT entry index + 1. */
  number: number;
  kind: 'primary' | 'logical' | 'gpt';
  /** The file in a mount (relative to the mount point), or null where no byte of it lies on the disk. */
  file: string | null;
  start: number;
  /** Size as the table says; the file holds `fileSize` bytes (cut at the disk's end). */
  size: number;
  fileSize: number;
  /** MBR type id (0x83) or GPT type GUID. */
  type: string;
  typeName: string | null;
  /** GPT partition name. */
  name: string | null;
  uniqueGuid: string | null;
  attributes: string | null;
  bootable: boolean;
}

/** A view's partition table for info.json; `base` is the view's file name without `.raw`. */
export function describePartitions(volume: Volume | undefined, base: string): PartitionsInfo | null {
  if (!volume) return null;
  const t = volume.table;
  const files = new Map(volume.partitions.map((p) => [p.number, p]));
  return {
    scheme: t.scheme,
    sectorSize: t.sectorSize,
    diskId: t.diskId ?? null,
    gptCopy: t.gptCopy ?? null,
    partitions: t.partitions.map((p) => {
      const exposed = files.get(p.number);
      return {
        number: p.number,
        kind: p.kind,
        file: exposed ? `${base}.${exposed.suffix}` : null,
        start: p.start,
        size: p.size,
        fileSize: exposed ? exposed.disk.size : 0,
        type: p.type,
        typeName: p.typeName ?? null,
        name: p.name ?? null,
        uniqueGuid: p.uniqueGuid ?? null,
        attributes: p.attributes ?? null,
        bootable: p.bootable,
      };
    }),
    problems: [...t.problems],
  };
}

export interface DescribeOptions {
  /** Describe each VM state's RAM (reads each VM state's RAM part once), with these options. */
  memory?: MemoryOptions;
}

/** Adds each snapshot's memory description and its .ram/.core file names (`only`: just these snapshots). */
export function describeSnapshotMemory(image: QcowImage, infos: SnapshotInfo[], options: MemoryOptions = {}): SnapshotInfo[] {
  const stems = snapshotStems(image.snapshots);
  return infos.map((info) => {
    // info.index is the table position; a damaged snapshot left out makes it differ from the list's.
    const at = image.snapshots.findIndex((s) => s.index === info.index);
    const memory = describeMemory(image, image.snapshots[at]!, options) ?? null;
    const served = memory !== null && memory.problem === null;
    const stem = stems[at];
    return {
      ...info,
      files: { ...info.files, ram: served ? `snapshots/${stem}.ram` : null, core: served ? `snapshots/${stem}.core` : null },
      memory,
    };
  });
}

const EXTENSION_NAMES = new Map<number, string>([
  [EXT_BACKING_FORMAT, 'backing format'],
  [EXT_FEATURE_TABLE, 'feature name table'],
  [EXT_BITMAPS, 'bitmaps'],
  [EXT_CRYPTO, 'full disk encryption header pointer'],
  [EXT_DATA_FILE, 'external data file name'],
]);

/** Guest runtime in ns as QEMU's `qemu-img snapshot -l` shows it: HH:MM:SS.mmm. */
export function formatVmClock(ns: bigint): string {
  const ms = ns / 1_000_000n;
  const hours = ms / 3_600_000n;
  const minutes = (ms / 60_000n) % 60n;
  const seconds = (ms / 1000n) % 60n;
  const millis = ms % 1000n;
  const pad = (v: bigint, n: number) => v.toString().padStart(n, '0');
  return `${pad(hours, 2)}:${pad(minutes, 2)}:${pad(seconds, 2)}.${pad(millis, 3)}`;
}

export function describeSnapshots(snapshots: readonly Snapshot[], volumes?: readonly (Volume | undefined)[]): SnapshotInfo[] {
  const names = snapshotFileNames(snapshots);
  return snapshots.map((s, i) => ({
    index: s.index,
    id: s.uniqueId,
    name: s.name,
    date: s.date.toISOString(),
    dateSeconds: s.time.seconds,
    dateNanoseconds: s.time.nanoseconds,
    vmClockNs: s.guestRuntime.toString(),
    vmClock: formatVmClock(s.guestRuntime),
    vmStateSize: s.vmStateSize,
    diskSize: s.diskSize,
    icount: s.extraData.icount === undefined ? null : s.extraData.icount.toString(),
    l1Size: s.l1Size,
    l1TableOffset: s.l1TableOffset,
    extraDataSize: s.extraDataSize,
    files: { raw: `snapshots/${names[i]!.raw}`, vmstate: names[i]!.vmstate ? `snapshots/${names[i]!.vmstate}` : null },
    partitions: describePartitions(volumes?.[i], `snapshots/${names[i]!.raw.replace(/\.raw$/, '')}`),
  }));
}

/**
 * Describes an opened image as plain JSON-serialisable data (no bigint, no Date, no class instances).
 * `volumes`: every view's partitions where the caller has read them already (the mount has);
 * `options.memory`: describe each VM state's RAM too (reads each VM state's RAM part once).
 */
export function describeImage(image: QcowImage, volumes: ImageVolumes = imageVolumes(image), options: DescribeOptions = {}): ImageInfo {
  const h = image.header;
  const info: ImageInfo = {
    image: image.path,
    fileSize: image.fileSize,
    fileMtime: image.mtime.toISOString(),
    format: image.format,
    version: h.version,
    virtualSize: image.active.size,
    clusterSize: h.clusterSize,
    clusterBits: h.clusterBits,
    compressionType: h.compressionType,
    refcountOrder: h.refcountOrder,
    refcountBits: 2 ** h.refcountOrder,
    encryption: h.cryptMethod,
    encrypt: image.encryption ? structuredClone(image.encryption) : null,
    locked: [...image.locked],
    dirty: h.dirty,
    corrupt: h.corrupt,
    extendedL2: h.extendedL2,
    lazyRefcounts: h.lazyRefcounts,
    header: {
      headerLength: h.headerLength,
      backingFileOffset: h.backingFileOffset,
      backingFileSize: h.backingFileSize,
      l1Size: h.l1Size,
      l1TableOffset: h.l1TableOffset,
      refcountTableOffset: h.refcountTableOffset,
      refcountTableClusters: h.refcountTableClusters,
      nbSnapshots: h.nbSnapshots,
      snapshotsOffset: h.snapshotsOffset,
      incompatibleFeatures: h.incompatibleFeatures.toString(),
      compatibleFeatures: h.compatibleFeatures.toString(),
      autoclearFeatures: h.autoclearFeatures.toString(),
    },
    features: {
      incompatible: [...h.features.incompatible],
      compatible: [...h.features.compatible],
      autoclear: [...h.features.autoclear],
    },
    extensions: {
      list: h.extensions.map((e) => ({
        type: `0x${e.type.toString(16).padStart(8, '0')}`,
        name: EXTENSION_NAMES.get(e.type) ?? 'unknown',
        offset: e.offset,
        length: e.length,
      })),
      backingFormat: h.backingFormat ?? null,
      featureNameTable: h.featureNameTable.map((f) => ({ ...f })),
      bitmaps: h.bitmaps ? { ...h.bitmaps } : null,
      encryptionHeader: h.encryption ? { ...h.encryption } : null,
      dataFile: h.dataFile ?? null,
    },
    backingFile: h.backingFile ?? null,
    backingChain: image.backingChain.map((l) => ({
      depth: l.depth,
      name: l.name,
      path: l.path,
      format: l.format,
      formatSource: l.formatSource,
      size: l.size,
      ...(l.encryption ? { encryption: l.encryption.format, encrypt: structuredClone(l.encryption) } : {}),
    })),
    dataFile: image.dataFilePath ? { name: h.dataFile ?? null, path: image.dataFilePath, raw: h.dataFileRaw } : null,
    snapshots: options.memory ? describeSnapshotMemory(image, describeSnapshots(image.snapshots, volumes.snapshots), options.memory) : describeSnapshots(image.snapshots, volumes.snapshots),
    partitions: describePartitions(volumes.active, 'active'),
    heldForWriting: image.heldForWriting,
    imageChanged: null,
    problems: image.problems.map((p) => ({ ...p })),
    files: { active: 'active.raw', info: 'info.json', snapshots: 'snapshots/' },
  };
  if (image.remote) info.remote = describeRemote(image.remote);
  return info;
}

function describeRemote(remote: RemoteSource): RemoteInfo {
  const s = remote.stats();
  return {
    url: remote.url,
    size: remote.size,
    etag: remote.etag ?? null,
    lastModified: remote.lastModified ?? null,
    cache: { limit: s.cacheLimit, bytes: s.cacheBytes, hits: s.hits, misses: s.misses, readAhead: s.readAhead },
    requests: s.requests,
    bytesFetched: s.bytesFetched,
    retries: s.retries,
    failures: s.failures,
  };
}
