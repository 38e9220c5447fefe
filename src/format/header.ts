import { QcowError, hex, safeNumber } from '../errors.js';
import { BigEndian } from './bytes.js';

export const QCOW_MAGIC = 0x514649fb; // "QFI\xfb"
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** QEMU refuses an L1 table over 32 MiB (QCOW_MAX_L1_SIZE); so do we, before allocating it. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;

export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

export type FeatureKind = 'incompatible' | 'compatible' | 'autoclear';

/** Bits this reader knows, by kind; the names follow QEMU's feature name table. */
export const KNOWN_FEATURES: Record<FeatureKind, readonly string[]> = {
  incompatible: ['dirty', 'corrupt', 'external data file', 'compression type', 'extended L2 entries'],
  compatible: ['lazy refcounts'],
  autoclear: ['bitmaps', 'raw external data'],
};

export interface FeatureName {
  kind: FeatureKind;
  bit: number;
  name: string;
}

export interface HeaderExtension {
  type: number;
  /** Offset of the extension's data in the file. */
  offset: number;
  length: number;
}

export interface BitmapsExtension {
  count: number;
  directorySize: number;
  directoryOffset: number;
}

export interface EncryptionHeaderPointer {
  offset: number;
  length: number;
}

export type CompressionType = 'zlib' | 'zstd';
export type CryptMethod = 'none' | 'aes' | 'luks';

export interface Header {
  /** 1: a qcow version 1 image, decoded by qcow1-header.ts and shown in this shape (see `qcow1`). */
  version: 1 | 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  clusterSize: number;
  /** Virtual disk size in bytes. */
  size: number;
  cryptMethod: CryptMethod;
  cryptMethodCode: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: CompressionType;
  /** Names of the feature bits that are set, from the image's feature name table where it has one. */
  features: Record<FeatureKind, string[]>;
  dirty: boolean;
  corrupt: boolean;
  extendedL2: boolean;
  lazyRefcounts: boolean;
  /** Set when the image keeps guest data in an external data file. */
  hasDataFile: boolean;
  /** autoclear bit 1: the external data file is a valid raw image on its own. */
  dataFileRaw: boolean;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  featureNameTable: FeatureName[];
  bitmaps?: BitmapsExtension;
  encryption?: EncryptionHeaderPointer;
  /** Every extension found, known or not, in file order. */
  extensions: HeaderExtension[];
  /** qcow version 1 only: what its header has that qcow2's does not. */
  qcow1?: { l2Bits: number; headerSize: number; mtime: number };
}

function bits(mask: bigint): number[] {
  const set: number[] = [];
  for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n) set.push(bit);
  return set;
}

function featureName(table: FeatureName[], kind: FeatureKind, bit: number): string {
  return table.find((f) => f.kind === kind && f.bit === bit)?.name ?? KNOWN_FEATURES[kind][bit] ?? `unknown ${kind} bit ${bit}`;
}

/**
 * Reads the 4-byte magic and version only: enough to tell qcow2 from qcow v1 and from other files
 * before asking for a whole cluster.
 */
export function probeMagic(bytes: Uint8Array): { qcow: boolean; version: number } {
  if (bytes.length < 8) return { qcow: false, version: 0 };
  const be = new BigEndian(bytes);
  return { qcow: be.u32(0) === QCOW_MAGIC, version: be.u32(4) };
}

/** How many bytes from the start of the file `decodeHeader` wants: the whole first cluster. */
export function headerBytesWanted(first: Uint8Array): number {
  if (first.length < 24) return 4096;
  const clusterBits = new BigEndian(first).u32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) return 4096;
  return 2 ** clusterBits;
}

/**
 * Decodes and checks the header and its extensions from the first bytes of the file (ideally one
 * cluster; shorter when the file is). `fileSize` bounds every offset the header names.
 */
