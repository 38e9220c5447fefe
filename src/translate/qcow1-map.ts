import { QcowError, hex } from '../errors.js';
import type { Qcow1Header } from '../format/qcow1-header.js';

/** What the map needs of a file: positional reads that fail with a message naming `what`. */
export interface MapFile {
  readonly path: string;
  readonly size: number;
  readExact(position: number, length: number, what: string): Buffer;
}

/**
 * One run of a qcow v1 guest range. `data`: guest bytes at `host` in the image file (contiguous for
 * `length` bytes); `unallocated`: the backing file's bytes, or zeros; `compressed`: part of one
 * cluster whose raw-deflate stream is `compressedBytes` bytes at `compressedOffset` (size in bytes, not
 * sectors as in qcow2), `inCluster` bytes into the inflated cluster.
 */
export interface Qcow1Run {
  kind: 'data' | 'unallocated' | 'compressed';
  length: number;
  host: number;
  compressedOffset: number;
  compressedBytes: number;
  inCluster: number;
  /** Guest offset of the run's first cluster (for cache keys and messages). */
  clusterStart: number;
}

export function emptyQcow1Run(): Qcow1Run {
  return { kind: 'unallocated', length: 0, host: 0, compressedOffset: 0, compressedBytes: 0, inCluster: 0, clusterStart: 0 };
}

/** L2 tables kept per image: 64 tables of at most 64 KiB each bound this cache to 4 MiB. */
const L2_CACHE_TABLES = 64;
const TOO_LARGE = -1;

/**
 * The L1/L2 mapping of a qcow version 1 image (QEMU `get_cluster_offset`): L1 entries are plain u64
 * offsets of L2 tables of 2^l2_bits entries; an L2 entry is 0 (unallocated), a 512-aligned data
 * offset, or (bit 63) a compressed cluster. Mapping only: never reads guest data.
 */
export class Qcow1Map {
  private readonly l2Cache = new Map<number, DataView>();
  private readonly span: number;

  private constructor(
    readonly header: Qcow1Header,
    readonly file: MapFile,
    /** L2 table offsets (0: none; TOO_LARGE: past 2^53, refused when used). */
    private readonly l1: Float64Array,
  ) {
    this.span = header.clusterSize * header.l2Size;
  }

  /** Reads the L1 table (its place in the file was checked by decodeQcow1Header). */
  static load(header: Qcow1Header, file: MapFile): Qcow1Map {
    const bytes = file.readExact(header.l1TableOffset, header.l1Size * 8, 'L1 table');
    const l1 = new Float64Array(header.l1Size);
    for (let i = 0; i < header.l1Size; i++) {
      const hi = bytes.readUInt32BE(i * 8);
      l1[i] = hi >= 0x200000 ? TOO_LARGE : hi * 0x1_0000_0000 + bytes.readUInt32BE(i * 8 + 4);
    }
    return new Qcow1Map(header, file, l1);
  }

