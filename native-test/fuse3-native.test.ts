/**
 * The native FUSE addon by itself: a small tree (a disk file backed by a host file, an in-memory file,
 * a folder) mounted through native/src/fuse3.c, read natively from a published map and through
 * JavaScript, with readers racing the map's fill, and ended by unmounting in the ways a user can.
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Disk } from '../src/disk/disk.js';
import { createFuseOps } from '../src/mount/fuse-ops.js';
import { type NativeMount, type ViewMapper, mountNative, nativeFuseAvailable, nativeFuseProblem } from '../src/mount/fuse3-native.js';
import { type DiskNode, MountTree } from '../src/mount/tree.js';
import { QcowError } from '../src/errors.js';
import { IN_CI, toolsAvailable } from '../test/support/tools.js';
import { Scratch, isMounted, waitFor } from './mount-support.js';

const run = promisify(execFile);
const ready = toolsAvailable('fusermount3', '/dev/fuse') && (nativeFuseAvailable() || IN_CI);
if (IN_CI && !nativeFuseAvailable()) throw new Error(`CI=true and ${nativeFuseProblem()}`);

const CLUSTER_BITS = 16;
const CLUSTER = 1 << CLUSTER_BITS;
const TABLE_BITS = 4; // 16 clusters (1 MiB) per published table
const SIZE = 6 * 1024 * 1024 + 12345; // not a whole cluster: the last read is short
const ZERO_FROM = 2 * 1024 * 1024; // [2 MiB, 3 MiB) is zeros in the host file and published as zeros
const ZERO_TO = 3 * 1024 * 1024;

let scratch: Scratch;
let hostPath: string;
let host: Buffer;
let fd: number;

/** A disk that reads the host file itself: what JavaScript answers with. */
function fileDisk(size: number, readFd: number, onRead?: () => void): Disk {
  return {
    size,
    readSync(into, position) {
      onRead?.();
      const n = Math.max(0, Math.min(into.length, size - position));
      let done = 0;
      while (done < n) {
        const r = fs.readSync(readFd, into, done, n - done, position + done);
        if (r === 0) break;
        done += r;
      }
      return n;
    },
    read(into, position) {
      return Promise.resolve(this.readSync(into, position));
    },
    extents: () => [],
  };
}

/** Publishes the whole table around each JS read: data clusters at their own offset, the zero range as zeros. */
function identityMapper(): ViewMapper & { tablesFilled: number } {
  const per = 1 << TABLE_BITS;
  const filled = new Set<number>();
  const mapper = {
    clusterBits: CLUSTER_BITS,
    tableBits: TABLE_BITS,
    tablesFilled: 0,
    fill(position: number, length: number, publish: (first: number, entries: Float64Array, slot: number) => boolean) {
      const firstTable = Math.floor(position / CLUSTER / per);
      const lastTable = Math.floor((position + length - 1) / CLUSTER / per);
      for (let t = firstTable; t <= lastTable; t++) {
        if (filled.has(t)) continue;
        filled.add(t);
        mapper.tablesFilled++;
        const entries = new Float64Array(per);
        for (let i = 0; i < per; i++) {
          const c = t * per + i;
          const at = c * CLUSTER;
          entries[i] = at >= ZERO_FROM && at < ZERO_TO ? -2 : at;
        }
        publish(t * per, entries, 0);
      }
    },
  };
  return mapper;
}

interface Mounted {
  mnt: string;
  m: NativeMount;
  mapper: ReturnType<typeof identityMapper>;
  disk: DiskNode;
  jsReads: () => number;
  log: string[];
}

