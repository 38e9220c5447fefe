/**
 * The FUSE operations, called directly (no kernel, no fuse-native): tree, attributes, reads, fd table,
 * errno mapping and EROFS for every write-like call.
 */
import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { openImageSync, QcowError, type Disk, type QcowImage } from '../src/index.js';
import { describeImage } from '../src/info/describe.js';
import { ERRNO, errnoFor } from '../src/mount/errno.js';
import { FdTable } from '../src/mount/fd-table.js';
import { createFuseOps, type FuseStat, type FuseStatfs, type MountOps } from '../src/mount/fuse-ops.js';
import { MountTree, buildMountTree } from '../src/mount/tree.js';
import { fixturePath, fixturesReady, loadManifest } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const IMAGE_TIME = new Date('2024-05-06T07:08:09.123Z');
const SNAP_TIME = new Date('2023-01-02T03:04:05.678Z');

/** A disk whose byte at offset i is (i * 7) & 0xff; reads inside [badStart, badEnd) fail with EIO. */
function patternDisk(size: number, bad?: [number, number]): Disk {
  const disk: Disk = {
    size,
    readSync(into, position) {
      if (position >= size) return 0;
      const n = Math.min(into.length, size - position);
      if (bad && position < bad[1] && position + n > bad[0]) {
        throw new QcowError('EIO', '/img/x.qcow2', `L2 table at 0x50000 extends past the end of the file (size 4096)`);
      }
      for (let i = 0; i < n; i++) into[i] = ((position + i) * 7) & 0xff;
      return n;
    },
    read(into, position) {
      return Promise.resolve(disk.readSync(into, position));
    },
    extents: () => [],
  };
  return disk;
}

function smallTree(): MountTree {
  const tree = new MountTree(IMAGE_TIME);
  tree.addDisk(tree.root, 'active.raw', patternDisk(1_000_003, [600_000, 600_100]), IMAGE_TIME, 'active disk');
  tree.addBytes(tree.root, 'info.json', Buffer.from('{"hello":1}\n'), IMAGE_TIME);
  const snaps = tree.mkdir(tree.root, 'snapshots', IMAGE_TIME);
  tree.addDisk(snaps, 'a.raw', patternDisk(5000), SNAP_TIME, 'snapshot a');
  tree.addDisk(snaps, 'a.vmstate', patternDisk(77), SNAP_TIME, 'snapshot a VM state');
  return tree;
}

function call<T>(fn: (cb: (code: number, value?: T) => void) => void): { code: number; value?: T } {
  let out: { code: number; value?: T } | undefined;
  fn((code, value) => {
    out = { code, value };
  });
  if (!out) throw new Error('callback not called synchronously');
  return out;
}

function makeOps(tree = smallTree(), extra: { uid?: number; gid?: number; debug?: boolean } = {}): { ops: MountOps; logs: string[] } {
  const logs: string[] = [];
  const ops = createFuseOps(tree, { uid: extra.uid ?? 1234, gid: extra.gid ?? 567, debug: extra.debug, logger: { log: (l) => logs.push(l) } });
  return { ops, logs };
}

