/**
 * Concurrent reads that miss the same L2 table or compressed cluster must load it once, and every
 * reader must still get QEMU's bytes.
 */
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { openImage } from '../src/index.js';
import { fixturePath, fixturesReady, loadManifest } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img') && fixturesReady();

describe.skipIf(!ready)('concurrent misses', () => {
  it.each(['v3-c64k', 'zstd-c64k', 'zlib-c2m'])('%s: 64 concurrent reads of one L2 span load each table and cluster once', async (name) => {
    const fixture = loadManifest().images.find((i) => i.name === name)!;
    const oracle = fs.readFileSync(fixturePath(fixture.views.find((v) => v.view === 'active')!.oracle!));
    const image = await openImage(fixturePath(fixture.image));
    try {
      const { clusterSize } = image.header;
      const size = Math.min(image.active.size, 4 * clusterSize);
      // 64 readers, 4 KiB each, all inside the first four clusters (one L2 table).
      const reads = Array.from({ length: 64 }, (_, i) => {
        const pos = Math.floor(((i * 7919) % 64) * (size - 4096) / 64);
        const buf = Buffer.alloc(4096);
        return image.active.read(buf, pos).then((n) => ({ n, pos, buf }));
      });
      const results = await Promise.all(reads);
      for (const { n, pos, buf } of results) {
        expect(n).toBe(4096);
        expect(buf.equals(oracle.subarray(pos, pos + 4096)), `bytes at ${pos}`).toBe(true);
      }
      expect(image.caches.l2Loads).toBe(1);
      const compressed = image.active.extents(0, size).filter((e) => e.kind === 'compressed');
      const clusters = new Set<number>();
      for (const e of compressed) {
        for (let c = Math.floor(e.start / clusterSize); c * clusterSize < e.start + e.length; c++) clusters.add(c);
      }
      expect(image.caches.clusterInflations).toBe(clusters.size);
      if (name !== 'v3-c64k') expect(clusters.size).toBeGreaterThan(0);
    } finally {
      image.close();
    }
  });
});
