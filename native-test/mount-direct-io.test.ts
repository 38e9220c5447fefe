/**
 * `-o direct_io`: files opened for direct I/O on the native back-end. Every view still equals QEMU's
 * output, read through JavaScript (first pass) and the worker threads (second), in big and odd-sized
 * buffered reads; nothing lands in the mount's page cache; st_blksize is 1 MiB; mmap works, shared too
 * (the daemon asks the kernel for FUSE_DIRECT_IO_ALLOW_MMAP); a guest ext4 loop-mounts; compat refuses it.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nativeFuseAvailable } from '../src/mount/fuse3-native.js';
import { fixturePath, fixturesReady, loadManifest, repoRoot } from '../test/support/fixtures.js';
import { loadPartitionManifest, partitionFixture, partitionFixturesReady } from '../test/support/partition-fixtures.js';
import { buildAddonVariant } from '../test/support/native-build.js';
import { IN_CI, toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt, mountsUnder } from './mount-support.js';

const ready = toolsAvailable('qemu-img', 'dd', 'fincore', 'python3', '/dev/fuse') && (fixturesReady() || IN_CI) && (nativeFuseAvailable() || IN_CI);
const root = process.getuid?.() === 0;

let scratch: Scratch;
const guestMounts: string[] = [];

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('direct-io');
});

afterAll(() => {
  if (!scratch) return;
  for (const g of [...guestMounts].reverse()) spawnSync('umount', ['-l', g]);
  for (const m of mountsUnder(scratch.root).reverse()) if (!guestMounts.includes(m)) scratch.unmount(m);
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** The file through plain (buffered) read() calls of `bs`, by another process. */
const readWith = (file: string, bs: string) => execFileSync('dd', [`if=${file}`, `bs=${bs}`, 'status=none'], { maxBuffer: 1 << 30 });