describe('attributes', () => {
  const { ops } = makeOps();
  const stat = (p: string) => call<FuseStat>((cb) => ops.getattr(p, cb));

  it('folders are 0555, files 0444, owned by the given uid/gid', () => {
    for (const p of ['/', '/snapshots']) {
      const { code, value } = stat(p);
      expect(code).toBe(0);
      expect(value!.mode).toBe(fs.constants.S_IFDIR | 0o555);
      expect(value!.uid).toBe(1234);
      expect(value!.gid).toBe(567);
    }
    for (const p of ['/active.raw', '/info.json', '/snapshots/a.raw', '/snapshots/a.vmstate']) {
      expect(stat(p).value!.mode).toBe(fs.constants.S_IFREG | 0o444);
    }
    expect(stat('/').value!.nlink).toBe(3); // . , .. and snapshots/..
  });

  it('sizes are exact and times follow the image and the snapshot dates', () => {
    expect(stat('/active.raw').value).toMatchObject({ size: 1_000_003, mtime: IMAGE_TIME, blocks: Math.ceil(1_000_003 / 512) });
    expect(stat('/info.json').value).toMatchObject({ size: 12, mtime: IMAGE_TIME });
    expect(stat('/snapshots/a.raw').value).toMatchObject({ size: 5000, mtime: SNAP_TIME, ctime: SNAP_TIME, atime: SNAP_TIME });
    expect(stat('/snapshots/a.vmstate').value!.size).toBe(77);
  });

  it('unknown paths are ENOENT', () => {
    for (const p of ['/nope', '/snapshots/b.raw', '/active.raw/x', '/snapshots/', '']) expect(stat(p).code).toBe(ERRNO.ENOENT);
  });

  it('readdir lists . and .. and the children with their stats', () => {
    let names: string[] | undefined;
    let stats: FuseStat[] | undefined;
    ops.readdir('/', (code, n, s) => {
      expect(code).toBe(0);
      names = n;
      stats = s;
    });
    expect(names).toEqual(['.', '..', 'active.raw', 'info.json', 'snapshots']);
    expect(stats).toHaveLength(5);
    ops.readdir('/snapshots', (_code, n) => (names = n));
    expect(names).toEqual(['.', '..', 'a.raw', 'a.vmstate']);
    expect(call((cb) => ops.readdir('/active.raw', cb)).code).toBe(ERRNO.ENOTDIR);
    expect(call((cb) => ops.readdir('/missing', cb)).code).toBe(ERRNO.ENOENT);
  });

  it('statfs answers: read-only, blocks covering every file', () => {
    const { code, value } = call<FuseStatfs>((cb) => ops.statfs('/', cb));
    expect(code).toBe(0);
    expect(value!.flag & 1).toBe(1);
    expect(value!.blocks * value!.frsize).toBeGreaterThanOrEqual(1_000_003 + 12 + 5000 + 77);
    expect(value!.files).toBe(6);
    expect(value!.namemax).toBe(255);
  });
});

