/**
 * Decoding of L1 and L2 entries. Entries are read as two 32-bit halves so that the hot path never
 * builds a BigInt; every offset stays below 2^56 and so fits a double exactly.
 */

export const L1_OFFSET_HI_MASK = 0x00ffffff; // bits 32..55
export const OFFSET_LO_MASK = 0xfffffe00; // bits 9..31

/** Host offset of the L2 table named by an L1 entry (0: not allocated). */
export function l1EntryOffset(hi: number, lo: number): number {
  return (hi & L1_OFFSET_HI_MASK) * 0x1_0000_0000 + ((lo & OFFSET_LO_MASK) >>> 0);
}

export const enum ClusterType {
  Unallocated = 0,
  Data = 1,
  Zero = 2,
  Compressed = 3,
  /** A standard entry whose subcluster bitmap decides per subcluster (extended L2 only). */
  Subclusters = 4,
  /** An entry QEMU refuses to read (EIO): e.g. both "allocated" and "zero" set for one subcluster. */
  Invalid = 5,
}

export const COMPRESSED_HI = 0x40000000;
const COPIED_HI = 0x80000000;
/** Bit 0 of a standard entry: the cluster reads as zeros (version 3). */
export const ZERO_FLAG_LO = 1;

/**
 * Classifies a standard (64-bit) L2 entry the way QEMU does. With an external data file, offset 0
 * with the copied bit set is real data at offset 0 (QEMU tells it from "unallocated" by that bit).
 */
export function classifyStandard(hi: number, lo: number, hasDataFile: boolean): ClusterType {
  if (hi & COMPRESSED_HI) return ClusterType.Compressed;
  if (lo & ZERO_FLAG_LO) return ClusterType.Zero;
  if ((hi & L1_OFFSET_HI_MASK) === 0 && ((lo & OFFSET_LO_MASK) >>> 0) === 0) {
    return hasDataFile && hi & COPIED_HI ? ClusterType.Data : ClusterType.Unallocated;
  }
  return ClusterType.Data;
}

/** With extended L2 entries the zero flag is unused: the bitmap says it, per subcluster. */
export function classifyExtended(hi: number, lo: number, hasDataFile: boolean, allocMask: number, zeroMask: number): ClusterType {
  if (hi & COMPRESSED_HI) return ClusterType.Compressed;
  if ((allocMask & zeroMask) !== 0) return ClusterType.Invalid;
  const hasOffset = (hi & L1_OFFSET_HI_MASK) !== 0 || ((lo & OFFSET_LO_MASK) >>> 0) !== 0 || (hasDataFile && (hi & COPIED_HI) !== 0);
  if (!hasOffset && allocMask !== 0) return ClusterType.Invalid;
  if (allocMask === 0xffffffff) return ClusterType.Data;
  if (zeroMask === 0xffffffff) return ClusterType.Zero;
  if (allocMask === 0 && zeroMask === 0) return ClusterType.Unallocated;
  return ClusterType.Subclusters;
}

/** Host offset of an uncompressed cluster (bits 9..55). */
export function standardOffset(hi: number, lo: number): number {
  return (hi & L1_OFFSET_HI_MASK) * 0x1_0000_0000 + ((lo & OFFSET_LO_MASK) >>> 0);
}

export interface CompressedDescriptor {
  /** Host byte offset where the compressed data starts. */
  offset: number;
  /** Bytes from `offset` to the end of the last 512-byte sector the descriptor names. */
  length: number;
}

/**
 * A compressed cluster descriptor: with x = 62 - (cluster_bits - 8), bits 0..x-1 are the host offset and
 * bits x..61 the number of additional 512-byte sectors.
 */
export function compressedDescriptor(hi: number, lo: number, clusterBits: number): CompressedDescriptor {
  const x = 62 - (clusterBits - 8);
  const hiOffsetBits = x - 32;
  const offset = (hi & ((1 << hiOffsetBits) - 1)) * 0x1_0000_0000 + (lo >>> 0);
  const sectors = ((hi >>> hiOffsetBits) & ((1 << (clusterBits - 8)) - 1)) + 1;
  return { offset, length: sectors * 512 - (offset % 512) };
}
