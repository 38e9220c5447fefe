/**
 * The hostile catalogue (scripts/make-hostile.ts) through a real mount: refused images make qcow-mount
 * exit non-zero with one line and leave nothing mounted or running; images with a bad region mount,
 * the region reads EIO (with a log line) while everything else reads as QEMU does and the daemon lives
 * on; an image that shrinks under a live mount gives EIO, not a crash; and a heavy session leaves the
 * image and backing files' bytes and mtimes as they were.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type HostileCatalogue, type HostileEntry, defaultHostileDir, makeHostile } from '../scripts/make-hostile.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, alive, daemonPid, daemonsFor, ensureBuilt, isMounted, pidFileFor } from './mount-support.js';

const ready = toolsAvailable('qemu-img', 'qemu-io', '/dev/fuse', 'fusermount3', 'umount');
const dir = process.env.QCOW_HOSTILE_DIR ?? defaultHostileDir;
const catalogue: HostileCatalogue = ready ? makeHostile(dir) : { stamp: '', qemu: '', entries: [] };
const abs = (rel: string) => path.join(dir, rel);
const entry = (name: string): HostileEntry => {
  const e = catalogue.entries.find((x) => x.name === name);
  if (!e) throw new Error(`no catalogue entry ${name}`);
  return e;
};

let scratch: Scratch;

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('hostile');
});

afterAll(() => {
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

/** Unmounts, falling back to a lazy umount, and waits until the daemon is gone. */
async function unmount(mnt: string): Promise<void> {
  const pid = daemonPid(scratch, mnt);
  const r = scratch.unmount(mnt);
  if (r.status !== 0 && isMounted(mnt)) scratch.cli(['-u', '-z', mnt]);
  if (isMounted(mnt)) spawn('umount', ['-l', mnt]);
  const deadline = Date.now() + 10_000;
  while ((isMounted(mnt) || (pid !== undefined && alive(pid))) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  expect(isMounted(mnt)).toBe(false);
  if (pid !== undefined) expect(alive(pid)).toBe(false);
}

function fileOf(mnt: string, view: string): string {
  if (view === 'active') return path.join(mnt, 'active.raw');
  const [kind, name] = view.split(':') as [string, string];
  return path.join(mnt, 'snapshots', `${name}.${kind === 'vmstate' ? 'vmstate' : 'raw'}`);
}

function readAtFd(fd: number, buf: Buffer, position: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

function errnoOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  }
  return undefined;
}

const sha256 = (file: string) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

describe.skipIf(!ready)('hostile images through qcow-mount: refused', () => {
  // Every refused entry: one line, a non-zero exit, nothing mounted, no daemon.
  it.each(catalogue.entries.filter((e) => e.expect === 'refused').map((e) => [e.name, e] as const))('%s', { timeout: 60_000 }, (_name, e) => {
    const mnt = scratch.mountPoint(e.name);
    const started = Date.now();
    const r = scratch.cli(['--log', scratch.path(`${e.name}.log`), abs(e.file), mnt], { timeout: 30_000 });
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(r.status, r.stderr).not.toBe(0);
    expect(r.status).not.toBe(70); // 70 = internal error: a refusal must be a clear one
    const lines = r.stderr.trim().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toContain(abs(e.messageFile ?? e.file));
    for (const s of e.messageIncludes) expect(lines[0]).toContain(s);
    expect(isMounted(mnt)).toBe(false);
    expect(daemonsFor(mnt)).toEqual([]);
    expect(pidFileFor(scratch, mnt)).toBeUndefined();
  });
});