export function decodeHeader(bytes: Uint8Array, file: string, fileSize: number): Header {
  const bad = (problem: string): never => {
    throw new QcowError('EBADIMAGE', file, problem);
  };
  if (bytes.length < 72) bad(`too short for a qcow2 header (${bytes.length} bytes)`);
  const be = new BigEndian(bytes);
  const magic = be.u32(0);
  if (magic !== QCOW_MAGIC) bad(`not a qcow2 image (magic ${hex(magic)}, expected ${hex(QCOW_MAGIC)})`);
  const version = be.u32(4);
  if (version === 1) {
    throw new QcowError('EUNSUPPORTED', file, 'qcow version 1 images are not supported (convert with qemu-img convert -O qcow2)');
  }
  if (version !== 2 && version !== 3) bad(`unsupported qcow2 version ${version} (expected 2 or 3)`);

  const num = (at: number, field: string) => safeNumber(file, field, be.u64(at));
  const clusterBits = be.u32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    bad(`cluster_bits ${clusterBits} is out of range (${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS})`);
  }
  const clusterSize = 2 ** clusterBits;

  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4;
  let headerLength = 72;
  let compressionCode = 0;
  if (version === 3) {
    if (bytes.length < 104) bad(`too short for a version 3 header (${bytes.length} bytes)`);
    incompatibleFeatures = be.u64(72);
    compatibleFeatures = be.u64(80);
    autoclearFeatures = be.u64(88);
    refcountOrder = be.u32(96);
    headerLength = be.u32(100);
    if (headerLength < 104) bad(`header_length ${headerLength} is too small (at least 104 for version 3)`);
    if (headerLength > clusterSize) bad(`header_length ${headerLength} exceeds the cluster size ${clusterSize}`);
    if (headerLength > bytes.length) bad(`header_length ${headerLength} extends past the end of the file`);
    if (refcountOrder > 6) bad(`refcount_order ${refcountOrder} is out of range (0..6)`);
    if (headerLength > 104) compressionCode = be.u8(104);
  }

  const header: Header = {
    version: version as 2 | 3,
    backingFileOffset: num(8, 'backing_file_offset'),
    backingFileSize: be.u32(16),
    clusterBits,
    clusterSize,
    size: num(24, 'size'),
    cryptMethodCode: be.u32(32),
    cryptMethod: 'none',
    l1Size: be.u32(36),
    l1TableOffset: num(40, 'l1_table_offset'),
    refcountTableOffset: num(48, 'refcount_table_offset'),
    refcountTableClusters: be.u32(56),
    nbSnapshots: be.u32(60),
    snapshotsOffset: num(64, 'snapshots_offset'),
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType: 'zlib',
    features: { incompatible: [], compatible: [], autoclear: [] },
    dirty: (incompatibleFeatures & 1n) !== 0n,
    corrupt: (incompatibleFeatures & 2n) !== 0n,
    hasDataFile: (incompatibleFeatures & 4n) !== 0n,
    extendedL2: (incompatibleFeatures & 16n) !== 0n,
    lazyRefcounts: (compatibleFeatures & 1n) !== 0n,
    dataFileRaw: (autoclearFeatures & 2n) !== 0n,
    featureNameTable: [],
    extensions: [],
  };

  decodeExtensions(be, header, file, Math.min(bytes.length, clusterSize));

  for (const kind of ['incompatible', 'compatible', 'autoclear'] as const) {
    const mask = kind === 'incompatible' ? incompatibleFeatures : kind === 'compatible' ? compatibleFeatures : autoclearFeatures;
    header.features[kind] = bits(mask).map((bit) => featureName(header.featureNameTable, kind, bit));
  }
  const unknown = bits(incompatibleFeatures).filter((bit) => bit >= KNOWN_FEATURES.incompatible.length);
  if (unknown.length > 0) {
    const names = unknown.map((bit) => {
      const name = header.featureNameTable.find((f) => f.kind === 'incompatible' && f.bit === bit)?.name;
      return name ? `"${name}" (bit ${bit})` : `bit ${bit}`;
    });
    bad(`unknown incompatible feature ${names.join(', ')}: this image needs a newer reader`);
  }

  switch (header.cryptMethodCode) {
    case 0:
      break;
    case 1:
      header.cryptMethod = 'aes';
      break;
    case 2:
      header.cryptMethod = 'luks';
      break;
    default:
      bad(`unknown crypt_method ${header.cryptMethodCode}`);
  }

  const compressionBit = (incompatibleFeatures & 8n) !== 0n;
  if (compressionCode === 0 && compressionBit) bad('compression type bit is set but compression_type is zlib (0)');
  if (compressionCode !== 0 && !compressionBit) bad(`compression_type ${compressionCode} is set without the compression type feature bit`);
  if (compressionCode === 1) header.compressionType = 'zstd';
  else if (compressionCode !== 0) bad(`unknown compression_type ${compressionCode}`);

  if (header.extendedL2 && clusterBits < 14) bad(`extended L2 entries need clusters of at least 16 KiB (cluster_bits ${clusterBits})`);
  if (header.hasDataFile && header.backingFileOffset !== 0) bad('an image with an external data file cannot have a backing file');

  if (header.backingFileOffset !== 0) {
    const { backingFileOffset: at, backingFileSize: length } = header;
    if (length > 1023) bad(`backing file name is too long (backing_file_size ${length}, at most 1023)`);
    if (at > clusterSize || at + length > clusterSize) bad(`backing file name at ${hex(at)} (+${length}) lies outside the first cluster`);
    if (at + length > bytes.length) bad(`backing file name at ${hex(at)} extends past the end of the file`);
    header.backingFile = be.text(at, length);
  }

  // The size limit first: l1_size 2^30 is refused as too large by name, whatever the file size.
  if (header.l1Size * 8 > MAX_L1_BYTES) bad(`l1_size ${header.l1Size} is too large (the L1 table may be at most ${MAX_L1_BYTES} bytes)`);
  checkTable(file, fileSize, clusterSize, 'l1_table_offset', header.l1TableOffset, header.l1Size * 8, 'L1 table');
  const l2Span = l2EntriesPerTable(header) * clusterSize;
  const needed = Math.ceil(header.size / l2Span);
  if (header.l1Size < needed) bad(`l1_size ${header.l1Size} is too small for a disk of ${header.size} bytes (needs ${needed})`);
  // The snapshot table's location is checked where it is read (snapshot.ts): a bad one costs only
  // the snapshots.
  return header;
}

