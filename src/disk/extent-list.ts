import type { Extent } from './disk.js';

/** Collects extents in guest order, merging a run into the previous one where they continue each other. */
export class ExtentList {
  readonly items: Extent[] = [];

  add(e: Extent): void {
    if (e.length <= 0) return;
    const last = this.items[this.items.length - 1];
    if (
      last &&
      last.kind === e.kind &&
      last.depth === e.depth &&
      last.start + last.length === e.start &&
      (last.host === undefined || e.host === undefined ? last.host === e.host : last.host + last.length === e.host)
    ) {
      last.length += e.length;
      return;
    }
    this.items.push({ ...e });
  }
}
