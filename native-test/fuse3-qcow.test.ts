/**
 * The native back-end on QEMU's images: a first pass goes through JavaScript and fills the map, a
 * second pass (O_DIRECT: past the page cache) is served by the worker threads themselves; both give
 * QEMU's bytes, and the daemon's exit line says how many reads each side served.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nativeFuseAvailable } from '../src/mount/fuse3-native.js';
import { fixturePath, fixturesReady, loadManifest } from '../test/support/fixtures.js';
import { IN_CI, toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt, waitFor } from './mount-support.js';

const ready = toolsAvailable('qemu-img', '/dev/fuse') && (fixturesReady() || IN_CI) && (nativeFuseAvailable() || IN_CI);

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
  // data file (native, another host file), and compressed clusters (JS only).
  for (const name of ['v3-c64k', 'v3-c512', 'el2-c64k-backing', 'datafile', 'zero-discard', 'zlib-c64k']) {
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
        }
      } finally {
        expect(scratch.unmount(mnt).status).toBe(0);
      }
      await waitFor('the exit line', () => /exiting/.test(fs.readFileSync(log, 'utf8')), 10_000);
      const exit = /(\d+) reads served natively, (\d+) through JS/.exec(fs.readFileSync(log, 'utf8'));
      expect(exit, 'the exit line counts native and JS reads').not.toBeNull();
      const [native, js] = [Number(exit![1]), Number(exit![2])];
      expect(js).toBeGreaterThan(0);
      // Compressed clusters and backing files stay with JS; the rest is served natively once mapped.
      if (name === 'zlib-c64k' || name === 'el2-c64k-backing') expect(native).toBeGreaterThanOrEqual(0);
      else expect(native).toBeGreaterThan(js);
    });
  }

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
