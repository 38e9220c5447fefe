/**
 * The native back-end on QEMU's images: a first pass goes through JavaScript and fills the map, a
 * second pass (O_DIRECT: past the page cache) is served by the worker threads themselves; both give
 * QEMU's bytes, and the daemon's exit line says how many reads each side served.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nativeFuseAvailable } from '../src/mount/fuse3-native.js';
import { fixturePath, fixturesReady, loadManifest } from '../test/support/fixtures.js';
import { IN_CI, toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt, waitFor } from './mount-support.js';

const ready = toolsAvailable('qemu-img', 'qemu-io', '/dev/fuse') && (fixturesReady() || IN_CI) && (nativeFuseAvailable() || IN_CI);

let scratch: Scratch;

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('fuse3q');
});

afterAll(() => {
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** The whole file read with O_DIRECT in 1 MiB and odd-sized steps, by another process. */
function readDirect(file: string, bs: string): Buffer {
  return execFileSync('dd', [`if=${file}`, `bs=${bs}`, 'iflag=direct', 'status=none'], { maxBuffer: 1 << 30 });
}

function oracleBytes(oracle: string, size: number): Buffer {
  const b = Buffer.alloc(size);
  const fd = fs.openSync(fixturePath(oracle), 'r');
  let done = 0;
  while (done < size) {
    const n = fs.readSync(fd, b, done, size - done, done);
    if (n === 0) break; // a sparse oracle cut short: zeros
    done += n;
  }
  fs.closeSync(fd);
  return b;
}

