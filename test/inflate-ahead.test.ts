/**
 * Inflating ahead (the mount daemon's worker threads, SharedCaches inflateThreads): a sequential reader
 * of compressed images gets QEMU's bytes, clusters really are inflated by the workers, and a corrupt
 * cluster met ahead still fails exactly the read that needs it, with the usual EIO, and nothing else.
 * Runs the built library (dist/): the workers are dist/codec/inflate-worker.js.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from '../native-test/mount-support.js';
import { fixturePath, fixturesReady, loadManifest, repoRoot } from './support/fixtures.js';

type Lib = typeof import('../src/index.js');
let lib: Lib;

const NAMES = ['zlib-c64k', 'zstd-c64k', 'zlib-c2m', 'zstd-c2m', 'zlib-c512', 'zlib-c4k', 'el2-zlib-c64k', 'el2-zstd-c64k', 'v2-zlib-c64k'];

describe.skipIf(!fixturesReady())('inflating compressed clusters ahead on worker threads', () => {
  beforeAll(async () => {
    ensureBuilt();
    lib = (await import(path.join(repoRoot, 'dist/index.js'))) as Lib;
  }, 300_000);

  it.each(NAMES)('%s: sequential reads in 128 KiB and 100000-byte steps match QEMU', (name) => {
    const fixture = loadManifest().images.find((i) => i.name === name);
    if (!fixture) return;
    const oracle = fs.readFileSync(fixturePath(fixture.views.find((v) => v.view === 'active')!.oracle!));
    for (const step of [131072, 100000]) {
      const image = lib.openImageSync(fixturePath(fixture.image), { inflateThreads: 4 });
      try {
        const buf = Buffer.alloc(step);
        for (let pos = 0; pos < image.active.size; pos += step) {
          const n = image.active.readSync(buf, pos);
          expect(buf.subarray(0, n).equals(oracle.subarray(pos, pos + n)), `${name} at ${pos}`).toBe(true);
        }
        // Compressed clusters past the first two: a sequential reader reaches them, so some go to workers.
        const ahead = image.active.extents(0, image.active.size).some((e) => e.kind === 'compressed' && e.start + e.length > 2 * image.header.clusterSize);
        if (ahead) expect(image.caches.inflater!.submitted).toBeGreaterThan(0);
      } finally {
        image.close();
      }
    }
  });

  it('a corrupt cluster met ahead fails only the read that needs it, with EIO', () => {
    const fixture = loadManifest().images.find((i) => i.name === 'zlib-c64k');
    if (!fixture) return;
    const oracle = fs.readFileSync(fixturePath(fixture.views.find((v) => v.view === 'active')!.oracle!));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'inflate-ahead-'));
    try {
      const copy = path.join(dir, 'disk.qcow2');
      fs.copyFileSync(fixturePath(fixture.image), copy);
      const probe = lib.openImageSync(copy);
      const { clusterSize, clusterBits } = probe.header;
      const l1Offset = probe.header.l1TableOffset;
      // A compressed cluster with two compressed clusters before it: reading those in order has it
      // inflated ahead.
      const run = probe.active.extents(0, probe.active.size).find((e) => e.kind === 'compressed' && e.start >= 2 * clusterSize && e.length >= 3 * clusterSize)!;
      const target = run.start / clusterSize + 2;
      probe.close();
      // Its L2 entry: L1[0] -> L2 table -> entry `target` -> compressed descriptor.
      const fd = fs.openSync(copy, 'r+');
      const word = Buffer.alloc(8);
      fs.readSync(fd, word, 0, 8, l1Offset);
      const l2 = Number(word.readBigUInt64BE(0) & 0x00ff_ffff_ffff_fe00n);
      fs.readSync(fd, word, 0, 8, l2 + target * 8);
      const entry = word.readBigUInt64BE(0);
      expect(entry >> 62n & 1n).toBe(1n); // compressed
      const offsetBits = 62n - BigInt(clusterBits - 8);
      const host = Number(entry & ((1n << offsetBits) - 1n));
      fs.writeSync(fd, Buffer.alloc(64, 0xff), 0, 64, host);
      fs.closeSync(fd);

      const image = lib.openImageSync(copy, { inflateThreads: 2 });
      try {
        const step = clusterSize;
        const buf = Buffer.alloc(step);
        for (let pos = 0; pos < (target + 4) * clusterSize; pos += step) {
          if (pos === target * clusterSize) {
            expect(() => image.active.readSync(buf, pos)).toThrow(/compressed cluster/);
            continue;
          }
          const n = image.active.readSync(buf, pos);
          expect(buf.subarray(0, n).equals(oracle.subarray(pos, pos + n)), `at ${pos}`).toBe(true);
        }
        expect(image.caches.inflater!.submitted).toBeGreaterThan(0);
      } finally {
        image.close();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
