import { QcowError, hex } from '../errors.js';
import { ClusterType, classifyExtended, classifyStandard, standardOffset } from '../format/l2.js';
import type { Qcow2Metadata } from './qcow2-metadata.js';

/**
 * What a guest range is made of, piece by piece, in guest order. `dst` is the offset from the start of
 * the walked range; `guest` is the view's own position (for falling through to a backing file).
 */
export interface RunVisitor {
  data(dst: number, length: number, host: number): void;
  zero(dst: number, length: number): void;
  unallocated(dst: number, length: number, guest: number): void;
  compressed(dst: number, length: number, hi: number, lo: number, inCluster: number, guest: number): void;
}

/**
 * Translates [position, position + length) of one L1 space into runs, without reading guest data. `origin`
 * shifts the view inside the L1 space (non-zero only for a snapshot's VM state).
 */
export function walkRange(meta: Qcow2Metadata, l1: Float64Array, origin: number, position: number, length: number, visit: RunVisitor): void {
  const { clusterSize, l2Span, entryBytes, hasDataFile } = meta;
  const end = position + length;
  let pos = position;
  while (pos < end) {
    const guest = origin + pos;
    const l1Index = Math.floor(guest / l2Span);
    if (l1Index >= l1.length) {
      // Past the L1 table nothing is mapped: one unallocated run to the end, not one per L2 span (a
      // snapshot may claim a 1 PiB disk with a one-entry L1 table).
      visit.unallocated(pos - position, end - pos, pos);
      return;
    }
    const spanEnd = Math.min(end, (l1Index + 1) * l2Span - origin);
    const l2Offset = l1[l1Index]!;
    if (l2Offset === 0) {
      visit.unallocated(pos - position, spanEnd - pos, pos);
      pos = spanEnd;
      continue;
    }
    const table = meta.l2Table(l2Offset, l1Index);
    const tableBase = l1Index * l2Span;
    while (pos < spanEnd) {
      const g = origin + pos;
      const index = Math.floor((g - tableBase) / clusterSize);
      const clusterStart = tableBase + index * clusterSize;
      const inCluster = g - clusterStart;
      const chunk = Math.min(spanEnd - pos, clusterSize - inCluster);
      const at = index * entryBytes;
      const hi = table.getUint32(at);
      const lo = table.getUint32(at + 4);
      const dst = pos - position;
      if (entryBytes === 8) {
        const type = classifyStandard(hi, lo, hasDataFile);
        if (type === ClusterType.Data) visit.data(dst, chunk, hostCluster(meta, hi, lo, clusterStart) + inCluster);
        else if (type === ClusterType.Zero) {
          if (meta.header.version < 3) {
            // QEMU: "Zero cluster entry found in pre-v3 image" (EIO); bit 0 means nothing before v3.
            throw new QcowError('EIO', meta.file.path, `zero cluster entry in a version 2 image for guest offset ${hex(clusterStart)} (zero flags need version 3)`);
          }
          if (standardOffset(hi, lo) !== 0) hostCluster(meta, hi, lo, clusterStart, false); // QEMU checks a preallocated zero cluster too
          visit.zero(dst, chunk);
        } else if (type === ClusterType.Unallocated) visit.unallocated(dst, chunk, pos);
        else {
          checkCompressed(meta, clusterStart);
          visit.compressed(dst, chunk, hi, lo, inCluster, pos);
        }
      } else {
        walkSubclusters(meta, hi, lo, table.getUint32(at + 12), table.getUint32(at + 8), clusterStart, inCluster, chunk, dst, pos, visit);
      }
      pos += chunk;
    }
  }
}

function walkSubclusters(
  meta: Qcow2Metadata,
  hi: number,
  lo: number,
  allocMask: number,
  zeroMask: number,
  clusterStart: number,
  inCluster: number,
  chunk: number,
  dst: number,
  pos: number,
  visit: RunVisitor,
): void {
  const type = classifyExtended(hi, lo, meta.hasDataFile, allocMask, zeroMask);
  // QEMU checks the host offset of every entry that has one (zero and unallocated subclusters of an
  // allocated cluster too), whichever subcluster is read.
  const hasOffset = standardOffset(hi, lo) !== 0 || (meta.hasDataFile && (hi & 0x80000000) !== 0);
  switch (type) {
    case ClusterType.Compressed:
      checkCompressed(meta, clusterStart);
      visit.compressed(dst, chunk, hi, lo, inCluster, pos);
      return;
    case ClusterType.Data:
      visit.data(dst, chunk, hostCluster(meta, hi, lo, clusterStart) + inCluster);
      return;
    case ClusterType.Zero:
      if (hasOffset) hostCluster(meta, hi, lo, clusterStart, false);
      visit.zero(dst, chunk);
      return;
    case ClusterType.Unallocated:
      if (hasOffset) hostCluster(meta, hi, lo, clusterStart, false);
      visit.unallocated(dst, chunk, pos);
      return;
    case ClusterType.Invalid:
      throw new QcowError(
        'EIO',
        meta.file.path,
        `extended L2 entry for guest cluster ${hex(clusterStart)} is invalid (bitmap alloc ${hex(allocMask)}, zero ${hex(zeroMask)}, offset ${hex(standardOffset(hi, lo))})`,
      );
  }
  const sc = meta.subclusterSize;
  const host = allocMask !== 0 ? hostCluster(meta, hi, lo, clusterStart) : hasOffset ? hostCluster(meta, hi, lo, clusterStart, false) : 0;
  let off = inCluster;
  const stop = inCluster + chunk;
  while (off < stop) {
    const bit = Math.floor(off / sc);
    const scEnd = Math.min(stop, (bit + 1) * sc);
    const n = scEnd - off;
    const mask = 1 << bit;
    const d = dst + (off - inCluster);
    if (allocMask & mask) visit.data(d, n, host + off);
    else if (zeroMask & mask) visit.zero(d, n);
    else visit.unallocated(d, n, pos + (off - inCluster));
    off = scEnd;
  }
}

/** QEMU refuses compressed clusters in an image with an external data file (EIO). */
function checkCompressed(meta: Qcow2Metadata, guestCluster: number): void {
  if (meta.hasDataFile) {
    throw new QcowError('EIO', meta.file.path, `compressed cluster entry for guest offset ${hex(guestCluster)} in an image with an external data file`);
  }
}

/** The host cluster of a data entry, checked as QEMU checks it before using it. */
function hostCluster(meta: Qcow2Metadata, hi: number, lo: number, guestCluster: number, willRead = true): number {
  const host = standardOffset(hi, lo);
  if (host % meta.clusterSize !== 0) {
    throw new QcowError('EIO', meta.file.path, `cluster offset ${hex(host)} for guest offset ${hex(guestCluster)} is not cluster aligned`);
  }
  if (meta.hasDataFile) {
    if (host !== guestCluster) {
      throw new QcowError('EIO', meta.file.path, `external data file offset ${hex(host)} does not match guest offset ${hex(guestCluster)}`);
    }
  } else if (willRead && host >= meta.dataFile.size) {
    throw new QcowError('EIO', meta.file.path, `data cluster at ${hex(host)} for guest offset ${hex(guestCluster)} lies past the end of the file (size ${meta.dataFile.size})`);
  }
  return host;
}
