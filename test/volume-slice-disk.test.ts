import { describe, expect, it } from 'vitest';
import { type Disk, type Extent, readAsPromise } from '../src/disk/disk.js';
import { SliceDisk } from '../src/disk/slice-disk.js';
import { openVolume } from '../src/volume/partitions.js';

/** A disk of `size` bytes where byte i is i mod 251, with one extent per 1000 bytes. */
class PatternDisk implements Disk {
  constructor(readonly size: number) {}
  readSync(into: Uint8Array, position: number): number {
    const n = Math.max(0, Math.min(into.length, this.size - position));
    for (let i = 0; i < n; i++) into[i] = (position + i) % 251;
    return n;
  }
  read(into: Uint8Array, position: number): Promise<number> {
    return readAsPromise(this, into, position);
  }
  extents(start: number, length: number): Extent[] {
    const out: Extent[] = [];
    const end = Math.min(this.size, start + length);
    for (let at = start; at < end; ) {
      const next = Math.min(end, (Math.floor(at / 1000) + 1) * 1000);
      out.push({ start: at, length: next - at, kind: 'data', depth: 0, host: at });
      at = next;
    }
    return out;
  }
}

describe('SliceDisk', () => {
  const base = new PatternDisk(10_000);

  it('reads its window, short at its end', () => {
    const s = new SliceDisk(base, 2500, 1000);
    expect(s.size).toBe(1000);
    const buf = Buffer.alloc(300);
    expect(s.readSync(buf, 900)).toBe(100);
    expect([...buf.subarray(0, 100)]).toEqual(Array.from({ length: 100 }, (_, i) => (3400 + i) % 251));
    expect(buf.subarray(100).every((b) => b === 0)).toBe(true);
    expect(s.readSync(buf, 1000)).toBe(0);
  });

  it('is cut at the base disk end', () => {
    expect(new SliceDisk(base, 9000, 5000).size).toBe(1000);
    expect(new SliceDisk(base, 20000, 5000).size).toBe(0);
  });

  it('shifts extents into its own offsets', () => {
    const s = new SliceDisk(base, 2500, 2000);
    expect(s.extents(0, 5000).map((e) => [e.start, e.length, e.host])).toEqual([
      [0, 500, 2500],
      [500, 1000, 3000],
      [1500, 500, 4000],
    ]);
  });

  it('refuses a range that is not one', () => {
    expect(() => new SliceDisk(base, -1, 10)).toThrow(RangeError);
    expect(() => new SliceDisk(base, 0, 2 ** 60)).toThrow(RangeError);
  });
});

describe('openVolume', () => {
  it('has no partitions on a disk without a table, and no file for a partition wholly past the end', async () => {
    expect(openVolume(new PatternDisk(4096))).toBeUndefined();
    const sector = Buffer.alloc(512);
    sector.writeUInt32LE(1, 446 + 8);
    sector.writeUInt32LE(7, 446 + 12);
    sector[446 + 4] = 0x83;
    sector.writeUInt32LE(100, 462 + 8);
    sector.writeUInt32LE(7, 462 + 12);
    sector[462 + 4] = 0x83;
    sector[510] = 0x55;
    sector[511] = 0xaa;
    const disk: Disk = {
      size: 8 * 512,
      readSync: (into, position) => {
        const n = Math.max(0, Math.min(into.length, 4096 - position));
        into.fill(0, 0, n);
        if (position < 512) into.set(sector.subarray(position, Math.min(512, position + n)));
        return n;
      },
      read: (into, position) => Promise.resolve(disk.readSync(into, position)),
      extents: () => [],
    };
    const v = openVolume(disk)!;
    expect(v.table.partitions.map((p) => p.number)).toEqual([1, 2]);
    expect(v.partitions.map((p) => [p.number, p.disk.size])).toEqual([[1, 7 * 512]]);
    expect(v.table.problems).toEqual(['partition 2 starts beyond the end of the disk (51200 ≥ 4096): no bytes']);
  });
});