describe.skipIf(!ready)('hostile images through qcow-mount: damaged snapshots hidden, the rest served', () => {
  it.each(catalogue.entries.filter((e) => e.expect === 'hidden').map((e) => [e.name, e] as const))('%s', { timeout: 60_000 }, async (_name, e) => {
    const mnt = scratch.mountPoint(e.name);
    const r = scratch.cli(['--log', scratch.path(`${e.name}.log`), abs(e.file), mnt], { timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    try {
      expect(r.stderr).toMatch(/^qcow-mount: warning: /);
      const shown = fs.readdirSync(path.join(mnt, 'snapshots'));
      for (const hidden of e.hides!) expect(shown).not.toContain(`${hidden}.raw`);
      for (const [view, rel] of Object.entries(e.oracles ?? {})) {
        expect(sha256(fileOf(mnt, view)), `${e.name} ${view}`).toBe(sha256(abs(rel)));
      }
    } finally {
      await unmount(mnt);
    }
    expect(daemonsFor(mnt)).toEqual([]);
  });
});

describe.skipIf(!ready)('hostile images through qcow-mount: a bad region reads EIO, the rest reads, the daemon lives on', () => {
  it.each(catalogue.entries.filter((e) => e.expect === 'eio-region').map((e) => [e.name, e] as const))('%s', { timeout: 120_000 }, async (_name, e) => {
    const mnt = scratch.mountPoint(e.name);
    const log = scratch.path(`${e.name}.log`);
    scratch.mount(abs(e.file), mnt, ['--log', log]);
    try {
      const pid = daemonPid(scratch, mnt)!;
      expect(pid).toBeGreaterThan(0);
      const chunk = e.chunk ?? 4096;
      const regionView = e.view ?? 'active';
      const region = e.region!;

      // The region fails with EIO, each time it is asked for.
      const bad = fs.openSync(fileOf(mnt, regionView), 'r');
      try {
        expect(errnoOf(() => readAtFd(bad, Buffer.alloc(chunk), region[0]))).toBe('EIO');
        expect(errnoOf(() => readAtFd(bad, Buffer.alloc(1), region[0] + region[1] - 1))).toBe('EIO');
      } finally {
        fs.closeSync(bad);
      }
      expect(alive(pid)).toBe(true);

      // The log says why, one line per failed request, naming the file and the problem.
      const logLines = fs.readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('EIO'));
      expect(logLines.length).toBeGreaterThan(0);
      for (const l of logLines) {
        expect(l).toContain(abs(e.file));
        for (const s of e.messageIncludes) expect(l).toContain(s);
      }

      // Every other chunk of every view reads QEMU's bytes.
      for (const [view, rel] of Object.entries(e.oracles ?? {})) {
        const oracle = fs.readFileSync(abs(rel));
        const fd = fs.openSync(fileOf(mnt, view), 'r');
        try {
          expect(fs.fstatSync(fd).size).toBe(oracle.length);
          const buf = Buffer.alloc(chunk);
          for (let pos = 0; pos < oracle.length; pos += chunk) {
            const inRegion = view === regionView && pos < region[0] + region[1] && region[0] < pos + chunk;
            if (inRegion) continue;
            const n = readAtFd(fd, buf, pos);
            if (!buf.subarray(0, n).equals(oracle.subarray(pos, pos + n))) throw new Error(`${e.name} ${view}: bytes at ${pos} differ from QEMU's`);
          }
        } finally {
          fs.closeSync(fd);
        }
      }
      expect(alive(pid)).toBe(true);
      // info.json still answers.
      expect(JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8'))).toBeTypeOf('object');
    } finally {
      await unmount(mnt);
    }
    expect(daemonsFor(mnt)).toEqual([]);
  });
});

describe.skipIf(!ready)('hostile images through qcow-mount: files changing underneath, files left alone', () => {
  it('an image file that shrinks under a live mount gives EIO, not a crash', { timeout: 120_000 }, async () => {
    const img = scratch.path('shrinking.qcow2');
    fs.copyFileSync(abs(entry('base').file), img);
    fs.chmodSync(img, 0o644);
    const oracle = fs.readFileSync(abs(entry('base').oracles!.active!));
    const mnt = scratch.mountPoint('shrink');
    const log = scratch.path('shrink.log');
    scratch.mount(img, mnt, ['--log', log]);
    try {
      const pid = daemonPid(scratch, mnt)!;
      const fd = fs.openSync(path.join(mnt, 'active.raw'), 'r');
      try {
        const buf = Buffer.alloc(4096);
        readAtFd(fd, buf, 0);
        expect(buf.equals(oracle.subarray(0, 4096))).toBe(true);
        // Cut the file just past its first data clusters: guest data at 2 MiB, 4 MiB, 6 MiB (not read
        // yet, so not in the page cache) now lies past the end.
        fs.truncateSync(img, 0x5000 + 8 * 4096);
        for (const pos of [2 * 2 ** 20, 4 * 2 ** 20, 6 * 2 ** 20]) {
          expect(errnoOf(() => readAtFd(fd, buf, pos))).toBe('EIO');
        }
        expect(alive(pid)).toBe(true);
        // What is still in the file still reads.
        readAtFd(fd, buf, 4096);
        expect(buf.equals(oracle.subarray(4096, 8192))).toBe(true);
      } finally {
        fs.closeSync(fd);
      }
      expect(fs.readFileSync(log, 'utf8')).toMatch(/EIO.*shrinking\.qcow2/);
      expect(alive(pid)).toBe(true);
    } finally {
      await unmount(mnt);
    }
  });

  it('a heavy session leaves the bytes and mtimes of the image and its backing files unchanged', { timeout: 180_000 }, async () => {
    // A private copy of a chain (overlay -> qcow2 base) and of an image with snapshots.
    const work = scratch.path('untouched');
    fs.mkdirSync(work);
    const files = ['chain-top.qcow2', 'chain-base.qcow2', 'snap.qcow2'];
    for (const f of files) {
      fs.copyFileSync(abs(f), path.join(work, f));
      fs.chmodSync(path.join(work, f), 0o644);
    }
    const past = new Date('2020-01-02T03:04:05Z');
    for (const f of files) fs.utimesSync(path.join(work, f), past, past);
    const before = files.map((f) => ({ f, hash: sha256(path.join(work, f)), mtime: fs.statSync(path.join(work, f)).mtimeMs }));

    const mntChain = scratch.mountPoint('heavy-chain');
    const mntSnap = scratch.mountPoint('heavy-snap');
    scratch.mount(path.join(work, 'chain-top.qcow2'), mntChain);
    scratch.mount(path.join(work, 'snap.qcow2'), mntSnap);
    try {
      // Eight concurrent readers, each reading every file of both mounts end to end, twice, with
      // random positional reads in between.
      const targets = [path.join(mntChain, 'active.raw'), path.join(mntSnap, 'active.raw'), path.join(mntSnap, 'snapshots/s1.raw'), path.join(mntSnap, 'snapshots/s2.raw'), path.join(mntChain, 'info.json')];
      const code = `
        const fs = require('fs');
        const files = JSON.parse(process.argv[1]);
        let seed = Number(process.argv[2]);
        const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 4294967296);
        let bytes = 0;
        for (let round = 0; round < 2; round++) for (const f of files) {
          const fd = fs.openSync(f, 'r');
          const size = fs.fstatSync(fd).size;
          const buf = Buffer.alloc(131072);
          for (let p = 0; p < size; p += buf.length) bytes += fs.readSync(fd, buf, 0, buf.length, p);
          for (let i = 0; i < 200; i++) bytes += fs.readSync(fd, buf, 0, 1 + Math.floor(rnd() * buf.length), Math.floor(rnd() * size));
          fs.closeSync(fd);
        }
        process.stdout.write(String(bytes));
      `;
      const readers = Array.from({ length: 8 }, (_, i) =>
        new Promise<number>((resolve, reject) => {
          const c = spawn(process.execPath, ['-e', code, JSON.stringify(targets), String(i + 1)], { stdio: ['ignore', 'pipe', 'pipe'] });
          let out = '';
          let err = '';
          c.stdout.on('data', (d) => (out += d));
          c.stderr.on('data', (d) => (err += d));
          c.on('exit', (status) => (status === 0 ? resolve(Number(out)) : reject(new Error(`reader ${i} failed: ${err}`))));
        }),
      );
      const total = (await Promise.all(readers)).reduce((a, b) => a + b, 0);
      expect(total).toBeGreaterThan(8 * 2 * 3 * 8 * 2 ** 20);
    } finally {
      await unmount(mntChain);
      await unmount(mntSnap);
    }
    const after = files.map((f) => ({ f, hash: sha256(path.join(work, f)), mtime: fs.statSync(path.join(work, f)).mtimeMs }));
    expect(after).toEqual(before);
  });
});
