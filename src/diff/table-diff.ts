import { QcowError } from '../errors.js';
import { Run, RunKind } from '../translate/qcow2-map.js';
import { RangeList, type ByteRange } from './ranges.js';

/** What the metadata diff needs of one qcow2 file's map (Qcow2Map has this shape). */
export interface RunMapper {
  readonly clusterSize: number;
  /** Guest bytes one L2 table maps. */
  readonly l2Span: number;
  mapRun(l1: Float64Array, origin: number, position: number, length: number, run: Run): void;
}

/** One side of a diff: a view's L1 table (L2 table offsets, 0 = none) and its disk size. */
export interface DiffSide {
  l1: Float64Array;
  size: number;
}

export interface TableDiff {
  /** Guest ranges where the two views may differ, sorted and merged; a size change is a difference. */
  changed: ByteRange[];
  changedBytes: number;
  /** L2 tables the diff needed (at most one per side per compared span). */
  l2TablesRead: number;
  /** L1 entries (L2 spans) whose tables were compared; every other span was skipped whole. */
  spansCompared: number;
  /** Spans where an entry could not be mapped: listed as changed from there on, said here. */
  problems: string[];
}

/**
 * The metadata diff of two views of one qcow2 file (forensic-formats.md §5.1). An L1 entry naming the
 * same L2 table in both (or none in both) is skipped whole; otherwise both sides are mapped run by run
 * over that span and compared: the same host bytes (data at the same host offset, the same compressed
 * descriptor), zeros in both, or unallocated in both (so both fall through to the same backing data)
 * are equal; anything else is listed. No data cluster is read, so a rewrite with identical bytes is
 * listed too, but a difference is never missed: a write to a cluster shared with a snapshot always moves
 * it to a new host cluster (copy on write).
 *
 * `hasBacking`: whether unallocated reads a backing file; without one, zero and unallocated both read
 * zeros and are equal.
 */
export function diffTables(map: RunMapper, a: DiffSide, b: DiffSide, hasBacking: boolean): TableDiff {
  const { l2Span } = map;
  const common = Math.min(a.size, b.size);
  const changed = new RangeList();
  const problems: string[] = [];
  let l2TablesRead = 0;
  let spansCompared = 0;
  const ra = new Run();
  const rb = new Run();
  const spans = Math.ceil(common / l2Span);

  for (let i = 0; i < spans; i++) {
    const offA = i < a.l1.length ? a.l1[i]! : 0;
    const offB = i < b.l1.length ? b.l1[i]! : 0;
    if (offA === offB) continue;
    spansCompared++;
    l2TablesRead += (offA !== 0 ? 1 : 0) + (offB !== 0 ? 1 : 0);
    const spanEnd = Math.min(common, (i + 1) * l2Span);
    let pos = i * l2Span;
    let aStart = pos;
    let bStart = pos;
    let aLeft = 0;
    let bLeft = 0;
    try {
      while (pos < spanEnd) {
        if (aLeft === 0) {
          map.mapRun(a.l1, 0, pos, spanEnd - pos, ra);
          aStart = pos;
          aLeft = ra.length;
        }
        if (bLeft === 0) {
          map.mapRun(b.l1, 0, pos, spanEnd - pos, rb);
          bStart = pos;
          bLeft = rb.length;
        }
        const n = Math.min(aLeft, bLeft);
        if (!sameBytes(ra, pos - aStart, rb, pos - bStart, hasBacking)) changed.add(pos, n);
        pos += n;
        aLeft -= n;
        bLeft -= n;
      }
    } catch (err) {
      if (!(err instanceof QcowError)) throw err;
      problems.push(`${err.message}; guest bytes ${pos}–${spanEnd - 1} listed as changed`);
      changed.add(pos, spanEnd - pos);
    }
  }
  if (a.size !== b.size) changed.add(common, Math.max(a.size, b.size) - common);
  return { changed: changed.items, changedBytes: changed.total, l2TablesRead, spansCompared, problems };
}

/** Whether the runs read the same bytes at `intoA`/`intoB` bytes into them, from the metadata alone. */
function sameBytes(a: Run, intoA: number, b: Run, intoB: number, hasBacking: boolean): boolean {
  if (a.kind !== b.kind) {
    const zeroOrHole = (k: RunKind) => k === RunKind.Zero || k === RunKind.Unallocated;
    return !hasBacking && zeroOrHole(a.kind) && zeroOrHole(b.kind);
  }
  switch (a.kind) {
    case RunKind.Zero:
    case RunKind.Unallocated:
      return true;
    case RunKind.Data:
      return a.host + intoA === b.host + intoB;
    case RunKind.Compressed:
      // One cluster per run, at the same guest position: the same descriptor means the same bytes.
      return a.host === b.host && a.hostLength === b.hostLength && a.inCluster + intoA === b.inCluster + intoB;
  }
}
