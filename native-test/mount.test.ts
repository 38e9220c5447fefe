/**
 * What a mounted image looks like from outside: names, modes, owners, sizes, times, statfs, info.json,
 * EROFS for every write, ENOENT for unknown names, EIO (and a log line) for a bad region while the rest
 * keeps working, and the -o / -d options.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesReady, loadManifest } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, compareRange, daemonPid, ensureBuilt, isMounted, mountInfoLine, waitFor } from './mount-support.js';

const ready = toolsAvailable('qemu-img', '/dev/fuse') && (fixturesReady() || process.env.CI === 'true');

let scratch: Scratch;
let mnt: string;
let image: string;

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('attrs');
  image = fixturePath(loadManifest().images.find((i) => i.name === 'savevm-c64k')!.image);
  mnt = scratch.mountPoint();
  scratch.mount(image, mnt);
});

afterAll(() => {
  if (!scratch) return;
  if (isMounted(mnt)) scratch.unmount(mnt);
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

interface Info {
  image: string;
  virtualSize: number;
  snapshots: { id: string; name: string; date: string; dateNanoseconds: number; vmClock: string; vmClockNs: string; diskSize: number; vmStateSize: number; icount: string | null; files: { raw: string; vmstate: string | null } }[];
}

function errnoOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  }
  return undefined;
}

describe.skipIf(!ready)('a mounted image', () => {
  it('shows active.raw, info.json and snapshots/ with modes 0444 / 0555 owned by the mounting user', () => {
    expect(fs.readdirSync(mnt).sort()).toEqual(['active.raw', 'info.json', 'snapshots']);
    const root = fs.statSync(mnt);
    expect(root.isDirectory()).toBe(true);
    expect(root.mode & 0o7777).toBe(0o555);
    expect(fs.statSync(path.join(mnt, 'snapshots')).mode & 0o7777).toBe(0o555);
    for (const f of ['active.raw', 'info.json']) {
      const st = fs.statSync(path.join(mnt, f));
      expect(st.isFile()).toBe(true);
      expect(st.mode & 0o7777).toBe(0o444);
      expect(st.uid).toBe(process.getuid!());
      expect(st.gid).toBe(process.getgid!());
    }
  });

  it('info.json names every snapshot file; sizes and mtimes match the image and the snapshot dates', () => {
    const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as Info;
    expect(info.image).toBe(fs.realpathSync(image));
    const imageStat = fs.statSync(image);
    const active = fs.statSync(path.join(mnt, 'active.raw'));
    expect(active.size).toBe(info.virtualSize);
    // fuse-native carries times in whole milliseconds: the image's mtime, rounded.
    expect(active.mtimeMs).toBe(Math.round(imageStat.mtimeMs));
    expect(fs.statSync(path.join(mnt, 'info.json')).mtimeMs).toBe(Math.round(imageStat.mtimeMs));
    expect(info.snapshots.length).toBe(3);
    for (const s of info.snapshots) {
      const raw = fs.statSync(path.join(mnt, s.files.raw));
      expect(raw.size).toBe(s.diskSize);
      expect(raw.mode & 0o7777).toBe(0o444);
      expect(raw.mtime.toISOString()).toBe(s.date);
      expect(s.date).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(Math.floor(s.dateNanoseconds / 1e6)).toBe(new Date(s.date).getUTCMilliseconds());
      expect(s.vmClock).toMatch(/^\d{2,}:\d\d:\d\d\.\d{3}$/);
      expect(s.vmClockNs).toMatch(/^\d+$/);
      if (s.vmStateSize > 0) {
        const vm = fs.statSync(path.join(mnt, s.files.vmstate!));
        expect(vm.size).toBe(s.vmStateSize);
        expect(vm.mtime.toISOString()).toBe(s.date);
      }
    }
    // `qemu-img snapshot -l` agrees on ids, names and VM state sizes.
    const qemu = JSON.parse(spawnSync('qemu-img', ['info', '--output=json', '-U', image], { encoding: 'utf8' }).stdout) as {
      snapshots: { id: string; name: string; 'vm-state-size': number; 'date-sec': number; 'date-nsec': number }[];
    };
    expect(info.snapshots.map((s) => [s.id, s.name, s.vmStateSize])).toEqual(qemu.snapshots.map((s) => [s.id, s.name, s['vm-state-size']]));
    expect(info.snapshots.map((s) => s.dateNanoseconds)).toEqual(qemu.snapshots.map((s) => s['date-nsec']));
  });

  it('refuses every write with EROFS', () => {
    const f = path.join(mnt, 'active.raw');
    expect(errnoOf(() => fs.writeFileSync(f, 'x'))).toBe('EROFS');
    expect(errnoOf(() => fs.openSync(f, 'r+'))).toBe('EROFS');
    expect(errnoOf(() => fs.openSync(f, 'a'))).toBe('EROFS');
    expect(errnoOf(() => fs.writeFileSync(path.join(mnt, 'new.txt'), 'x'))).toBe('EROFS');
    expect(errnoOf(() => fs.mkdirSync(path.join(mnt, 'dir')))).toBe('EROFS');
    expect(errnoOf(() => fs.rmdirSync(path.join(mnt, 'snapshots')))).toBe('EROFS');
    expect(errnoOf(() => fs.unlinkSync(f))).toBe('EROFS');
    expect(errnoOf(() => fs.renameSync(f, path.join(mnt, 'b.raw')))).toBe('EROFS');
    expect(errnoOf(() => fs.linkSync(f, path.join(mnt, 'b.raw')))).toBe('EROFS');
    expect(errnoOf(() => fs.symlinkSync('active.raw', path.join(mnt, 'b.raw')))).toBe('EROFS');
    expect(errnoOf(() => fs.chmodSync(f, 0o644))).toBe('EROFS');
    expect(errnoOf(() => fs.chownSync(f, 1, 1))).toBe('EROFS');
    expect(errnoOf(() => fs.utimesSync(f, new Date(), new Date()))).toBe('EROFS');
    expect(errnoOf(() => fs.truncateSync(f, 0))).toBe('EROFS');
    const r = spawnSync('setfattr', ['-n', 'user.x', '-v', '1', f], { encoding: 'utf8' });
    if (!r.error) expect(r.stderr).toMatch(/Read-only file system/);
    // and the image file itself is untouched
    expect(fs.statSync(f).size).toBe(fs.statSync(f).size);
  });

  it('answers ENOENT for unknown names', () => {
    for (const p of ['nope', 'snapshots/nope.raw', 'snapshots/vm1', 'active.raw.bak', 'snapshots/../nope']) {
      expect(errnoOf(() => fs.statSync(path.join(mnt, p))), p).toBe('ENOENT');
    }
    expect(errnoOf(() => fs.readFileSync(path.join(mnt, 'missing.raw')))).toBe('ENOENT');
    expect(errnoOf(() => fs.readdirSync(path.join(mnt, 'active.raw')))).toBe('ENOTDIR');
  });

  it('answers statfs (df): read-only, sized to the files it holds', () => {
    const st = fs.statfsSync(mnt);
    expect(st.blocks * st.bsize).toBeGreaterThan(0);
    const df = spawnSync('df', ['-B1', mnt], { encoding: 'utf8' });
    expect(df.status, df.stderr).toBe(0);
    expect(df.stdout).toContain(mnt);
    expect(mountInfoLine(mnt)).toMatch(/ ro[, ].* - fuse\.qcow-mount /);
  });

  it('keeps the image file unchanged and open read-only', () => {
    const pid = daemonPid(scratch, mnt)!;
    const fds = fs.readdirSync(`/proc/${pid}/fd`);
    const imageFds = fds.filter((fd) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === fs.realpathSync(image);
      } catch {
        return false;
      }
    });
    expect(imageFds.length).toBeGreaterThan(0);
    for (const fd of imageFds) {
      const flags = Number.parseInt(/flags:\s*(\d+)/.exec(fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1]!, 8);
      expect(flags & 3).toBe(0); // O_RDONLY
    }
  });
});

describe.skipIf(!ready)('a bad region while serving', () => {
  it('fails that read with EIO and a log line; everything else keeps working', () => {
    const fx = loadManifest().images.find((i) => i.name === 'v3-c64k')!;
    const bad = scratch.path('bad-l2.qcow2');
    fs.copyFileSync(fixturePath(fx.image), bad);
    // Point L1 entry 0 at an L2 table past the end of the file.
    const fd = fs.openSync(bad, 'r+');
    const header = Buffer.alloc(104);
    fs.readSync(fd, header, 0, 104, 0);
    const l1 = Number(header.readBigUInt64BE(40));
    const size = fs.fstatSync(fd).size;
    const entry = Buffer.alloc(8);
    entry.writeBigUInt64BE((1n << 63n) | BigInt((Math.floor(size / 65536) + 100) * 65536));
    fs.writeSync(fd, entry, 0, 8, l1);
    fs.closeSync(fd);

    const m = scratch.mountPoint('bad');
    const log = scratch.path('bad.log');
    scratch.mount(bad, m, ['--log', log]);
    try {
      expect(errnoOf(() => fs.readFileSync(path.join(m, 'active.raw')))).toBe('EIO');
      const text = fs.readFileSync(log, 'utf8');
      // One line per bad region: the kernel may send readahead requests for the table's range together,
      // and whichever reaches the daemon first is the one logged.
      expect(text).toMatch(/EIO: read \/active\.raw at offset \d+ \(\+\d+\): .*bad-l2\.qcow2: L2 table at 0x[0-9a-f]+ .*past the end of the file/);
      expect(text.match(/EIO: read/g)).toHaveLength(1);
      // The snapshot's own L1 table is intact: it reads exactly as QEMU's snapshot view.
      const snapView = fx.views.find((v) => v.view === 'snapshot')!;
      expect(compareRange(path.join(m, 'snapshots', 's1.raw'), fixturePath(snapView.oracle!), 0, snapView.size)).toBe(-1);
      expect(fs.readFileSync(path.join(m, 'info.json'), 'utf8')).toContain('"virtualSize"');
      expect(errnoOf(() => fs.readFileSync(path.join(m, 'active.raw')))).toBe('EIO'); // still serving, still EIO
    } finally {
      expect(scratch.unmount(m).status).toBe(0);
    }
  });
});

describe.skipIf(!ready)('mount options', () => {
  it('-o uid=N,gid=N sets the owner; allow_other reaches the kernel; ro is accepted; cache sizes too', () => {
    const m = scratch.mountPoint('opts');
    scratch.mount(image, m, ['-o', 'uid=4321,gid=765', '-o', 'allow_other,ro,l2_cache_size=4M', '--cluster-cache', '8M']);
    try {
      for (const p of ['', 'active.raw', 'snapshots', 'info.json']) {
        const st = fs.statSync(path.join(m, p));
        expect([st.uid, st.gid], p).toEqual([4321, 765]);
      }
      expect(mountInfoLine(m)).toMatch(/allow_other/);
      const fx = loadManifest().images.find((i) => i.name === 'savevm-c64k')!;
      expect(compareRange(path.join(m, 'active.raw'), fixturePath(fx.views[0]!.oracle!), 0, fx.views[0]!.size)).toBe(-1);
    } finally {
      expect(scratch.unmount(m).status).toBe(0);
    }
  });

  it('-d logs every FUSE request to the log file', async () => {
    const m = scratch.mountPoint('debug');
    const log = scratch.path('debug.log');
    scratch.mount(image, m, ['-d', '--log', log]);
    try {
      fs.statSync(path.join(m, 'info.json'));
      fs.readFileSync(path.join(m, 'info.json'));
      expect(errnoOf(() => fs.statSync(path.join(m, 'no-such-file')))).toBe('ENOENT');
      await waitFor('the log lines', () => /read\(\/info\.json/.test(fs.readFileSync(log, 'utf8')));
      const text = fs.readFileSync(log, 'utf8');
      expect(text).toMatch(/getattr\(\/info\.json\) -> 0/);
      expect(text).toMatch(/open\(\/info\.json, \d+\) -> 0 fh=\d+/);
      expect(text).toMatch(/read\(\/info\.json, \d+, <buf \d+>, \d+, 0\) -> \d+/);
      expect(text).toMatch(/getattr\(\/no-such-file\) -> ENOENT/);
    } finally {
      expect(scratch.unmount(m).status).toBe(0);
    }
  });
});
