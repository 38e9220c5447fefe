/**
 * Eight processes reading at once from three mounts (plain clusters across L2 tables, zlib and zstd
 * 2 MiB compressed clusters, active disks and snapshots): every range must equal QEMU's bytes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesReady, loadManifest, type FixtureImage } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, daemonsFor, ensureBuilt, isMounted, oracleRangeHash, readRandomRanges } from './mount-support.js';

const ready = toolsAvailable('qemu-img', '/dev/fuse') && (fixturesReady() || process.env.CI === 'true');

let scratch: Scratch;
const mounts = new Map<string, string>();

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('conc');
  for (const name of ['v3-c64k-l2cross', 'zlib-c2m', 'zstd-c2m']) {
    const fx = loadManifest().images.find((i) => i.name === name)!;
    const mnt = scratch.mountPoint(name);
    scratch.mount(fixturePath(fx.image), mnt);
    mounts.set(name, mnt);
  }
});

afterAll(() => {
  if (!scratch) return;
  for (const mnt of mounts.values()) if (isMounted(mnt)) scratch.unmount(mnt);
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

describe.skipIf(!ready)('eight readers at once', () => {
  it('every range each of eight concurrent processes reads equals QEMU output', async () => {
    const manifest = loadManifest();
    const fx = (name: string): FixtureImage => manifest.images.find((i) => i.name === name)!;
    const jobs: { file: string; oracle: string; size: number; seed: number }[] = [];
    const add = (name: string, viewIndex: number, file: string, seed: number) => {
      const view = fx(name).views[viewIndex]!;
      jobs.push({ file: path.join(mounts.get(name)!, file), oracle: fixturePath(view.oracle!), size: view.size, seed });
    };
    const snapFile = (name: string, viewIndex: number) => {
      const info = JSON.parse(fs.readFileSync(path.join(mounts.get(name)!, 'info.json'), 'utf8')) as { snapshots: { id: string; files: { raw: string } }[] };
      return info.snapshots.find((s) => s.id === fx(name).views[viewIndex]!.id)!.files.raw;
    };
    add('v3-c64k-l2cross', 0, 'active.raw', 1);
    add('v3-c64k-l2cross', 0, 'active.raw', 2);
    add('v3-c64k-l2cross', 1, snapFile('v3-c64k-l2cross', 1), 3);
    add('zlib-c2m', 0, 'active.raw', 4);
    add('zlib-c2m', 1, snapFile('zlib-c2m', 1), 5);
    add('zlib-c2m', 2, snapFile('zlib-c2m', 2), 6);
    add('zstd-c2m', 0, 'active.raw', 7);
    add('zstd-c2m', 2, snapFile('zstd-c2m', 2), 8);
    expect(jobs).toHaveLength(8);

    const results = await Promise.all(jobs.map((job) => readRandomRanges(job.file, job.seed, 150, 1 << 20)));

    let ranges = 0;
    results.forEach((list, i) => {
      const job = jobs[i]!;
      for (const [off, asked, got, hash] of list) {
        expect(got, `${job.file} read of ${asked} at ${off}`).toBe(Math.max(0, Math.min(asked, job.size - off)));
        expect(hash, `${job.file} [${off}, +${got})`).toBe(oracleRangeHash(job.oracle, job.size, off, got));
        ranges++;
      }
    });
    expect(ranges).toBe(8 * 150);
    // All three daemons are still serving.
    for (const mnt of mounts.values()) expect(daemonsFor(mnt)).toHaveLength(1);
  });
});
