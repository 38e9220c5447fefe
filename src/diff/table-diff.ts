import { RangeList, type ByteRange } from './ranges.js';

/**
 * What the metadata diff needs of one qcow2 file: its geometry and its L2 tables (read through the
 * shared cache). Both views of a diff are views of the same file, so they share it.
 */
export interface L2TableSource {
  clusterSize: number;
  /** Guest bytes one L2 table maps. */
  l2Span: number;
  /** 8, or 16 for extended L2 entries (32 subclusters per cluster). */
  entryBytes: 8 | 16;
  /** Image version: the zero flag means something only from version 3. */
  version: number;
  hasDataFile: boolean;
  /**
   * Whether an unallocated cluster reads a backing file. Then "zero" and "unallocated" may differ; without
   * one both read zeros.
   */
  hasBacking: boolean;
  /** The L2 table at a host offset (throws a QcowError where it cannot be read). */
  l2Table(offset: number, l1Index: number): DataView;
}

/** One side of a diff: a view's L1 table (L2 table offsets, 0 = none) and its disk size. */
export interface DiffSide {
  l1: ArrayLike<number>;
  size: number;
}

export interface TableDiff {
  /** Guest ranges where the two views may differ, sorted and merged; a size change is a difference. */
  changed: ByteRange[];
  changedBytes: number;
  /** L2 tables read (each at most once per side). */
  l2TablesRead: number;
  /** L1 entries (L2 spans) compared entry by entry. */
  spansCompared: number;
  /** Spans whose L2 table could not be read: listed as changed, said here. */
  problems: string[];
}

const COMPRESSED_HI = 0x40000000;
const COPIED_HI = 0x80000000;
const OFFSET_HI = 0x00ffffff;
const OFFSET_LO = 0xfffffe00;

/** What one granule (cluster, or subcluster with extended L2) reads as, reduced to what decides equality. */
const enum Kind {
  Unallocated = 0,
  Zero = 1,
  Data = 2,
  Compressed = 3,
  /** Something QEMU would refuse to read: never equal to anything but the identical entry. */
  Invalid = 4,
}

/**
 * The metadata diff of two views of one qcow2 file (forensic-formats.md §5.1): an L1 entry naming the same
 * L2 table (or none in both) is skipped whole; otherwise the two L2 tables are compared entry by entry.
 * Same host cluster (or compressed descriptor), both zero, or both unallocated (so both fall through to
 * the same backing data) means equal; anything else is listed. No data cluster is read, so a rewrite
 * with identical bytes is listed too, but a difference is never missed: a write to a cluster shared with
 * a snapshot always moves it to a new host cluster (copy on write).
 */
