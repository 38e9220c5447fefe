import { type Disk, type Extent, readAsPromise } from './disk.js';

/**
 * A window [start, start + length) of another disk, cut at that disk's end: a partition, or a VM state
 * inside a snapshot's L1 space. Reads and extents are the base disk's, shifted.
 */
export class SliceDisk implements Disk {
  readonly size: number;
  readonly granularity?: number;

  constructor(
    readonly base: Disk,
    readonly start: number,
    length: number,
  ) {
    if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new RangeError(`slice ${start}+${length} is not a byte range`);
    }
    this.size = Math.max(0, Math.min(length, base.size - start));
    this.granularity = base.granularity;
  }

  private clamp(length: number, position: number): number {
    if (position >= this.size || length <= 0) return 0;
    return Math.min(length, this.size - position);
  }

  readSync(into: Uint8Array, position: number): number {
    const length = this.clamp(into.length, position);
    if (length === 0) return 0;
    const target = length === into.length ? into : into.subarray(0, length);
    return this.base.readSync(target, this.start + position);
  }

  read(into: Uint8Array, position: number): Promise<number> {
    return readAsPromise(this, into, position);
  }

  extents(start: number, length: number): Extent[] {
    const n = this.clamp(length, start);
    if (n === 0) return [];
    return this.base.extents(this.start + start, n).map((e) => ({ ...e, start: e.start - this.start }));
  }
}