describe('open, read, release', () => {
  it('reads into the buffer it is given, short at the end, 0 past it', () => {
    const { ops } = makeOps();
    const { code, value: fh } = call<number>((cb) => ops.open('/active.raw', fs.constants.O_RDONLY, cb));
    expect(code).toBe(0);
    expect(fh).toBeGreaterThan(0);
    const buf = Buffer.alloc(131072, 0xee);
    let n = -1;
    ops.read('/active.raw', fh!, buf, 4096, 1000, (r) => (n = r));
    expect(n).toBe(4096);
    for (let i = 0; i < 4096; i++) expect(buf[i]).toBe(((1000 + i) * 7) & 0xff);
    expect(buf[4096]).toBe(0xee); // nothing written past len
    ops.read('/active.raw', fh!, buf, 131072, 1_000_000, (r) => (n = r));
    expect(n).toBe(3);
    ops.read('/active.raw', fh!, buf, 131072, 1_000_003, (r) => (n = r));
    expect(n).toBe(0);
    ops.read('/active.raw', fh!, buf, 10, 5e9, (r) => (n = r));
    expect(n).toBe(0);
    expect(call((cb) => ops.release('/active.raw', fh!, cb)).code).toBe(0);
    expect(ops.fds.size).toBe(0);
  });

  it('reads info.json bytes', () => {
    const { ops } = makeOps();
    const fh = call<number>((cb) => ops.open('/info.json', 0, cb)).value!;
    const buf = Buffer.alloc(100);
    let n = -1;
    ops.read('/info.json', fh, buf, 100, 2, (r) => (n = r));
    expect(buf.subarray(0, n).toString()).toBe('hello":1}\n');
  });

  it('refuses opening for writing or truncating with EROFS, unknown paths with ENOENT', () => {
    const { ops } = makeOps();
    const { O_WRONLY, O_RDWR, O_TRUNC, O_APPEND } = fs.constants;
    for (const flags of [O_WRONLY, O_RDWR, O_TRUNC, O_WRONLY | O_APPEND]) {
      expect(call((cb) => ops.open('/active.raw', flags, cb)).code, `flags ${flags}`).toBe(ERRNO.EROFS);
    }
    expect(call((cb) => ops.open('/nope.raw', 0, cb)).code).toBe(ERRNO.ENOENT);
    expect(ops.fds.size).toBe(0);
  });

  it('a bad region fails that read with EIO and one log line naming path, offset and problem; others still work', () => {
    const { ops, logs } = makeOps();
    const fh = call<number>((cb) => ops.open('/active.raw', 0, cb)).value!;
    const buf = Buffer.alloc(65536);
    let n = 0;
    ops.read('/active.raw', fh, buf, 65536, 589_824, (r) => (n = r));
    expect(n).toBe(ERRNO.EIO);
    expect(logs).toHaveLength(1);
    expect(logs[0]).toContain('/active.raw');
    expect(logs[0]).toContain('589824');
    expect(logs[0]).toContain('L2 table at 0x50000 extends past the end of the file');
    expect(ops.failedReads()).toBe(1);
    ops.read('/active.raw', fh, buf, 65536, 0, (r) => (n = r));
    expect(n).toBe(65536);
  });

  it('an unknown fh falls back to the path; a path that is no file is EBADF', () => {
    const { ops } = makeOps();
    const buf = Buffer.alloc(10);
    let n = 0;
    ops.read('/snapshots/a.vmstate', 99, buf, 10, 70, (r) => (n = r));
    expect(n).toBe(7);
    ops.read('/snapshots', 99, buf, 10, 0, (r) => (n = r));
    expect(n).toBe(ERRNO.EBADF);
  });

  it('debug mode logs every request and its answer', () => {
    const { ops, logs } = makeOps(smallTree(), { debug: true });
    call((cb) => ops.getattr('/nope', cb));
    call((cb) => ops.open('/info.json', 0, cb));
    expect(logs[0]).toMatch(/^getattr\(\/nope\) -> ENOENT/);
    expect(logs[1]).toMatch(/^open\(\/info\.json, 0\) -> 0 fh=1/);
  });
});

describe('every write-like call is EROFS', () => {
  const { ops } = makeOps();
  const buf = Buffer.from('x');
  const cases: [string, (cb: (code: number) => void) => void][] = [
    ['write', (cb) => ops.write('/active.raw', 1, buf, 1, 0, cb)],
    ['truncate', (cb) => ops.truncate('/active.raw', 0, cb)],
    ['ftruncate', (cb) => ops.ftruncate('/active.raw', 1, 0, cb)],
    ['create', (cb) => ops.create('/new', 0o644, cb)],
    ['mknod', (cb) => ops.mknod('/new', 0o644, 0, cb)],
    ['mkdir', (cb) => ops.mkdir('/dir', 0o755, cb)],
    ['rmdir', (cb) => ops.rmdir('/snapshots', cb)],
    ['unlink', (cb) => ops.unlink('/active.raw', cb)],
    ['rename', (cb) => ops.rename('/active.raw', '/b', cb)],
    ['link', (cb) => ops.link('/active.raw', '/b', cb)],
    ['symlink', (cb) => ops.symlink('/active.raw', '/b', cb)],
    ['chmod', (cb) => ops.chmod('/active.raw', 0o777, cb)],
    ['chown', (cb) => ops.chown('/active.raw', 0, 0, cb)],
    ['utimens', (cb) => ops.utimens('/active.raw', 0, 0, cb)],
    ['setxattr', (cb) => ops.setxattr('/active.raw', 'user.x', buf, 0, 0, cb)],
    ['removexattr', (cb) => ops.removexattr('/active.raw', 'user.x', cb)],
  ];
  it.each(cases)('%s', (_name, fn) => {
    expect(call(fn).code).toBe(ERRNO.EROFS);
  });
});

