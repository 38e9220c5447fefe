import { type GuestMap, type Qcow2Map, Run, RunKind } from '../translate/qcow2-map.js';
import type { ClusterReader } from './cluster-reader.js';
import { type Disk, type Extent, clampLength, readAsPromise } from './disk.js';
import { ExtentList } from './extent-list.js';

/**
 * A disk seen through one L1 table of a qcow2 or qcow v1 file: the active disk (the header's L1), a
 * snapshot's disk, or (with `origin` past the disk) a snapshot's VM state. A read asks the map for one
 * run at a time and serves it: data from the data file, zeros, the backing disk (zeros past its end or
 * where there is none), or a compressed cluster through the cluster reader. Qcow2Disk and Qcow1Disk
 * differ only in their map.
 */
export class MappedDisk implements Disk {
  readonly granularity: number;
  /** Reused by every read of this disk (reads of one disk never nest). */
  private readonly run = new Run();
  /** Where the last read ended, and how far ahead compressed clusters are being inflated. */
  private lastEnd = -1;
  private aheadTo = 0;

  constructor(
    readonly map: GuestMap,
    readonly reader: ClusterReader,
    /** The view's L1 table (loaded on first use). */
    readonly l1: () => Float64Array,
    readonly size: number,
    readonly backing: Disk | undefined,
    /** 0 for the top image of the chain, 1 for its backing file, and so on (for extents). */
    readonly depth: number,
    /** Where the view starts in its L1 space. */
    readonly origin = 0,
  ) {
    this.granularity = map.clusterSize;
  }

  readSync(into: Uint8Array, position: number): number {
    const length = clampLength(this.size, into.length, position);
    if (length === 0) return 0;
    const { map, reader, run, origin } = this;
    const l1 = this.l1();
    let sawCompressed = false;
    for (let done = 0; done < length; done += run.length) {
      map.mapRun(l1, origin, position + done, length - done, run);
      switch (run.kind) {
        case RunKind.Data:
          reader.readData(into, done, run.length, run.host, origin + position + done);
          break;
        case RunKind.Zero:
          into.fill(0, done, done + run.length);
          break;
        case RunKind.Unallocated:
          this.readBacking(into, done, run.length, position + done);
          break;
        case RunKind.Compressed: {
          sawCompressed = true;
          const cluster = reader.compressedCluster(run);
          into.set(cluster.subarray(run.inCluster, run.inCluster + run.length), done);
          break;
        }
      }
    }
    if (sawCompressed && reader.inflatesAhead) this.inflateAhead(l1, position, length);
    return length;
  }

  read(into: Uint8Array, position: number): Promise<number> {
    return readAsPromise(this, into, position);
  }

  /** The L1 table this view maps through (the metadata diff compares two views' tables). */
  l1Table(): Float64Array {
    return this.l1();
  }

  extents(start: number, length: number): Extent[] {
    const n = clampLength(this.size, length, start);
    const list = new ExtentList();
    const { map, run, origin, depth, backing } = this;
    const l1 = this.l1();
    for (let done = 0; done < n; done += run.length) {
      map.mapRun(l1, origin, start + done, n - done, run);
      const at = start + done;
      switch (run.kind) {
        case RunKind.Data:
          list.add({ start: at, length: run.length, kind: 'data', depth, host: run.host });
          break;
        case RunKind.Zero:
          list.add({ start: at, length: run.length, kind: 'zero', depth });
          break;
        case RunKind.Compressed:
          list.add({ start: at, length: run.length, kind: 'compressed', depth });
          break;
        case RunKind.Unallocated: {
          if (!backing) {
            list.add({ start: at, length: run.length, kind: 'unallocated', depth });
            break;
          }
          const inBacking = Math.max(0, Math.min(run.length, backing.size - at));
          // The backing disk's extents use its own Run: this one stays valid across the call.
          const len = run.length;
          for (const e of backing.extents(at, inBacking)) list.add(e);
          // Past the end of a shorter backing file: zeros that no image in the chain stores.
          if (inBacking < len) list.add({ start: at + inBacking, length: len - inBacking, kind: 'unallocated', depth: depth + 1 });
          break;
        }
      }
    }
    return list.items;
  }

  private readBacking(into: Uint8Array, dst: number, length: number, guest: number): void {
    if (!this.backing) {
      into.fill(0, dst, dst + length);
      return;
    }
    const target = into.subarray(dst, dst + length);
    const n = this.backing.readSync(target, guest);
    if (n < length) target.fill(0, n);
  }

  /**
   * A sequential reader of compressed clusters (this read starts where the last one ended) gets the
   * next clusters inflated by worker threads meanwhile: up to 1 MiB (at least two clusters) ahead.
   */
  private inflateAhead(l1: Float64Array, position: number, length: number): void {
    const end = position + length;
    const sequential = position === this.lastEnd;
    this.lastEnd = end;
    if (!sequential) {
      this.aheadTo = end;
      return;
    }
    const window = Math.max(2 * this.map.clusterSize, 1024 * 1024);
    const from = Math.max(end, this.aheadTo);
    const to = Math.min(this.size, end + window);
    if (from >= to) return;
    this.aheadTo = to;
    const run = this.run;
    try {
      for (let at = from; at < to; at += run.length) {
        this.map.mapRun(l1, this.origin, at, to - at, run);
        if (run.kind === RunKind.Compressed) this.reader.inflateAhead(run);
      }
    } catch {
      // A bad region ahead is reported by the read that reaches it.
    }
  }
}

/** A view of a qcow2 file (code that reads qcow2 tables itself, the native back-end and diff, asks for this). */
export class Qcow2Disk extends MappedDisk {
  constructor(
    override readonly map: Qcow2Map,
    reader: ClusterReader,
    l1: () => Float64Array,
    size: number,
    backing: Disk | undefined,
    depth: number,
    origin = 0,
  ) {
    super(map, reader, l1, size, backing, depth, origin);
  }
}