describe.skipIf(!ready)('native back-end on QEMU images', () => {
  // Plain data and zero clusters (native), extended L2 with a backing file (partly JS), an external
  // data file (native, another host file), and compressed clusters (zlib native, zstd JS only).
  // zlib clusters are inflated by the worker threads; zstd clusters stay with JS.
  const jsOnly = ['el2-c64k-backing', 'zstd-c64k'];
  for (const name of ['v3-c64k', 'v3-c512', 'el2-c64k-backing', 'datafile', 'zero-discard', 'zlib-c64k', 'zlib-c4k', 'zlib-c512', 'zlib-c2m', 'v2-zlib-c64k', 'el2-zlib-c64k', 'zstd-c64k']) {
    it(`${name}: every view equals QEMU's output through JS and then natively`, async () => {
      const fx = loadManifest().images.find((i) => i.name === name)!;
      const mnt = scratch.mountPoint(name);
      const log = scratch.path(`${name}.log`);
      scratch.mount(fixturePath(fx.image), mnt, ['-o', 'fuse=native', '--log', log]);
      try {
        const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { snapshots: { id: string; files: { raw: string } }[] };
        for (const view of fx.views) {
          if (view.view === 'vmstate') continue;
          const file = view.id === undefined ? 'active.raw' : info.snapshots.find((s) => s.id === view.id)!.files.raw;
          const want = sha(oracleBytes(view.oracle!, view.size));
          expect(sha(readDirect(path.join(mnt, file), '1M')), `${file} first pass`).toBe(want);
          expect(sha(readDirect(path.join(mnt, file), '12k')), `${file} second pass`).toBe(want);
          expect(sha(readDirect(path.join(mnt, file), '1M')), `${file} third pass (whole clusters)`).toBe(want);
        }
      } finally {
        expect(scratch.unmount(mnt).status).toBe(0);
      }
      await waitFor('the exit line', () => /exiting/.test(fs.readFileSync(log, 'utf8')), 10_000);
      const exit = /(\d+) reads served natively, (\d+) through JS/.exec(fs.readFileSync(log, 'utf8'));
      expect(exit, 'the exit line counts native and JS reads').not.toBeNull();
      const [native, js] = [Number(exit![1]), Number(exit![2])];
      expect(js).toBeGreaterThan(0);
      // zstd clusters and backing files stay with JS; the rest is served natively once mapped.
      if (jsOnly.includes(name)) expect(native).toBeGreaterThanOrEqual(0);
      else expect(native).toBeGreaterThan(js);
    });
  }

  // Clusters written in a shuffled order (host order != guest order), some zero-flagged, some never
  // written: a 1 MiB read is many host runs and zero runs, more than libfuse's own splice pipe takes,
  // so the worker gathers them in its own pipe (page-sized clusters and up) or copies them (512 bytes).
  for (const clusterSize of [65536, 4096, 512]) {
    it(`shuffled ${clusterSize}-byte clusters: many-segment replies give QEMU's bytes`, async () => {
      const size = clusterSize === 512 ? 1 << 20 : 4 << 20;
      const n = size / clusterSize;
      const image = scratch.path(`shuffled-${clusterSize}.qcow2`);
      const oracle = scratch.path(`shuffled-${clusterSize}.raw`);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${clusterSize}`, image, String(size)]);
      const order = Array.from({ length: n }, (_, i) => i);
      let seed = 12345;
      for (let i = n - 1; i > 0; i--) {
        seed = (seed * 1103515245 + 12345) >>> 0;
        const j = seed % (i + 1);
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      // Every seventh cluster never written (unallocated: zeros), every eleventh zero-flagged.
      const cmds = order.filter((c) => c % 7 !== 3).map((c) => (c % 11 === 5 ? `write -z ${c * clusterSize} ${clusterSize}` : `write -P ${(c % 251) + 1} ${c * clusterSize} ${clusterSize}`));
      execFileSync('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), image], { stdio: 'ignore' });
      execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, oracle]);
      const want = sha(fs.readFileSync(oracle));
      const mnt = scratch.mountPoint(`shuffled-${clusterSize}`);
      const log = scratch.path(`shuffled-${clusterSize}.log`);
      scratch.mount(image, mnt, ['-o', 'fuse=native', '--log', log]);
      try {
        const file = path.join(mnt, 'active.raw');
        expect(sha(readDirect(file, '1M')), 'first pass (fills the map)').toBe(want);
        expect(sha(readDirect(file, '1M')), 'second pass (native)').toBe(want);
        expect(sha(readDirect(file, '36k')), 'third pass (native, smaller requests)').toBe(want);
        expect(sha(fs.readFileSync(file)), 'through the page cache').toBe(want);
      } finally {
        expect(scratch.unmount(mnt).status).toBe(0);
      }
      await waitFor('the exit line', () => /exiting/.test(fs.readFileSync(log, 'utf8')), 10_000);
      const exit = /(\d+) reads served natively, (\d+) through JS, (\d+) native replies of many segments through a pipe/.exec(fs.readFileSync(log, 'utf8'));
      expect(exit, 'the exit line counts piped replies').not.toBeNull();
      if (clusterSize === 512) expect(Number(exit![3])).toBe(0); // not page-aligned: copied
      else expect(Number(exit![3])).toBeGreaterThan(0);
    });
  }

  it('a corrupt zlib cluster met by a worker thread: EIO for that read, a log line, and the daemon serves on', async () => {
    const fx = loadManifest().images.find((i) => i.name === 'zlib-c64k')!;
    const image = scratch.path('corrupt-zlib.qcow2');
    fs.copyFileSync(fixturePath(fx.image), image);
    // The first compressed cluster of the first L2 table gets 64 bytes of 0xff at its stream's start.
    const fd = fs.openSync(image, 'r+');
    const header = Buffer.alloc(48);
    fs.readSync(fd, header, 0, 48, 0);
    const clusterBits = header.readUInt32BE(20);
    const cs = 2 ** clusterBits;
    const l1e = Buffer.alloc(8);
    fs.readSync(fd, l1e, 0, 8, Number(header.readBigUInt64BE(40)));
    const l2 = Buffer.alloc(cs);
    fs.readSync(fd, l2, 0, cs, Number(l1e.readBigUInt64BE(0) & 0x00fffffffffffe00n));
    let bad = -1;
    let good = -1;
    for (let i = 0; i < Math.min(cs / 8, Math.floor(fx.views[0]!.size / cs)); i++) {
      if (!(l2.readBigUInt64BE(i * 8) & (1n << 62n))) continue;
      if (bad < 0) bad = i;
      else good = i;
    }
    expect(bad).toBeGreaterThanOrEqual(0);
    expect(good).toBeGreaterThan(bad);
    const host = Number(l2.readBigUInt64BE(bad * 8) & ((1n << BigInt(62 - (clusterBits - 8))) - 1n));
    fs.writeSync(fd, Buffer.alloc(64, 0xff), 0, 64, host);
    fs.closeSync(fd);
    const want = oracleBytes(fx.views[0]!.oracle!, fx.views[0]!.size).subarray(good * cs, (good + 1) * cs);

    const mnt = scratch.mountPoint('corrupt-zlib');
    const log = scratch.path('corrupt-zlib.log');
    scratch.mount(image, mnt, ['-o', 'fuse=native', '--log', log]);
    const file = path.join(mnt, 'active.raw');
    const cluster = (i: number) => spawnSync('dd', [`if=${file}`, `bs=${cs}`, `skip=${i}`, 'count=1', 'iflag=direct', 'status=none'], { maxBuffer: 4 * cs });
    try {
      // Reading a good cluster through JS maps its whole table, the corrupt cluster with it ...
      expect(cluster(good).stdout.equals(want)).toBe(true);
      // ... so a worker thread inflates the corrupt one, fails, and hands the read to JS, which says why.
      const r = cluster(bad);
      expect(r.status).not.toBe(0);
      expect(r.stderr.toString()).toMatch(/Input\/output error/);
      await waitFor('the log line', () => /compressed cluster at 0x[0-9a-f]+ .*zlib data is corrupt/.test(fs.readFileSync(log, 'utf8')), 10_000);
      // A request of many clusters, the corrupt one among them (inflated by several threads): EIO too.
      const mib = spawnSync('dd', [`if=${file}`, 'bs=1M', `skip=${Math.floor((bad * cs) / (1 << 20))}`, 'count=1', 'iflag=direct', 'status=none'], { maxBuffer: 4 << 20 });
      expect(mib.status).not.toBe(0);
      // The daemon lives on, inflating the good cluster itself.
      for (let i = 0; i < 3; i++) expect(cluster(good).stdout.equals(want)).toBe(true);
    } finally {
      expect(scratch.unmount(mnt).status).toBe(0);
    }
    await waitFor('the exit line', () => /exiting/.test(fs.readFileSync(log, 'utf8')), 10_000);
    const exit = /(\d+) failed reads; (\d+) reads served natively, (\d+) through JS/.exec(fs.readFileSync(log, 'utf8'));
    expect(exit, 'the exit line').not.toBeNull();
    expect(Number(exit![1])).toBe(2);
    expect(Number(exit![2])).toBeGreaterThanOrEqual(3);
  });

  it('-o fuse=native|compat picks the back-end (it says which in its log); anything else is refused', () => {
    const fx = loadManifest().images.find((i) => i.name === 'v3-c64k')!;
    for (const backend of ['native', 'compat']) {
      const mnt = scratch.mountPoint(backend);
      const log = scratch.path(`pick-${backend}.log`);
      scratch.mount(fixturePath(fx.image), mnt, ['-o', `fuse=${backend}`, '--log', log]);
      try {
        expect(fs.readFileSync(path.join(mnt, 'active.raw')).subarray(0, 4096).equals(oracleBytes(fx.views[0]!.oracle!, 4096))).toBe(true);
        expect(fs.readFileSync(log, 'utf8')).toMatch(new RegExp(`serving .*fuse options .*\\(${backend}\\)`));
      } finally {
        expect(scratch.unmount(mnt).status).toBe(0);
      }
    }
    const r = scratch.cli(['-o', 'fuse=kernel', fixturePath(fx.image), scratch.mountPoint('bad')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/mount option fuse needs native or compat/);
  });
});
