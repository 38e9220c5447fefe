import { QcowError } from '../errors.js';
import type { Qcow2Metadata } from '../translate/qcow2-metadata.js';
import { type RunVisitor, walkRange } from '../translate/walk.js';
import { type Disk, type Extent, type ExtentKind, readAsPromise } from './disk.js';
import { ExtentList } from './extent-list.js';

/**
 * A disk seen through one L1 table of a qcow2 file: the active disk (the header's L1), a snapshot's
 * disk, or (with `origin` past the disk) a snapshot's VM state. Unallocated runs fall through to
 * `backing`, and read as zeros past its end or where there is none.
 */
export class Qcow2Disk implements Disk {
  constructor(
    readonly meta: Qcow2Metadata,
    private readonly l1: () => Float64Array,
    readonly size: number,
    readonly backing: Disk | undefined,
    /** Where the view starts in its L1 space. */
    readonly origin = 0,
  ) {}

  /** Where the last read ended, and how far ahead compressed clusters are being inflated. */
  private lastEnd = -1;
  private aheadTo = 0;

  readSync(into: Uint8Array, position: number): number {
    const length = clampLength(this.size, into.length, position);
    if (length === 0) return 0;
    const reader = new RangeReader(this, into);
    walkRange(this.meta, this.l1(), this.origin, position, length, reader);
    reader.flush();
    if (reader.sawCompressed && this.meta.caches.inflater) this.inflateAhead(position, length);
    return length;
  }

  /**
   * A sequential reader of compressed clusters (this read starts where the last one ended) gets the
   * next clusters inflated by worker threads meanwhile: up to 1 MiB (at least two clusters) ahead.
   */
  private inflateAhead(position: number, length: number): void {
    const end = position + length;
    const sequential = position === this.lastEnd;
    this.lastEnd = end;
    if (!sequential) {
      this.aheadTo = end;
      return;
    }
    const window = Math.max(2 * this.meta.clusterSize, 1024 * 1024);
    const from = Math.max(end, this.aheadTo);
    const to = Math.min(this.size, end + window);
    if (from >= to) return;
    this.aheadTo = to;
    const meta = this.meta;
    const ignore = () => undefined;
    try {
      walkRange(meta, this.l1(), this.origin, from, to - from, {
        data: ignore,
        zero: ignore,
        unallocated: ignore,
        compressed: (_dst, _len, hi, lo) => meta.inflateAhead(hi, lo),
      });
    } catch {
      // A bad region ahead is reported by the read that reaches it.
    }
  }

  read(into: Uint8Array, position: number): Promise<number> {
    return readAsPromise(this, into, position);
  }

  extents(start: number, length: number): Extent[] {
    const n = clampLength(this.size, length, start);
    const list = new ExtentList();
    if (n === 0) return list.items;
    const depth = this.meta.depth;
    const backing = this.backing;
    const add = (kind: ExtentKind, dst: number, len: number, host?: number) => list.add({ start: start + dst, length: len, kind, depth, host });
    const visitor: RunVisitor = {
      data: (dst, len, host) => add('data', dst, len, host),
      zero: (dst, len) => add('zero', dst, len),
      compressed: (dst, len) => add('compressed', dst, len),
      unallocated: (dst, len, guest) => {
        if (!backing) return add('unallocated', dst, len);
        const inBacking = Math.max(0, Math.min(len, backing.size - guest));
        for (const e of backing.extents(guest, inBacking)) list.add(e);
        // Past the end of a shorter backing file: zeros that no image in the chain stores.
        if (inBacking < len) list.add({ start: start + dst + inBacking, length: len - inBacking, kind: 'unallocated', depth: depth + 1 });
      },
    };
    walkRange(this.meta, this.l1(), this.origin, start, n, visitor);
    return list.items;
  }
}

export function clampLength(size: number, length: number, position: number): number {
  if (!Number.isSafeInteger(position) || position < 0) throw new QcowError('EINVAL', '', `invalid read position ${position}`);
  return Math.max(0, Math.min(length, size - position));
}

/**
 * Serves one read: zero runs are filled at once, compressed clusters copied out of the inflated-cluster
 * cache, and data and backing runs held back so that host-contiguous clusters (and adjacent backing
 * runs) go out as one positional read.
 */
class RangeReader implements RunVisitor {
  private kind: 0 | 1 | 2 = 0; // 0 nothing pending, 1 data, 2 backing
  private dst = 0;
  private length = 0;
  private source = 0; // host offset (data) or guest position (backing)

  constructor(
    private readonly disk: Qcow2Disk,
    private readonly into: Uint8Array,
  ) {}

  data(dst: number, length: number, host: number): void {
    if (this.kind === 1 && this.source + this.length === host && this.dst + this.length === dst) {
      this.length += length;
      return;
    }
    this.flush();
    this.kind = 1;
    this.dst = dst;
    this.length = length;
    this.source = host;
  }

  unallocated(dst: number, length: number, guest: number): void {
    if (!this.disk.backing) {
      this.into.fill(0, dst, dst + length);
      return;
    }
    if (this.kind === 2 && this.dst + this.length === dst) {
      this.length += length;
      return;
    }
    this.flush();
    this.kind = 2;
    this.dst = dst;
    this.length = length;
    this.source = guest;
  }

  zero(dst: number, length: number): void {
    this.into.fill(0, dst, dst + length);
  }

  /** The read met a compressed cluster. */
  sawCompressed = false;

  compressed(dst: number, length: number, hi: number, lo: number, inCluster: number, guest: number): void {
    this.sawCompressed = true;
    const cluster = this.disk.meta.compressedCluster(hi, lo, this.disk.origin + guest - inCluster);
    this.into.set(cluster.subarray(inCluster, inCluster + length), dst);
  }

  flush(): void {
    const { kind, dst, length } = this;
    this.kind = 0;
    if (kind === 1) {
      this.disk.meta.dataFile.readAt(this.into, dst, length, this.source, 'guest data');
    } else if (kind === 2) {
      const target = this.into.subarray(dst, dst + length);
      const n = this.disk.backing!.readSync(target, this.source);
      if (n < length) target.fill(0, n);
    }
  }
}