/** L2 entries in one L2 table: a cluster's worth of 8-byte (or 16-byte extended) entries. */
export function l2EntriesPerTable(header: Pick<Header, 'clusterSize' | 'extendedL2'>): number {
  return header.clusterSize / (header.extendedL2 ? 16 : 8);
}

/** Checks that a cluster-aligned table of `length` bytes at `offset` lies inside the file. */
export function checkTable(file: string, fileSize: number, clusterSize: number, field: string, offset: number, length: number, what: string): void {
  if (length === 0) return;
  if (offset % clusterSize !== 0) {
    throw new QcowError('EBADIMAGE', file, `${what} at ${hex(offset)} (${field}) is not aligned to the cluster size ${clusterSize}`);
  }
  if (offset === 0) throw new QcowError('EBADIMAGE', file, `${what} at offset 0 (${field}) overlaps the header`);
  if (offset + length > fileSize) {
    throw new QcowError('EBADIMAGE', file, `${what} at ${hex(offset)} (${length} bytes) extends past the end of the file (size ${fileSize})`);
  }
}

function decodeExtensions(be: BigEndian, header: Header, file: string, end: number): void {
  const bad = (problem: string): never => {
    throw new QcowError('EBADIMAGE', file, problem);
  };
  let at = header.headerLength;
  // QEMU reads extensions up to the end of the first cluster, or up to the backing file name.
  const limit = header.backingFileOffset > 0 ? Math.min(end, header.backingFileOffset) : end;
  while (at + 8 <= limit) {
    const type = be.u32(at);
    const length = be.u32(at + 4);
    if (type === EXT_END) return;
    const data = at + 8;
    if (length > limit - data) bad(`header extension ${hex(type)} at ${hex(at)} (length ${length}) runs past the end of the header area`);
    header.extensions.push({ type, offset: data, length });
    switch (type) {
      case EXT_BACKING_FORMAT:
        if (length > 15) bad(`backing file format name is too long (${length} bytes)`);
        header.backingFormat = be.text(data, length);
        break;
      case EXT_FEATURE_TABLE: {
        // QEMU does not check the length either: a trailing partial entry is ignored, not refused.
        for (let e = data; e + 48 <= data + length; e += 48) {
          const kindCode = be.u8(e);
          const kind = (['incompatible', 'compatible', 'autoclear'] as const)[kindCode];
          if (!kind) continue; // unknown kinds are for newer readers; they say nothing to us
          const raw = be.bytes.subarray(e + 2, e + 48);
          const nul = raw.indexOf(0);
          header.featureNameTable.push({ kind, bit: be.u8(e + 1), name: be.text(e + 2, nul < 0 ? 46 : nul) });
        }
        break;
      }
      case EXT_BITMAPS: {
        if (length !== 24) bad(`bitmaps extension has length ${length} (QEMU requires exactly 24)`);
        header.bitmaps = {
          count: be.u32(data),
          directorySize: safeNumber(file, 'bitmap_directory_size', be.u64(data + 8)),
          directoryOffset: safeNumber(file, 'bitmap_directory_offset', be.u64(data + 16)),
        };
        break;
      }
      case EXT_CRYPTO:
        if (length !== 16) bad(`encryption header pointer has length ${length} (QEMU requires exactly 16)`);
        header.encryption = {
          offset: safeNumber(file, 'encryption header offset', be.u64(data)),
          length: safeNumber(file, 'encryption header length', be.u64(data + 8)),
        };
        break;
      case EXT_DATA_FILE:
        if (length > 1023) bad(`external data file name is too long (${length} bytes)`);
        header.dataFile = be.text(data, length);
        break;
      default:
        break; // unknown extensions are skipped, as the specification says
    }
    at = data + Math.ceil(length / 8) * 8;
  }
}