async function mountTree(options: { map?: boolean; threads?: number } = {}): Promise<Mounted> {
  const mnt = scratch.mountPoint();
  const mtime = new Date('2024-05-06T07:08:09Z');
  const tree = new MountTree(mtime);
  let jsReads = 0;
  const disk = tree.addDisk(tree.root, 'disk.raw', fileDisk(SIZE, fd, () => jsReads++), mtime, 'test disk');
  tree.addBytes(tree.root, 'info.json', Buffer.from('{"hello": "world"}\n'), mtime);
  const dir = tree.mkdir(tree.root, 'snapshots', mtime);
  tree.addDisk(dir, 'unmapped.raw', fileDisk(SIZE, fd), mtime, 'unmapped disk');
  const good = fileDisk(SIZE, fd);
  const bad: Disk = {
    ...good,
    readSync(into, position) {
      if (position < 2 << 20 && position + into.length > 1 << 20) throw new QcowError('EIO', 'bad.img', 'a bad region');
      return good.readSync(into, position);
    },
  };
  tree.addDisk(dir, 'bad.raw', bad, mtime, 'bad disk');
  const log: string[] = [];
  const logger = { log: (l: string) => log.push(l) };
  const ops = createFuseOps(tree, { uid: 0, gid: 0, logger });
  const mapper = identityMapper();
  const m = await mountNative(mnt, tree, {
    allowOther: false,
    fsname: hostPath,
    uid: 0,
    gid: 0,
    logger,
    threads: options.threads ?? 3,
    hostFds: [fd],
    mapperFor: (node) => (options.map !== false && node.path === '/disk.raw' ? mapper : undefined),
    read: ops.read.bind(ops),
    statfs: { bsize: 131072, frsize: 4096, blocks: 100, files: 5, namemax: 255 },
  });
  return { mnt, m, mapper, disk, jsReads: () => jsReads, log };
}

/** Reads a whole file in another process (the JS thread must stay free to answer JS reads). */
async function catFile(file: string, bs = '1M', extra: string[] = []): Promise<Buffer> {
  const out = await run('dd', [`if=${file}`, `bs=${bs}`, 'status=none', ...extra], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 });
  return out.stdout;
}

async function unmount(mt: Mounted): Promise<void> {
  if (isMounted(mt.mnt)) await run('fusermount3', ['-u', mt.mnt]);
  await mt.m.ended;
}

beforeAll(() => {
  scratch = new Scratch('fuse3');
  hostPath = scratch.path('host.bin');
  host = randomBytes(SIZE);
  host.fill(0, ZERO_FROM, ZERO_TO);
  fs.writeFileSync(hostPath, host);
  fd = fs.openSync(hostPath, 'r');
});

afterAll(() => {
  if (fd !== undefined) fs.closeSync(fd);
  scratch?.cleanUp();
  scratch?.remove();
});

