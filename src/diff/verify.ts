import type { Disk } from '../disk/disk.js';
import { RangeList, type ByteRange } from './ranges.js';

/**
 * `--verify`: reads both sides of each listed range and keeps only the granules (clusters or
 * subclusters) whose bytes differ, dropping rewrites with identical data. Ranges past the end of
 * either disk are kept: a size change is a difference whatever the bytes.
 */
export function verifyRanges(a: Disk, b: Disk, ranges: readonly ByteRange[], granule: number, chunk = 1 << 20): ByteRange[] {
  const common = Math.min(a.size, b.size);
  const step = Math.max(granule, Math.floor(chunk / granule) * granule);
  const bufA = Buffer.alloc(step);
  const bufB = Buffer.alloc(step);
  const out = new RangeList();
  for (const r of ranges) {
    const end = r.start + r.length;
    const inside = Math.min(end, common);
    for (let pos = r.start; pos < inside; ) {
      const n = Math.min(step, inside - pos);
      const ra = bufA.subarray(0, n);
      const rb = bufB.subarray(0, n);
      a.readSync(ra, pos);
      b.readSync(rb, pos);
      // Granules are aligned to the disk, not to the range.
      let g = pos;
      while (g < pos + n) {
        const gEnd = Math.min(pos + n, (Math.floor(g / granule) + 1) * granule);
        if (!ra.subarray(g - pos, gEnd - pos).equals(rb.subarray(g - pos, gEnd - pos))) out.add(g, gEnd - g);
        g = gEnd;
      }
      pos += n;
    }
    if (end > common) out.add(Math.max(r.start, common), end - Math.max(r.start, common));
  }
  return out.items;
}
