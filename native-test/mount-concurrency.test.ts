/**
 * Eight processes reading at once from three mounts (plain clusters across L2 tables, zlib and zstd
 * 2 MiB compressed clusters, active disks and snapshots): every range must equal QEMU's bytes.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesReady, loadManifest, type FixtureImage } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, daemonsFor, ensureBuilt, isMounted } from './mount-support.js';

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

/** Reads `count` random ranges (seeded) of a file; prints [offset, asked, got, sha256] for each. */
const READER = `
  const fs = require('fs'); const crypto = require('crypto');
  const [file, seedText, countText, maxText] = process.argv.slice(1);
  let a = Number(seedText) >>> 0;
  const rnd = () => { a = (a + 0x6d2b79f5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const fd = fs.openSync(file, 'r'); const size = fs.fstatSync(fd).size;
  const buf = Buffer.alloc(Number(maxText)); const out = [];
  for (let i = 0; i < Number(countText); i++) {
    const len = 1 + Math.floor(rnd() * Number(maxText));
    const off = Math.floor(rnd() * Math.max(1, size - len + 4096)); // sometimes runs past the end
    let done = 0;
    for (;;) { const n = fs.readSync(fd, buf, done, len - done, off + done); if (n === 0) break; done += n; if (done === len) break; }
    out.push([off, len, done, crypto.createHash('sha256').update(buf.subarray(0, done)).digest('hex')]);
  }
  process.stdout.write(JSON.stringify(out));
`;

function expectedHash(oracle: string, size: number, off: number, len: number): string {
  const n = Math.max(0, Math.min(len, size - off));
  const buf = Buffer.alloc(n);
  const fd = fs.openSync(oracle, 'r');
  let done = 0;
  while (done < n) {
    const r = fs.readSync(fd, buf, done, n - done, off + done);
    if (r === 0) break; // sparse oracle cut short: zeros
    done += r;
  }
  fs.closeSync(fd);
  return createHash('sha256').update(buf).digest('hex');
}

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

    const results = await Promise.all(
      jobs.map(
        (job) =>
          new Promise<[number, number, number, string][]>((resolve, reject) => {
            const c = spawn(process.execPath, ['-e', READER, job.file, String(job.seed), '150', String(1 << 20)], { stdio: ['ignore', 'pipe', 'pipe'] });
            let out = '';
            let err = '';
            c.stdout.on('data', (d: Buffer) => (out += d.toString()));
            c.stderr.on('data', (d: Buffer) => (err += d.toString()));
            c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as [number, number, number, string][]) : reject(new Error(`reader ${job.file}: ${err}`))));
          }),
      ),
    );

    let ranges = 0;
    results.forEach((list, i) => {
      const job = jobs[i]!;
      for (const [off, asked, got, hash] of list) {
        expect(got, `${job.file} read of ${asked} at ${off}`).toBe(Math.max(0, Math.min(asked, job.size - off)));
        expect(hash, `${job.file} [${off}, +${got})`).toBe(expectedHash(job.oracle, job.size, off, got));
        ranges++;
      }
    });
    expect(ranges).toBe(8 * 150);
    // All three daemons are still serving.
    for (const mnt of mounts.values()) expect(daemonsFor(mnt)).toHaveLength(1);
  });
});