describe.skipIf(!ready)('native FUSE addon', () => {
  let mt: Mounted | undefined;
  afterEach(async () => {
    if (mt && isMounted(mt.mnt)) await unmount(mt);
    mt = undefined;
  });

  it('mounts the tree with our type, source and options', async () => {
    mt = await mountTree();
    const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mt!.mnt)!;
    expect(line).toContain(' - fuse.qcow-mount ');
    expect(line).toContain(hostPath);
    expect(line.split(' ')[5]).toMatch(/^ro\b/);
    const ls = (await run('ls', ['-la', '--time-style=+%s', mt.mnt])).stdout;
    expect(ls).toMatch(new RegExp(`-r--r--r-- +1 root root +${SIZE} 1714979289 disk\\.raw`));
    expect(ls).toMatch(/-r--r--r-- +1 root root +19 1714979289 info\.json/);
    expect(ls).toMatch(/dr-xr-xr-x +2 root root .* snapshots/);
    expect((await run('ls', [path.join(mt.mnt, 'snapshots')])).stdout.trim().split('\n')).toEqual(['bad.raw', 'unmapped.raw']);
    expect((await run('cat', [path.join(mt.mnt, 'info.json')])).stdout).toBe('{"hello": "world"}\n');
    await expect(run('cat', [path.join(mt.mnt, 'nothing')])).rejects.toThrow(/No such file/);
    await expect(run('sh', ['-c', `echo x > ${mt.mnt}/disk.raw`])).rejects.toThrow(/Read-only file system/);
    await expect(run('touch', [`${mt.mnt}/new`])).rejects.toThrow(/Read-only file system/);
    const df = (await run('stat', ['-f', '-c', '%S %b', mt.mnt])).stdout.trim();
    expect(df).toBe('4096 100');
    // The bdi's readahead was raised so the kernel sends requests of up to max_write.
    const dev = fs.statSync(mt.mnt).dev;
    const bdi = `/sys/class/bdi/${Math.floor(dev / 256) & 0xfff}:${(dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00)}/read_ahead_kb`;
    expect(fs.readFileSync(bdi, 'utf8').trim()).toBe('1024');
  });

  it('serves the bytes through JS first, then natively from the map it filled', async () => {
    mt = await mountTree();
    const file = path.join(mt.mnt, 'disk.raw');
    expect((await catFile(file)).equals(host)).toBe(true);
    const afterFirst = mt.m.stats();
    expect(afterFirst.jsReads).toBeGreaterThan(0);
    expect(mt.mapper.tablesFilled).toBe(7);
    // The page cache holds the file now: the second pass goes around it.
    const viaDirect = await catFile(file, '1M', ['iflag=direct']).catch(() => undefined);
    const second = viaDirect ?? (await catFile(file));
    expect(second.equals(host)).toBe(true);
    if (viaDirect) {
      const s = mt.m.stats();
      expect(s.jsReads).toBe(afterFirst.jsReads);
      // Counted from the first pass's end: a request of it that came after a table was published
      // was already served natively.
      expect(s.nativeReads).toBeGreaterThan(afterFirst.nativeReads);
      expect(s.nativeBytes - afterFirst.nativeBytes).toBe(SIZE);
    }
    // The unmapped file always goes through JS, with the same bytes.
    expect((await catFile(path.join(mt.mnt, 'snapshots/unmapped.raw'), '4k')).equals(host)).toBe(true);
  });

  it('serves odd-sized reads across clusters, tables, zeros and the end natively', async () => {
    mt = await mountTree();
    const per = 1 << TABLE_BITS;
    for (let t = 0; t * per * CLUSTER < SIZE; t++) mt.mapper.fill(t * per * CLUSTER, 1, (first, entries, slot) => mt!.m.publish(mt!.disk, first, entries, slot));
    const before = mt.m.stats();
    const file = path.join(mt.mnt, 'disk.raw');
    const spots = [0, 1, CLUSTER - 3, ZERO_FROM - 5000, ZERO_TO - 70000, SIZE - 9000, SIZE - 1, SIZE + 10];
    const script = `
      const fs = require('fs'); const fd = fs.openSync(${JSON.stringify(file)}, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
      const out = [];
      for (const [pos, len] of ${JSON.stringify(spots.map((p, i) => [p, [4096, 100000, 1 << 20, 3 * CLUSTER + 17][i % 4]]))}) {
        const b = Buffer.alloc(len); const n = fs.readSync(fd, b, 0, len, pos); out.push(b.subarray(0, n).toString('base64'));
      }
      process.stdout.write(JSON.stringify(out));`;
    const got = JSON.parse((await run(process.execPath, ['-e', script], { maxBuffer: 64 << 20 })).stdout) as string[];
    spots.forEach((p, i) => {
      const len = [4096, 100000, 1 << 20, 3 * CLUSTER + 17][i % 4]!;
      expect(Buffer.from(got[i]!, 'base64').equals(host.subarray(Math.min(p, SIZE), Math.min(p + len, SIZE))), `read at ${p} +${len}`).toBe(true);
    });
    const after = mt.m.stats();
    expect(after.jsReads).toBe(before.jsReads);
    expect(after.nativeReads).toBeGreaterThan(before.nativeReads);
  });

  it('gives every reader the right bytes while the map is being filled', async () => {
    mt = await mountTree({ threads: 4 });
    const file = path.join(mt.mnt, 'disk.raw');
    // 8 processes each read 300 random 4 KiB-aligned pieces (O_DIRECT: no page cache between them).
    const script = `
      const fs = require('fs'); const crypto = require('crypto');
      const fd = fs.openSync(process.argv[1], fs.constants.O_RDONLY | fs.constants.O_DIRECT);
      let seed = Number(process.argv[2]); const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
      const out = [];
      for (let i = 0; i < 300; i++) {
        const pos = Math.floor(rnd() * ${SIZE} / 4096) * 4096; const len = 4096 * (1 + Math.floor(rnd() * 40));
        const b = Buffer.alloc(len); const n = fs.readSync(fd, b, 0, len, pos);
        out.push([pos, n, crypto.createHash('sha1').update(b.subarray(0, n)).digest('hex')]);
      }
      process.stdout.write(JSON.stringify(out));`;
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => run(process.execPath, ['-e', script, file, String(i + 1)])));
    const { createHash } = await import('node:crypto');
    let checked = 0;
    for (const r of results) {
      for (const [pos, n, sum] of JSON.parse(r.stdout) as [number, number, string][]) {
        const want = host.subarray(pos, Math.min(pos + n, SIZE));
        expect(n).toBe(want.length);
        expect(sum).toBe(createHash('sha1').update(want).digest('hex'));
        checked++;
      }
    }
    expect(checked).toBe(2400);
    const s = mt.m.stats();
    expect(s.nativeReads).toBeGreaterThan(0);
    expect(s.jsReads).toBeGreaterThan(0);
  });

  it('answers a failed JS read with EIO and a log line, and keeps serving', async () => {
    mt = await mountTree();
    const bad = path.join(mt.mnt, 'snapshots/bad.raw');
    await expect(catFile(bad, '64k', ['skip=16', 'count=1'])).rejects.toThrow(/Input\/output error/);
    expect(mt.log.join('\n')).toMatch(/EIO: read \/snapshots\/bad\.raw at offset 1048576 .*bad\.img: a bad region/);
    expect((await catFile(bad, '64k', ['count=1'])).equals(host.subarray(0, 65536))).toBe(true);
  });

  it('ends the session when unmounted by fusermount3 -u, umount, or lazily', async () => {
    for (const how of [['fusermount3', '-u'], ['umount'], ['umount', '-l']]) {
      const m = await mountTree();
      expect(isMounted(m.mnt)).toBe(true);
      await run(how[0]!, [...how.slice(1), m.mnt]);
      await m.m.ended;
      expect(m.m.sessionOpen()).toBe(false);
      expect(isMounted(m.mnt)).toBe(false);
    }
  });

  it('a lazily detached mount serves open files until they are closed', async () => {
    const m = await mountTree();
    const file = path.join(m.mnt, 'disk.raw');
    const child = execFile(process.execPath, ['-e', `
      const fs = require('fs'); const fd = fs.openSync(${JSON.stringify(file)}, 'r');
      process.stdout.write('open\\n');
      process.stdin.once('data', () => { const b = Buffer.alloc(65536); fs.readSync(fd, b, 0, b.length, 65536); process.stdout.write(b.toString('hex') + '\\n'); fs.closeSync(fd); process.exit(0); });`]);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('the reader to open the file', () => out.includes('open\n'), 10_000);
    execFileSync('umount', ['-l', m.mnt]);
    expect(isMounted(m.mnt)).toBe(false);
    expect(m.m.sessionOpen()).toBe(true);
    child.stdin!.write('go\n');
    await waitFor('the reader to finish', () => out.split('\n').length >= 3, 10_000);
    expect(out.split('\n')[1]).toBe(host.subarray(65536, 131072).toString('hex'));
    await m.m.ended;
    expect(m.m.sessionOpen()).toBe(false);
  });
});