  /**
   * Fills `run` with the longest run at guest `position` that is at most `length` bytes: host-contiguous
   * data clusters merge, as do unallocated ones; a compressed run ends at its cluster's end.
   */
  mapRun(position: number, length: number, run: Qcow1Run): void {
    const { clusterSize } = this.header;
    const end = position + length;
    const l1Index = Math.floor(position / this.span);
    const tableBase = l1Index * this.span;
    const spanEnd = Math.min(end, tableBase + this.span);
    const l2Offset = l1Index < this.l1.length ? this.l1[l1Index]! : 0;
    run.inCluster = position % clusterSize;
    run.clusterStart = position - run.inCluster;
    run.host = 0;
    run.compressedOffset = 0;
    run.compressedBytes = 0;
    if (l2Offset === 0) {
      run.kind = 'unallocated';
      run.length = spanEnd - position;
      return;
    }
    const table = this.l2Table(l2Offset, l1Index);
    let index = (run.clusterStart - tableBase) / clusterSize;
    const first = this.entry(table, index, run.clusterStart);
    if (first.compressed) {
      run.kind = 'compressed';
      run.compressedOffset = first.offset;
      run.compressedBytes = first.bytes;
      run.length = Math.min(spanEnd, run.clusterStart + clusterSize) - position;
      if (first.offset + first.bytes > this.file.size) {
        throw new QcowError('EIO', this.file.path, `compressed cluster at ${hex(first.offset)}+${first.bytes} for guest offset ${hex(run.clusterStart)} lies past the end of the file (size ${this.file.size})`);
      }
      return;
    }
    run.kind = first.offset === 0 ? 'unallocated' : 'data';
    if (run.kind === 'data') {
      this.checkData(first.offset, run.clusterStart);
      run.host = first.offset + run.inCluster;
    }
    let next = run.clusterStart + clusterSize;
    let expected = first.offset + clusterSize;
    while (next < spanEnd) {
      index++;
      const e = this.entry(table, index, next);
      if (e.compressed) break;
      if (run.kind === 'unallocated' ? e.offset !== 0 : e.offset !== expected) break;
      if (run.kind === 'data') this.checkData(e.offset, next);
      next += clusterSize;
      expected += clusterSize;
    }
    run.length = Math.min(next, spanEnd) - position;
  }

  private entry(table: DataView, index: number, guest: number): { compressed: boolean; offset: number; bytes: number } {
    const hi = table.getUint32(index * 8);
    const lo = table.getUint32(index * 8 + 4);
    if (hi & 0x80000000) {
      // offset = e & ((1 << (63 - cluster_bits)) - 1); size in bytes = (e >> (63 - cluster_bits)) & (cluster_size - 1)
      const e = (BigInt(hi) << 32n) | BigInt(lo);
      const shift = BigInt(63 - this.header.clusterBits);
      const offset = Number(e & ((1n << shift) - 1n));
      const bytes = Number((e >> shift) & BigInt(this.header.clusterSize - 1));
      if (!Number.isSafeInteger(offset)) throw new QcowError('EIO', this.file.path, `compressed cluster offset for guest offset ${hex(guest)} is too large`);
      return { compressed: true, offset, bytes };
    }
    if (hi >= 0x200000) throw new QcowError('EIO', this.file.path, `cluster offset ${hex((BigInt(hi) << 32n) | BigInt(lo))} for guest offset ${hex(guest)} is too large`);
    return { compressed: false, offset: hi * 0x1_0000_0000 + lo, bytes: 0 };
  }

  private checkData(host: number, guest: number): void {
    // QEMU qcow_co_preadv: a data offset that is not sector aligned is EIO.
    if (host % 512 !== 0) throw new QcowError('EIO', this.file.path, `cluster offset ${hex(host)} for guest offset ${hex(guest)} is not sector aligned`);
    if (host >= this.file.size) {
      throw new QcowError('EIO', this.file.path, `data cluster at ${hex(host)} for guest offset ${hex(guest)} lies past the end of the file (size ${this.file.size})`);
    }
  }

  private l2Table(offset: number, l1Index: number): DataView {
    const cached = this.l2Cache.get(offset);
    if (cached) {
      this.l2Cache.delete(offset);
      this.l2Cache.set(offset, cached);
      return cached;
    }
    const bytes = this.header.l2Size * 8;
    if (offset === TOO_LARGE || offset + bytes > this.file.size) {
      throw new QcowError('EIO', this.file.path, `L2 table ${l1Index} at ${offset === TOO_LARGE ? 'an offset over 2^53' : hex(offset)} extends past end of file (size ${this.file.size})`);
    }
    const b = this.file.readExact(offset, bytes, `L2 table ${l1Index}`);
    const table = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (this.l2Cache.size >= L2_CACHE_TABLES) this.l2Cache.delete(this.l2Cache.keys().next().value!);
    this.l2Cache.set(offset, table);
    return table;
  }
}