export function diffTables(source: L2TableSource, a: DiffSide, b: DiffSide): TableDiff {
  const { clusterSize, l2Span, entryBytes } = source;
  const common = Math.min(a.size, b.size);
  const changed = new RangeList();
  const problems: string[] = [];
  let l2TablesRead = 0;
  let spansCompared = 0;
  const spans = Math.ceil(common / l2Span);
  const granules = entryBytes === 16 ? 32 : 1;
  const granule = clusterSize / granules;
  const zeroEqualsUnallocated = !source.hasBacking;
  const kindsA = new Uint8Array(granules);
  const kindsB = new Uint8Array(granules);
  const hostA = new Float64Array(granules);
  const hostB = new Float64Array(granules);

  for (let i = 0; i < spans; i++) {
    const offA = i < a.l1.length ? a.l1[i] : 0;
    const offB = i < b.l1.length ? b.l1[i] : 0;
    if (offA === offB) continue;
    spansCompared++;
    const spanStart = i * l2Span;
    const spanEnd = Math.min(common, spanStart + l2Span);
    let tableA: DataView | undefined;
    let tableB: DataView | undefined;
    try {
      if (offA !== 0) {
        tableA = source.l2Table(offA, i);
        l2TablesRead++;
      }
      if (offB !== 0) {
        tableB = source.l2Table(offB, i);
        l2TablesRead++;
      }
    } catch (err) {
      problems.push(`L1 index ${i}: ${(err as Error).message}; its whole span is listed as changed`);
      changed.add(spanStart, spanEnd - spanStart);
      continue;
    }
    const clusters = Math.ceil((spanEnd - spanStart) / clusterSize);
    for (let c = 0; c < clusters; c++) {
      const at = c * entryBytes;
      const hiA = tableA ? tableA.getUint32(at) : 0;
      const loA = tableA ? tableA.getUint32(at + 4) : 0;
      const hiB = tableB ? tableB.getUint32(at) : 0;
      const loB = tableB ? tableB.getUint32(at + 4) : 0;
      const ext = entryBytes === 16;
      const zeroA = ext && tableA ? tableA.getUint32(at + 8) : 0;
      const allocA = ext && tableA ? tableA.getUint32(at + 12) : 0;
      const zeroB = ext && tableB ? tableB.getUint32(at + 8) : 0;
      const allocB = ext && tableB ? tableB.getUint32(at + 12) : 0;
      // The identical entry reads the identical bytes (the COPIED bit only says the refcount is 1, except
      // with an external data file, where it tells data at offset 0 from unallocated).
      const mask = source.hasDataFile ? 0xffffffff : ~COPIED_HI;
      if (((hiA ^ hiB) & mask) === 0 && loA === loB && zeroA === zeroB && allocA === allocB) continue;
      const clusterStart = spanStart + c * clusterSize;
      classify(source, hiA, loA, allocA, zeroA, kindsA, hostA);
      classify(source, hiB, loB, allocB, zeroB, kindsB, hostB);
      for (let g = 0; g < granules; g++) {
        const ka = kindsA[g];
        const kb = kindsB[g];
        let equal: boolean;
        if (ka === Kind.Invalid || kb === Kind.Invalid) equal = false;
        else if (ka === kb) equal = ka === Kind.Unallocated || ka === Kind.Zero || hostA[g] === hostB[g];
        else equal = zeroEqualsUnallocated && ka <= Kind.Zero && kb <= Kind.Zero;
        if (!equal) {
          const start = clusterStart + g * granule;
          changed.add(start, Math.min(granule, common - start));
        }
      }
    }
  }
  if (a.size !== b.size) changed.add(common, Math.max(a.size, b.size) - common);
  return { changed: changed.items, changedBytes: changed.total, l2TablesRead, spansCompared, problems };
}

/**
 * Fills `kinds`/`hosts` for each granule of one L2 entry. Compressed clusters are keyed by their whole
 * descriptor (offset and length), data by host offset of the granule.
 */
function classify(source: L2TableSource, hi: number, lo: number, allocMask: number, zeroMask: number, kinds: Uint8Array, hosts: Float64Array): void {
  const n = kinds.length;
  const offset = (hi & OFFSET_HI) * 0x1_0000_0000 + ((lo & OFFSET_LO) >>> 0);
  const hasOffset = offset !== 0 || (source.hasDataFile && (hi & COPIED_HI) !== 0);
  if (hi & COMPRESSED_HI) {
    kinds.fill(Kind.Compressed);
    hosts.fill((hi & 0x3fffffff) * 0x1_0000_0000 + (lo >>> 0));
    return;
  }
  if (n === 1) {
    hosts[0] = offset;
    if (lo & 1) kinds[0] = source.version >= 3 ? Kind.Zero : Kind.Invalid;
    else kinds[0] = hasOffset ? Kind.Data : Kind.Unallocated;
    return;
  }
  const sub = source.clusterSize / n;
  for (let g = 0; g < n; g++) {
    const bit = 1 << g;
    hosts[g] = offset + g * sub;
    if (allocMask & zeroMask & bit) kinds[g] = Kind.Invalid;
    else if (allocMask & bit) kinds[g] = hasOffset ? Kind.Data : Kind.Invalid;
    else if (zeroMask & bit) kinds[g] = Kind.Zero;
    else kinds[g] = Kind.Unallocated;
  }
}
