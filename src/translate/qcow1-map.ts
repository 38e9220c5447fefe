import { QcowError, hex } from '../errors.js';
import type { Qcow1Header } from '../format/qcow1-header.js';
import { type ImageFile, fileOffsetKey } from '../io/image-file.js';
import { type L2Cache, type Run, RunKind } from './qcow2-map.js';

/** A stored L1 entry past 2^53: refused when a read needs it. */
const TOO_LARGE = -1;

/** Reads a qcow v1 L1 table (plain u64 offsets, no flags); its place was checked by decodeQcow1Header. */
export function loadQcow1L1(header: Qcow1Header, file: ImageFile): Float64Array {
  const bytes = file.readExact(header.l1TableOffset, header.l1Size * 8, 'L1 table');
  const l1 = new Float64Array(header.l1Size);
  for (let i = 0; i < header.l1Size; i++) {
    const hi = bytes.readUInt32BE(i * 8);
    l1[i] = hi >= 0x200000 ? TOO_LARGE : hi * 0x1_0000_0000 + bytes.readUInt32BE(i * 8 + 4);
  }
  return l1;
}

/**
 * The L1/L2 mapping of a qcow version 1 image (QEMU `get_cluster_offset`): an L2 table has 2^l2_bits
 * entries (not necessarily one cluster); an entry is 0 (unallocated), a 512-aligned data offset, or
 * (bit 63) a compressed cluster whose size is in bytes. Fills the same Run as Qcow2Map, so a Qcow2Disk
 * serves v1 images too. Mapping only: never reads guest data.
 */
export class Qcow1Map {
  readonly clusterSize: number;
  /** Guest bytes one L2 table maps. */
  readonly l2Span: number;
  private readonly l2Bytes: number;

  constructor(
    readonly header: Qcow1Header,
    readonly file: ImageFile,
    private readonly cache: L2Cache,
  ) {
    this.clusterSize = header.clusterSize;
    this.l2Span = header.clusterSize * header.l2Size;
    this.l2Bytes = header.l2Size * 8;
  }

  /**
   * Fills `run` with the longest run at `position` (within `length` bytes) inside one L2 table:
   * host-contiguous data clusters merge, as do unallocated ones; a compressed run ends with its cluster.
   */
  mapRun(l1: Float64Array, origin: number, position: number, length: number, run: Run): void {
    const { clusterSize, l2Span } = this;
    const guest = origin + position;
    const l1Index = Math.floor(guest / l2Span);
    const tableBase = l1Index * l2Span;
    const spanEnd = Math.min(guest + length, tableBase + l2Span);
    const l2Offset = l1Index < l1.length ? l1[l1Index]! : 0;
    const inCluster = guest % clusterSize;
    const clusterStart = guest - inCluster;
    run.inCluster = inCluster;
    run.guestCluster = clusterStart;
    run.host = 0;
    run.hostLength = 0;
    if (l2Offset === 0) {
      run.kind = RunKind.Unallocated;
      run.length = spanEnd - guest;
      return;
    }
    const table = this.l2Table(l2Offset, l1Index);
    let index = (clusterStart - tableBase) / clusterSize;
    const hi = table.getUint32(index * 8);
    const lo = table.getUint32(index * 8 + 4);
    if (hi & 0x80000000) {
      // offset = e & ((1 << (63 - cluster_bits)) - 1); bytes = (e >> (63 - cluster_bits)) & (cluster_size - 1)
      const e = (BigInt(hi) << 32n) | BigInt(lo);
      const shift = BigInt(63 - this.header.clusterBits);
      run.kind = RunKind.Compressed;
      run.host = Number(e & ((1n << shift) - 1n));
      run.hostLength = Number((e >> shift) & BigInt(clusterSize - 1));
      run.length = Math.min(spanEnd, clusterStart + clusterSize) - guest;
      if (!Number.isSafeInteger(run.host) || run.host + run.hostLength > this.file.size) {
        throw new QcowError('EIO', this.file.path, `compressed cluster at ${hex(run.host)}+${run.hostLength} for guest offset ${hex(clusterStart)} lies past the end of the file (size ${this.file.size})`);
      }
      return;
    }
    const first = this.dataOffset(hi, lo, clusterStart);
    run.kind = first === 0 ? RunKind.Unallocated : RunKind.Data;
    if (first !== 0) run.host = first + inCluster;
    let next = clusterStart + clusterSize;
    let expected = first + clusterSize;
    while (next < spanEnd) {
      index++;
      const h = table.getUint32(index * 8);
      if (h & 0x80000000) break;
      const offset = this.dataOffset(h, table.getUint32(index * 8 + 4), next);
      if (first === 0 ? offset !== 0 : offset !== expected) break;
      next += clusterSize;
      expected += clusterSize;
    }
    run.length = Math.min(next, spanEnd) - guest;
  }

  /** A data entry's host offset, checked as QEMU checks it before reading (0: unallocated). */
  private dataOffset(hi: number, lo: number, guest: number): number {
    if (hi >= 0x200000) throw new QcowError('EIO', this.file.path, `cluster offset ${hex((BigInt(hi) << 32n) | BigInt(lo))} for guest offset ${hex(guest)} is too large`);
    const host = hi * 0x1_0000_0000 + lo;
    if (host === 0) return 0;
    // QEMU qcow_co_preadv: a data offset that is not sector aligned is EIO.
    if (host % 512 !== 0) throw new QcowError('EIO', this.file.path, `cluster offset ${hex(host)} for guest offset ${hex(guest)} is not sector aligned`);
    if (host >= this.file.size) throw new QcowError('EIO', this.file.path, `data cluster at ${hex(host)} for guest offset ${hex(guest)} lies past the end of the file (size ${this.file.size})`);
    return host;
  }

  private l2Table(offset: number, l1Index: number): DataView {
    const key = fileOffsetKey(this.file.id, offset);
    const cached = this.cache.l2.get(key);
    if (cached) return cached;
    if (offset === TOO_LARGE || offset + this.l2Bytes > this.file.size) {
      throw new QcowError('EIO', this.file.path, `L2 table ${l1Index} at ${offset === TOO_LARGE ? 'an offset over 2^53' : hex(offset)} extends past end of file (size ${this.file.size})`);
    }
    const bytes = this.file.readExact(offset, this.l2Bytes, `L2 table (L1 index ${l1Index})`);
    const table = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.cache.l2.set(key, table);
    this.cache.l2Loads++;
    return table;
  }
}
