/** A byte range of a guest disk. */
export interface ByteRange {
  start: number;
  length: number;
}

/**
 * Ranges collected in ascending order: a range that touches or overlaps the last one extends it, so a
 * walk over clusters yields the fewest ranges without a later sort.
 */
export class RangeList {
  readonly items: ByteRange[] = [];
  private bytes = 0;

  add(start: number, length: number): void {
    if (length <= 0) return;
    const last = this.items[this.items.length - 1];
    if (last && start < last.start) throw new RangeError(`range at ${start} added after one at ${last.start}`);
    if (last && start <= last.start + last.length) {
      const end = Math.max(last.start + last.length, start + length);
      this.bytes += end - (last.start + last.length);
      last.length = end - last.start;
      return;
    }
    this.items.push({ start, length });
    this.bytes += length;
  }

  /** Bytes covered. */
  get total(): number {
    return this.bytes;
  }
}

/** Sorted, merged copy of any ranges. */
export function mergeRanges(ranges: readonly ByteRange[]): ByteRange[] {
  const list = new RangeList();
  for (const r of [...ranges].sort((a, b) => a.start - b.start)) list.add(r.start, r.length);
  return list.items;
}

/** Ranges cut to [0, size). */
export function clipRanges(ranges: readonly ByteRange[], size: number): ByteRange[] {
  const out: ByteRange[] = [];
  for (const r of ranges) {
    const start = Math.max(0, r.start);
    const end = Math.min(size, r.start + r.length);
    if (end > start) out.push({ start, length: end - start });
  }
  return out;
}

export function totalBytes(ranges: readonly ByteRange[]): number {
  let n = 0;
  for (const r of ranges) n += r.length;
  return n;
}

/** Whether `position` lies in one of the sorted, merged `ranges` (binary search). */
export function rangesContain(ranges: readonly ByteRange[], position: number): boolean {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid];
    if (position < r.start) hi = mid - 1;
    else if (position >= r.start + r.length) lo = mid + 1;
    else return true;
  }
  return false;
}