function oracleBytes(oracle: string, size: number): Buffer {
  const b = Buffer.alloc(size);
  const fd = fs.openSync(fixturePath(oracle), 'r');
  try {
    for (let done = 0; done < size; ) {
      const n = fs.readSync(fd, b, done, size - done, done);
      if (n === 0) break; // a sparse oracle cut short: zeros
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return b;
}

/** Bytes of `file` in the page cache (util-linux fincore). */
const cachedBytes = (file: string) => Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' }).trim());

describe.skipIf(!ready)('-o direct_io (native back-end)', () => {
  // Data clusters, compression (zlib in C, zstd in JS), a backing file (JS), an external data file.
  for (const name of ['v3-c64k', 'zlib-c64k', 'zstd-c64k', 'el2-c64k-backing', 'datafile']) {
    it(`${name}: every view equals QEMU's output, and none of it stays in the page cache`, () => {
      const fx = loadManifest().images.find((i) => i.name === name)!;
      const mnt = scratch.mountPoint(name);
      scratch.mount(fixturePath(fx.image), mnt, ['-o', 'fuse=native,direct_io']);
      try {
        const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { snapshots: { id: string; files: { raw: string } }[] };
        for (const view of fx.views) {
          if (view.view === 'vmstate') continue;
          const file = path.join(mnt, view.id === undefined ? 'active.raw' : info.snapshots.find((s) => s.id === view.id)!.files.raw);
          const want = sha(oracleBytes(view.oracle!, view.size));
          expect(sha(readWith(file, '1M')), `${file} first pass`).toBe(want);
          expect(sha(readWith(file, '12k')), `${file} second pass, 12 KiB reads`).toBe(want);
          expect(sha(fs.readFileSync(file)), `${file} third pass`).toBe(want);
          expect(cachedBytes(file), `${file} in the page cache`).toBe(0);
        }
      } finally {
        expect(scratch.unmount(mnt).status).toBe(0);
      }
    });
  }

  it('st_blksize is 1 MiB (128 KiB without it); mmap, private and shared, gives the bytes', () => {
    const fx = loadManifest().images.find((i) => i.name === 'v3-c64k')!;
    const plain = scratch.mountPoint('plain');
    const direct = scratch.mountPoint('direct');
    scratch.mount(fixturePath(fx.image), plain, ['-o', 'fuse=native']);
    scratch.mount(fixturePath(fx.image), direct, ['-o', 'fuse=native,direct_io']);
    try {
      expect(fs.statSync(path.join(plain, 'active.raw')).blksize).toBe(128 * 1024);
      expect(fs.statSync(path.join(direct, 'active.raw')).blksize).toBe(1024 * 1024);
      const probe = [
        'import mmap, os, sys, hashlib',
        'fd = os.open(sys.argv[1], os.O_RDONLY)',
        'm = mmap.mmap(fd, 65536, mmap.MAP_PRIVATE, mmap.PROT_READ)',
        'print(hashlib.sha256(m[:]).hexdigest())',
        'm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)',
        'print(hashlib.sha256(m[:]).hexdigest())',
      ].join('\n');
      const out = execFileSync('python3', ['-c', probe, path.join(direct, 'active.raw')], { encoding: 'utf8' }).trim().split('\n');
      const view = fx.views.find((v) => v.view === 'active')!;
      const want = oracleBytes(view.oracle!, view.size);
      expect(out[0]).toBe(sha(want.subarray(0, 65536)));
      // MAP_SHARED of a direct-I/O file is ENODEV unless the INIT reply says FUSE_DIRECT_IO_ALLOW_MMAP.
      expect(out[1]).toBe(sha(want));
    } finally {
      scratch.unmount(direct);
      scratch.unmount(plain);
    }
  });

  it('an addon built without liburing (fuse-uring-none.c) still asks for shared mappings', () => {
    // A copy of the package whose native/ is that build: its commands load their addons from there.
    const pkg = path.join(scratch.root, 'package-no-liburing');
    const release = buildAddonVariant(path.join(pkg, 'native'), { have_liburing: 0 });
    expect(execFileSync('nm', ['-D', path.join(release, 'qcow_fuse3.node')], { encoding: 'utf8' })).not.toMatch(/io_uring/);
    fs.cpSync(path.join(repoRoot, 'dist'), path.join(pkg, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(repoRoot, 'package.json'), path.join(pkg, 'package.json'));
    fs.symlinkSync(path.join(repoRoot, 'node_modules'), path.join(pkg, 'node_modules'));
    const fx = loadManifest().images.find((i) => i.name === 'v3-c64k')!;
    const mnt = scratch.mountPoint('no-liburing');
    const r = spawnSync(path.join(pkg, 'dist/cli/qcow-mount.js'), ['-o', 'fuse=native,direct_io', fixturePath(fx.image), mnt], { env: scratch.env(), encoding: 'utf8', timeout: 90_000 });
    expect(r.status, r.stderr).toBe(0);
    try {
      const probe = ['import mmap, os, sys, hashlib', 'fd = os.open(sys.argv[1], os.O_RDONLY)', 'print(hashlib.sha256(mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)[:]).hexdigest())'].join('\n');
      const view = fx.views.find((v) => v.view === 'active')!;
      expect(execFileSync('python3', ['-c', probe, path.join(mnt, 'active.raw')], { encoding: 'utf8' }).trim()).toBe(sha(oracleBytes(view.oracle!, view.size)));
    } finally {
      scratch.unmount(mnt);
    }
  }, 180_000);

  it('the compat back-end refuses it in one line, and nothing is mounted', () => {
    const fx = loadManifest().images.find((i) => i.name === 'v3-c64k')!;
    const mnt = scratch.mountPoint('compat');
    const r = scratch.cli(['-o', 'fuse=compat,direct_io', fixturePath(fx.image), mnt]);
    expect(r.status).toBe(3);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/-o direct_io needs the native FUSE back-end/);
    expect(mountsUnder(scratch.root)).not.toContain(mnt);
  });

  it.skipIf(!root || !partitionFixturesReady())('a guest ext4 partition loop-mounts from a direct-I/O file', () => {
    const manifest = loadPartitionManifest();
    const { name, partition, files } = manifest.ext4;
    const view = manifest.views.find((v) => v.name === name && v.view === 'active')!;
    const mnt = scratch.mountPoint('guest-host');
    scratch.mount(partitionFixture(view.image), mnt, ['-o', 'fuse=native,direct_io']);
    const guest = scratch.mountPoint('guest');
    try {
      execFileSync('mount', ['-t', 'ext4', '-o', 'loop,ro,noload', path.join(mnt, `active.p${partition}`), guest]);
      guestMounts.push(guest);
      for (const [file, digest] of Object.entries(files)) expect(sha(fs.readFileSync(path.join(guest, file))), file).toBe(digest);
    } finally {
      if (guestMounts.includes(guest)) {
        execFileSync('umount', [guest]);
        guestMounts.splice(guestMounts.indexOf(guest), 1);
      }
      scratch.unmount(mnt);
    }
  });
});
