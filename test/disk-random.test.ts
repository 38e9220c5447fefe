/**
 * Random images: a random layout of data, zero, preallocated-zero, unallocated, compressed and
 * (extended L2) mixed-subcluster clusters over a random raw backing file, built by hand; every read and
 * every extent is checked against the bytes placed, and extents' host offsets against the files.
 */
import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { openImage } from '../src/image.js';
import { ImageBuilder, compressible, pattern, tempDir } from './support/build-image.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());
let serial = 0;

type Kind = 'unallocated' | 'data' | 'zero' | 'zeroPrealloc' | 'compressed' | 'subclusters';
interface ClusterPlan {
  kind: Kind;
  seed: number;
  alloc: number;
  zero: number;
  /** Allocation order key: clusters are placed in ascending key order (so hosts are sometimes contiguous). */
  order: number;
}

interface Plan {
  clusterBits: 9 | 12 | 14;
  compression: 'zlib' | 'zstd';
  clusters: ClusterPlan[];
  tailCut: number;
  /** Raw backing file length, or -1 for none. */
  backing: number;
}

const kinds = (extended: boolean) =>
  extended
    ? fc.constantFrom<Kind>('unallocated', 'data', 'zero', 'compressed', 'subclusters', 'subclusters')
    : fc.constantFrom<Kind>('unallocated', 'data', 'data', 'zero', 'zeroPrealloc', 'compressed');

const plan: fc.Arbitrary<Plan> = fc.constantFrom<9 | 12 | 14>(9, 12, 14).chain((clusterBits) => {
  const C = 2 ** clusterBits;
  const maxClusters = clusterBits === 9 ? 150 : 24;
  const cluster = fc.record({
    kind: kinds(clusterBits === 14),
    seed: fc.integer({ min: 1, max: 1 << 20 }),
    alloc: fc.integer({ min: 0, max: 0xffff_ffff }),
    zero: fc.integer({ min: 0, max: 0xffff_ffff }),
    order: fc.integer({ min: 0, max: 3 }),
  });
  return fc.record({
    clusterBits: fc.constant(clusterBits),
    compression: fc.constantFrom<'zlib' | 'zstd'>('zlib', 'zstd'),
    clusters: fc.array(cluster, { minLength: 1, maxLength: maxClusters }),
    tailCut: fc.integer({ min: 0, max: C - 1 }),
    backing: fc.integer({ min: -1, max: maxClusters * C + C }),
  });
});

async function buildAndCheck(p: Plan, reads: [number, number][]): Promise<void> {
  const C = 2 ** p.clusterBits;
  const SC = p.clusterBits === 14 ? C / 32 : C;
  const n = p.clusters.length;
  const size = Math.max(1, n * C - p.tailCut);
  const name = `r${serial++}`;
  let base: Buffer | undefined;
  if (p.backing >= 0) {
    base = pattern(p.backing, serial);
    fs.writeFileSync(tmp.file(`${name}.raw`), base);
  }
  const b = new ImageBuilder({
    clusterBits: p.clusterBits,
    size,
    extendedL2: p.clusterBits === 14,
    compression: p.compression,
    ...(base ? { backingFile: `${name}.raw`, backingFormat: 'raw' } : {}),
  });
  const expected = Buffer.alloc(n * C);
  if (base) base.copy(expected, 0, 0, Math.min(base.length, expected.length));
  const order = p.clusters.map((c, i) => [c.order, i] as const).sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  for (const [, i] of order) {
    const c = p.clusters[i]!;
    const at = i * C;
    switch (c.kind) {
      case 'unallocated':
        break;
      case 'data': {
        const content = pattern(C, c.seed);
        b.active.dataCluster(i, content);
        content.copy(expected, at);
        break;
      }
      case 'zero':
        if (b.extendedL2) b.active.subclusters(i, 0, 0xffff_ffff);
        else b.active.zeroCluster(i);
        expected.fill(0, at, at + C);
        break;
      case 'zeroPrealloc': {
        const host = b.allocClusters(1);
        b.image.fill(0x5a, host, host + C);
        b.active.zeroCluster(i, host);
        expected.fill(0, at, at + C);
        break;
      }
      case 'compressed': {
        // Half random, half zeros: compresses to less than a cluster, as QEMU requires.
        const content = c.seed % 3 ? compressible(C, c.seed) : Buffer.concat([pattern(C / 2, c.seed), Buffer.alloc(C / 2)]);
        b.active.compressedCluster(i, content, { skip: c.seed % 600, trailing: pattern(c.seed % 300, c.seed) });
        content.copy(expected, at);
        break;
      }
      case 'subclusters': {
        const alloc = c.alloc >>> 0;
        const zero = (c.zero & ~alloc) >>> 0;
        const content = pattern(C, c.seed);
        b.active.subclusters(i, alloc, zero, content);
        for (let s = 0; s < 32; s++) {
          const bit = 2 ** s;
          const from = at + s * SC;
          if (Math.floor(alloc / bit) % 2) content.copy(expected, from, s * SC, (s + 1) * SC);
          else if (Math.floor(zero / bit) % 2) expected.fill(0, from, from + SC);
        }
        break;
      }
    }
  }
  const path = b.writeTo(tmp.file(`${name}.qcow2`));
  const image = await openImage(path);
  try {
    const disk = image.active;
    // QEMU counts whole 512-byte sectors: a header size that is not a multiple of 512 is rounded down.
    const view = size - (size % 512);
    const want = expected.subarray(0, view);
    expect(disk.size).toBe(view);
    const whole = Buffer.alloc(view);
    expect(disk.readSync(whole, 0)).toBe(view);
    expect(whole.equals(want)).toBe(true);
    for (const [a, l] of reads) {
      const position = a % (view + 10);
      const into = Buffer.alloc(l % (4 * C + 1));
      const got = disk.readSync(into, position);
      expect(got).toBe(Math.max(0, Math.min(into.length, view - position)));
      expect(into.subarray(0, got).equals(want.subarray(position, position + got))).toBe(true);
    }
    // Extents tile the disk; what they say agrees with the placed bytes and the files.
    const file = fs.readFileSync(path);
    let at = 0;
    for (const e of disk.extents(0, view)) {
      expect(e.start).toBe(at);
      at += e.length;
      const placed = want.subarray(e.start, e.start + e.length);
      if (e.kind === 'zero' || e.kind === 'unallocated') expect(placed.equals(Buffer.alloc(e.length))).toBe(true);
      if (e.kind === 'data') {
        const source = e.depth === 0 ? file : Buffer.concat([base!, Buffer.alloc(512)]);
        const stored = Buffer.alloc(e.length);
        source.copy(stored, 0, e.host!, e.host! + e.length);
        expect(stored.equals(placed)).toBe(true);
      }
    }
    expect(at).toBe(view);
  } finally {
    image.close();
  }
}

describe('random hand-built images', () => {
  it('read back exactly what was placed, through reads and extents', async () => {
    await fc.assert(
      fc.asyncProperty(plan, fc.array(fc.tuple(fc.nat(), fc.nat()), { minLength: 5, maxLength: 20 }), (p, reads) => buildAndCheck(p, reads)),
      { numRuns: 120 },
    );
  });
});
