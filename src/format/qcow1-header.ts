import { QcowError, hex } from '../errors.js';
import { BigEndian } from './bytes.js';
import type { Header } from './header.js';

/**
 * The qcow version 1 header (48 bytes, big-endian), checked as QEMU's `qcow_open` checks it. Version 1
 * has no refcounts, snapshots, zero flag, features or header extensions; the L1 size is computed, not
 * stored.
 */

export const QCOW1_HEADER_BYTES = 48;
export const QCOW1_MAGIC = 0x514649fb; // "QFI\xfb"
/** QEMU: "Cluster size must be between 512 and 64k". */
export const QCOW1_MIN_CLUSTER_BITS = 9;
export const QCOW1_MAX_CLUSTER_BITS = 16;
/** QEMU: "L2 table size must be between 512 and 64k" (2^l2_bits entries of 8 bytes). */
export const QCOW1_MIN_L2_BITS = 6;
export const QCOW1_MAX_L2_BITS = 13;
/** QEMU: "Backing file name too long". */
export const QCOW1_MAX_BACKING_NAME = 1023;

export interface Qcow1Header {
  version: 1;
  backingFileOffset: number;
  backingFileSize: number;
  mtime: number;
  /** The size the header states. */
  headerSize: number;
  /** What QEMU shows: the header size rounded down to 512 (QEMU counts whole sectors). */
  size: number;
  clusterBits: number;
  clusterSize: number;
  l2Bits: number;
  /** Entries per L2 table; a table is 8 x this many bytes, not necessarily one cluster. */
  l2Size: number;
  cryptMethod: 'none' | 'aes';
  cryptMethodCode: number;
  l1TableOffset: number;
  /** ceil(size / (cluster_size x l2_size)): computed from the header size, as QEMU does. */
  l1Size: number;
}

export function isQcow1(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && new BigEndian(bytes).u32(0) === QCOW1_MAGIC && new BigEndian(bytes).u32(4) === 1;
}

/** Decodes and bounds the header; `fileSize` bounds the L1 table and the backing file name. */
export function decodeQcow1Header(bytes: Uint8Array, file: string, fileSize: number): Qcow1Header {
  const bad = (problem: string) => new QcowError('EBADIMAGE', file, problem);
  if (bytes.length < QCOW1_HEADER_BYTES) throw bad(`file of ${bytes.length} bytes is too short for a qcow header (${QCOW1_HEADER_BYTES})`);
  const be = new BigEndian(bytes);
  if (be.u32(0) !== QCOW1_MAGIC) throw bad('not a qcow image (no QFI\\xfb magic)');
  if (be.u32(4) !== 1) throw bad(`qcow version ${be.u32(4)} is not version 1`);
  const backingFileOffset = be.u64(8);
  const backingFileSize = be.u32(16);
  const mtime = be.u32(20);
  const rawSize = be.u64(24);
  const clusterBits = be.u8(32);
  const l2Bits = be.u8(33);
  const cryptMethodCode = be.u32(36);
  const l1TableOffset = be.u64(40);

  if (rawSize <= 1n) throw bad(`image size ${rawSize} is too small (QEMU needs at least 2 bytes)`);
  if (clusterBits < QCOW1_MIN_CLUSTER_BITS || clusterBits > QCOW1_MAX_CLUSTER_BITS) {
    throw bad(`cluster_bits ${clusterBits} is out of range (${QCOW1_MIN_CLUSTER_BITS}-${QCOW1_MAX_CLUSTER_BITS}: 512 B to 64 KiB clusters)`);
  }
  if (l2Bits < QCOW1_MIN_L2_BITS || l2Bits > QCOW1_MAX_L2_BITS) {
    throw bad(`l2_bits ${l2Bits} is out of range (${QCOW1_MIN_L2_BITS}-${QCOW1_MAX_L2_BITS}: L2 tables of 512 B to 64 KiB)`);
  }
  if (cryptMethodCode > 1) throw bad(`invalid encryption method ${cryptMethodCode} in the qcow header (0 none, 1 AES)`);
  // Every guest offset is a JS number below 2^53; QEMU's own bound ("Image too large") is 2^64 - 2^shift.
  if (rawSize > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`image size ${hex(rawSize)} is too large (over 2^53)`);
  const headerSize = Number(rawSize);
  const clusterSize = 2 ** clusterBits;
  const l2Size = 2 ** l2Bits;
  const span = clusterSize * l2Size;
  const l1Size = Math.ceil(headerSize / span);
  const l1Bytes = l1Size * 8;
  if (l1TableOffset > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`L1 table offset ${hex(l1TableOffset)} is too large`);
  const l1Offset = Number(l1TableOffset);
  // The L1 table is read whole at open, so it must lie in the file before we allocate it.
  if (l1Offset + l1Bytes > fileSize) {
    throw bad(`L1 table at ${hex(l1Offset)} (${l1Size} entries for a ${headerSize}-byte disk) extends past end of file (size ${fileSize})`);
  }
  let backingOffset = 0;
  if (backingFileOffset !== 0n) {
    if (backingFileSize > QCOW1_MAX_BACKING_NAME) throw bad(`backing file name of ${backingFileSize} bytes is too long (QEMU allows ${QCOW1_MAX_BACKING_NAME})`);
    if (backingFileOffset + BigInt(backingFileSize) > BigInt(fileSize)) throw bad(`backing file name at ${hex(backingFileOffset)} extends past end of file (size ${fileSize})`);
    backingOffset = Number(backingFileOffset);
  }
  return {
    version: 1,
    backingFileOffset: backingOffset,
    backingFileSize: backingOffset === 0 ? 0 : backingFileSize,
    mtime,
    headerSize,
    size: headerSize - (headerSize % 512),
    clusterBits,
    clusterSize,
    l2Bits,
    l2Size,
    cryptMethod: cryptMethodCode === 1 ? 'aes' : 'none',
    cryptMethodCode,
    l1TableOffset: l1Offset,
    l1Size,
  };
}

/**
 * The v1 header in the shape of a qcow2 Header, so that an opened image has one header type: the
 * fields version 1 lacks are zero or empty (no refcounts, snapshots, features or extensions).
 */
export function qcow1AsHeader(h: Qcow1Header, backingFile: string | undefined): Header {
  return {
    version: 1,
    backingFileOffset: h.backingFileOffset,
    backingFileSize: h.backingFileSize,
    clusterBits: h.clusterBits,
    clusterSize: h.clusterSize,
    size: h.size,
    cryptMethod: h.cryptMethod,
    cryptMethodCode: h.cryptMethodCode,
    l1Size: h.l1Size,
    l1TableOffset: h.l1TableOffset,
    refcountTableOffset: 0,
    refcountTableClusters: 0,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 0,
    headerLength: QCOW1_HEADER_BYTES,
    compressionType: 'zlib',
    features: { incompatible: [], compatible: [], autoclear: [] },
    dirty: false,
    corrupt: false,
    extendedL2: false,
    lazyRefcounts: false,
    hasDataFile: false,
    dataFileRaw: false,
    backingFile,
    featureNameTable: [],
    extensions: [],
    qcow1: { l2Bits: h.l2Bits, headerSize: h.headerSize, mtime: h.mtime },
  };
}