describe('errno mapping', () => {
  it('maps QcowError codes; anything else is EIO', () => {
    expect(errnoFor(new QcowError('EIO', 'f', 'x'))).toBe(ERRNO.EIO);
    expect(errnoFor(new QcowError('EBADIMAGE', 'f', 'x'))).toBe(ERRNO.EIO);
    expect(errnoFor(new QcowError('ENOENT', 'f', 'x'))).toBe(ERRNO.ENOENT);
    expect(errnoFor(new QcowError('EACCES', 'f', 'x'))).toBe(ERRNO.EACCES);
    expect(errnoFor(new TypeError('bug'))).toBe(ERRNO.EIO);
    expect(ERRNO.EROFS).toBe(-30);
    expect(ERRNO.ENOENT).toBe(-2);
    expect(ERRNO.EIO).toBe(-5);
  });
});

describe('fd table', () => {
  it('hands out the lowest free number from 1', () => {
    const t = new FdTable();
    const node = smallTree().files()[0]!;
    expect([t.allocate(node), t.allocate(node), t.allocate(node)]).toEqual([1, 2, 3]);
    expect(t.release(2)).toBe(true);
    expect(t.release(2)).toBe(false);
    expect(t.release(1)).toBe(true);
    expect(t.allocate(node)).toBe(1);
    expect(t.allocate(node)).toBe(2);
    expect(t.get(3)).toBe(node);
    expect(t.get(9)).toBeUndefined();
  });
});

const ready = toolsAvailable('qemu-img') && fixturesReady();
const opened: QcowImage[] = [];
afterAll(() => opened.forEach((i) => i.close()));

describe.skipIf(!ready)('the tree of a real image', () => {
  const open = (name: string) => {
    const entry = loadManifest().images.find((i) => i.name === name)!;
    const image = openImageSync(fixturePath(entry.image));
    opened.push(image);
    return image;
  };

  it('has active.raw, info.json and one .raw per snapshot plus .vmstate where VM state was saved', () => {
    const image = open('savevm-c64k');
    const tree = buildMountTree(image);
    const info = describeImage(image, undefined, { memory: {} });
    const paths = tree.files().map((f) => f.path);
    expect(paths.slice(0, 2)).toEqual(['/active.raw', '/info.json']);
    expect(paths.filter((p) => p.endsWith('.raw'))).toHaveLength(image.snapshots.length + 1);
    for (const s of info.snapshots) {
      const raw = tree.lookup(`/${s.files.raw}`)!;
      expect(raw.kind).toBe('disk');
      expect(raw.kind === 'disk' && raw.size).toBe(s.diskSize);
      expect(raw.mtime.toISOString()).toBe(s.date);
      if (s.vmStateSize > 0) {
        const vm = tree.lookup(`/${s.files.vmstate}`)!;
        expect(vm.kind === 'disk' && vm.size).toBe(s.vmStateSize);
      } else expect(s.files.vmstate).toBeNull();
      for (const f of [s.files.ram, s.files.core]) if (f) expect(tree.lookup(`/${f}`)?.kind).toBe('disk');
    }
    const json = tree.lookup('/info.json')!;
    expect(json.kind === 'bytes' && JSON.parse(json.bytes.toString())).toEqual(JSON.parse(JSON.stringify(info)));
  });

  it('gives every snapshot of the name-clash fixture its own file', () => {
    const image = open('snapshot-names');
    const tree = buildMountTree(image);
    const snaps = tree.lookup('/snapshots')!;
    expect(snaps.kind === 'dir' && [...snaps.children.keys()].filter((n) => n.endsWith('.raw'))).toHaveLength(image.snapshots.length);
  });
});
