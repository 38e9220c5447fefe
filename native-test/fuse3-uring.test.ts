/**
 * -o fuse_uring (FUSE over io_uring, native/src/fuse-uring.c) on real mounts. The kernel offers it
 * only while /sys/module/fuse/parameters/enable_uring is Y: the tests set it (root) and put back what
 * was there afterwards. Flipping it is harmless to other tests' mounts: a server only gets io_uring
 * when its INIT reply asks for it. With io_uring: bytes equal QEMU's on plain views, compressed
 * clusters (zlib in C on the ring threads, zstd handed to JavaScript), a backing chain (JS hand-offs)
 * and 16 readers racing the first loads of L2 tables; any unmount ends the daemon; info.json says
 * io_uring. With the parameter N: the mount serves over /dev/fuse with one warning line and info.json
 * says dev. Under CI a kernel without the parameter is a failure, not a skip.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ENABLE_URING_PARAMETER } from '../src/mount/fuse3-native.js';
import { fixturePath, fixturesReady, loadManifest, type FixtureImage } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, alive, compareRange, daemonPid, daemonsFor, ensureBuilt, isMounted, oracleRangeHash, pidFileFor, readRandomRanges, waitFor } from './mount-support.js';

const PARAM = ENABLE_URING_PARAMETER;
const CI = process.env.CI === 'true';
const root = process.getuid?.() === 0;
const hasParam = fs.existsSync(PARAM);
const ready = toolsAvailable('qemu-img', '/dev/fuse') && (fixturesReady() || CI) && (root || CI);

let scratch: Scratch;
let previous: string | undefined;

function setParam(value: 'Y' | 'N'): void {
  fs.writeFileSync(PARAM, `${value}\n`);
}

function restoreParam(): void {
  if (previous !== undefined && fs.existsSync(PARAM)) fs.writeFileSync(PARAM, `${previous}\n`);
}

const onSignal = () => {
  restoreParam();
  process.exit(1);
};

beforeAll(() => {
  if (!ready) return;
  if (!hasParam) return; // reported by the test below (a failure under CI)
  previous = fs.readFileSync(PARAM, 'utf8').trim();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  ensureBuilt();
  scratch = new Scratch('uring');
});

afterAll(() => {
  restoreParam();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

const fixture = (name: string): FixtureImage => loadManifest().images.find((i) => i.name === name)!;

/** Mounts with -o fuse_uring; returns the mount point and the daemon's log file. */
function mountUring(name: string): { mnt: string; log: string; pid: number } {
  const mnt = scratch.mountPoint(name);
  scratch.mount(fixturePath(fixture(name).image), mnt, ['-o', 'fuse_uring']);
  const pidFile = pidFileFor(scratch, mnt)!;
  const log = (JSON.parse(fs.readFileSync(pidFile, 'utf8')) as { log: string }).log;
  return { mnt, log, pid: daemonPid(scratch, mnt)! };
}

function transport(mnt: string): string {
  return (JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { fuseTransport: string }).fuseTransport;
}

/** Every view of a fixture, whole, against QEMU's bytes. */
function expectViewsEqual(name: string, mnt: string): void {
  const fx = fixture(name);
  const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { snapshots: { id: string; files: { raw: string } }[] };
  for (const view of fx.views) {
    if (!view.oracle) continue;
    const file = view.view === 'active' ? 'active.raw' : info.snapshots.find((s) => s.id === view.id)!.files.raw;
    expect(compareRange(path.join(mnt, file), fixturePath(view.oracle), 0, view.size), `${name} ${file}`).toBe(-1);
  }
}

/** Unmounts with umount(8) (not qcow-mount -u): the daemon must end by itself. */
async function unmountAndWait(mnt: string, pid: number): Promise<void> {
  expect(spawnSync('umount', [mnt]).status).toBe(0);
  await waitFor(`daemon ${pid} to exit`, () => !alive(pid), 10_000);
  expect(isMounted(mnt)).toBe(false);
  expect(daemonsFor(mnt)).toEqual([]);
}

/** The exit line's count of requests served through the rings. */
function ringRequests(log: string): number {
  const m = /(\d+) requests through io_uring/.exec(fs.readFileSync(log, 'utf8'));
  return m ? Number(m[1]) : 0;
}

describe.skipIf(!ready)('-o fuse_uring', () => {
  it(`the kernel has ${PARAM} (a failure under CI, else a skip)`, (ctx) => {
    if (!hasParam && !CI) ctx.skip();
    expect(hasParam, `${PARAM} is absent: this kernel has no FUSE over io_uring`).toBe(true);
  });

  describe.skipIf(!hasParam)('enable_uring Y: served over io_uring', () => {
    beforeAll(() => setParam('Y'));

    it.each(['v3-c64k', 'zlib-c64k', 'zstd-c64k', 'chain-raw-qcow2-qcow2', 'el2-c2m-rawbacking'])(
      '%s: info.json says io_uring; every view equals QEMU output; umount ends the daemon',
      async (name) => {
        const { mnt, log, pid } = mountUring(name);
        expect(transport(mnt)).toBe('io_uring');
        expectViewsEqual(name, mnt);
        expect(fs.readFileSync(log, 'utf8')).not.toContain('warning: -o fuse_uring');
        await unmountAndWait(mnt, pid);
        expect(ringRequests(log)).toBeGreaterThan(0);
      },
      120_000,
    );

    it('16 readers race the first loads of L2 tables (JS hand-offs parked on the rings); then the whole disk, sequentially', async () => {
      const name = 'v3-c64k-l2cross';
      const { mnt, log, pid } = mountUring(name);
      const view = fixture(name).views[0]!;
      const file = path.join(mnt, 'active.raw');
      const results = await Promise.all(
        Array.from({ length: 16 }, (_, i) => readRandomRanges(file, 1000 + i, 60, 256 * 1024)),
      );
      let ranges = 0;
      for (const list of results) {
        for (const [off, asked, got, hash] of list) {
          expect(got, `read of ${asked} at ${off}`).toBe(Math.max(0, Math.min(asked, view.size - off)));
          expect(hash, `[${off}, +${got})`).toBe(oracleRangeHash(fixturePath(view.oracle!), view.size, off, got));
          ranges++;
        }
      }
      expect(ranges).toBe(16 * 60);
      expect(compareRange(file, fixturePath(view.oracle!), 0, view.size)).toBe(-1);
      expect(daemonsFor(mnt)).toHaveLength(1);
      const r = scratch.unmount(mnt);
      expect(r.status, r.stderr).toBe(0);
      await waitFor(`daemon ${pid} to exit`, () => !alive(pid), 10_000);
      expect(ringRequests(log)).toBeGreaterThan(16 * 60);
      // Cold L2 tables: the first reads of each went to JavaScript from the ring threads.
      expect(Number(/(\d+) through JS/.exec(fs.readFileSync(log, 'utf8'))?.[1] ?? 0)).toBeGreaterThan(0);
    }, 180_000);
  });

  describe.skipIf(!hasParam)('enable_uring N: served over /dev/fuse', () => {
    beforeAll(() => setParam('N'));

    it('mounts, warns once saying why, serves the same bytes; info.json says dev', async () => {
      const name = 'zlib-c64k';
      const { mnt, log, pid } = mountUring(name);
      expect(transport(mnt)).toBe('dev');
      expectViewsEqual(name, mnt);
      const warnings = fs.readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('warning: -o fuse_uring'));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toContain(`${PARAM} is N`);
      expect(warnings[0]).toContain('/dev/fuse');
      await unmountAndWait(mnt, pid);
      expect(ringRequests(log)).toBe(0);
    }, 120_000);
  });
});
