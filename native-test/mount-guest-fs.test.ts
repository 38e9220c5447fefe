/**
 * A guest file system end to end: a raw disk with an MBR partition table and an ext4 partition
 * holding known files, converted to qcow2 by QEMU and snapshotted; then files are changed (inside a
 * loop-mounted copy of the partition) and the changed blocks written into the qcow2 with qemu-io.
 * qcow-mount must serve both: the partition loop-mounted out of active.raw shows the new files, out
 * of snapshots/before-change.raw the old ones.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, compareRange, ensureBuilt, isMounted, mountsUnder, prng, waitFor } from './mount-support.js';

const ready = toolsAvailable('qemu-img', 'qemu-io', 'mkfs.ext4', 'mount', 'umount', 'losetup', 'dd', '/dev/fuse');
/** Loop-mounting an ext4 partition needs root. */
const root = process.getuid?.() === 0;

const MiB = 1024 * 1024;
const PART_START_LBA = 2048;
const PART_BYTES = 40 * MiB;
const DISK_BYTES = PART_START_LBA * 512 + PART_BYTES + MiB;

let scratch: Scratch;
const guestMounts: string[] = [];

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function randomBytes(seed: number, n: number): Buffer {
  const rnd = prng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A classic MBR with one Linux partition (type 0x83) at `startLba`. */
function writeMbr(fd: number, startLba: number, sectors: number): void {
  const mbr = Buffer.alloc(512);
  mbr.writeUInt32LE(0x51c0_3c0d, 440); // disk signature
  const e = 446;
  mbr[e] = 0x00; // not bootable
  mbr.set([0xfe, 0xff, 0xff], e + 1); // CHS: use LBA
  mbr[e + 4] = 0x83;
  mbr.set([0xfe, 0xff, 0xff], e + 5);
  mbr.writeUInt32LE(startLba, e + 8);
  mbr.writeUInt32LE(sectors, e + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  fs.writeSync(fd, mbr, 0, 512, 0);
}

/** Reads the first partition entry of an MBR from a (mounted) disk file. */
function readMbr(file: string): { offset: number; size: number; type: number } {
  const mbr = Buffer.alloc(512);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, mbr, 0, 512, 0);
  fs.closeSync(fd);
  expect(mbr.readUInt16LE(510)).toBe(0xaa55);
  return { offset: mbr.readUInt32LE(446 + 8) * 512, size: mbr.readUInt32LE(446 + 12) * 512, type: mbr[446 + 4]! };
}

function guestMount(file: string, offset: number, size: number, name: string): string {
  const dir = scratch.mountPoint(name);
  run('mount', ['-t', 'ext4', '-o', `loop,ro,noload,offset=${offset},sizelimit=${size}`, file, dir]);
  guestMounts.push(dir);
  return dir;
}

function guestUnmount(dir: string): void {
  run('umount', [dir]);
  guestMounts.splice(guestMounts.indexOf(dir), 1);
}

const BIG = randomBytes(7, 3 * MiB + 4321);
const OLD = {
  'hello.txt': Buffer.from('hello from the guest\n'),
  'notes.txt': Buffer.from('version 1 of the notes\n'.repeat(500)),
  'doomed.txt': Buffer.from('this file is deleted after the snapshot\n'),
  'data/big.bin': BIG,
  'data/deep/nested/file.txt': Buffer.from('deep\n'),
} as const;
const NOTES_V2 = Buffer.from('version 2 of the notes: rewritten after the snapshot\n'.repeat(700));
const NEW_FILE = randomBytes(8, 200_000);

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('guest');
});

afterAll(() => {
  if (!scratch) return;
  for (const g of [...guestMounts].reverse()) spawnSync('umount', ['-l', g]);
  for (const m of mountsUnder(scratch.root).reverse()) if (!m.includes('/guest-')) scratch.unmount(m);
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

describe.skipIf(!ready || !root)('an ext4 partition inside the image', () => {
  it('loop-mounts out of active.raw (new files) and out of the snapshot (old files)', async () => {
    // 1. The guest's files, an ext4 partition made from them, and a raw disk with an MBR around it.
    const tree = scratch.path('tree');
    for (const [rel, data] of Object.entries(OLD)) {
      fs.mkdirSync(path.dirname(path.join(tree, rel)), { recursive: true });
      fs.writeFileSync(path.join(tree, rel), data);
    }
    const part = scratch.path('part.img');
    fs.writeFileSync(part, '');
    fs.truncateSync(part, PART_BYTES);
    run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-L', 'guest', '-E', 'root_owner=0:0', '-d', tree, part]);
    const disk = scratch.path('disk.raw');
    const fd = fs.openSync(disk, 'w');
    fs.ftruncateSync(fd, DISK_BYTES);
    writeMbr(fd, PART_START_LBA, PART_BYTES / 512);
    fs.closeSync(fd);
    run('dd', [`if=${part}`, `of=${disk}`, 'bs=1M', `seek=${(PART_START_LBA * 512) / MiB}`, 'conv=notrunc,sparse', 'status=none']);

    // 2. QEMU makes the qcow2 and the snapshot.
    const image = scratch.path('guest.qcow2');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', disk, image]);
    run('qemu-img', ['snapshot', '-c', 'before-change', image]);

    // 3. Change files in a copy of the partition, then write the changed blocks into the qcow2.
    const part2 = scratch.path('part2.img');
    fs.copyFileSync(part, part2);
    const work = scratch.mountPoint('guest-rw');
    run('mount', ['-t', 'ext4', '-o', 'loop', part2, work]);
    guestMounts.push(work);
    fs.writeFileSync(path.join(work, 'notes.txt'), NOTES_V2);
    fs.writeFileSync(path.join(work, 'new.bin'), NEW_FILE);
    fs.unlinkSync(path.join(work, 'doomed.txt'));
    guestUnmount(work);
    const a = fs.readFileSync(part);
    const b = fs.readFileSync(part2);
    const writes: string[] = [];
    const BLOCK = 4096;
    for (let off = 0; off < b.length; ) {
      if (a.compare(b, off, off + BLOCK, off, off + BLOCK) === 0) {
        off += BLOCK;
        continue;
      }
      let end = off + BLOCK;
      while (end < b.length && a.compare(b, end, end + BLOCK, end, end + BLOCK) !== 0) end += BLOCK;
      const chunk = scratch.path(`chunk-${writes.length}.bin`);
      fs.writeFileSync(chunk, b.subarray(off, end));
      writes.push('-c', `write -s ${chunk} ${PART_START_LBA * 512 + off} ${end - off}`);
      off = end;
    }
    expect(writes.length).toBeGreaterThan(0);
    run('qemu-io', ['-f', 'qcow2', image, ...writes]);
    // QEMU's own view of the changed disk, for a byte-exact check too.
    const changedOracle = scratch.path('changed.raw');
    run('qemu-img', ['convert', '-O', 'raw', image, changedOracle]);

    // 4. Mount with qcow-mount; find the partition through the MBR in active.raw.
    const mnt = scratch.mountPoint('qcow');
    scratch.mount(image, mnt);
    const active = path.join(mnt, 'active.raw');
    const snap = path.join(mnt, 'snapshots', 'before-change.raw');
    expect(fs.statSync(active).size).toBe(DISK_BYTES);
    expect(fs.statSync(snap).size).toBe(DISK_BYTES);
    expect(compareRange(active, changedOracle, 0, DISK_BYTES)).toBe(-1);
    expect(compareRange(snap, disk, 0, DISK_BYTES)).toBe(-1);
    const p = readMbr(active);
    expect(p).toEqual({ offset: PART_START_LBA * 512, size: PART_BYTES, type: 0x83 });
    expect(readMbr(snap)).toEqual(p);

    const now = guestMount(active, p.offset, p.size, 'guest-active');
    const then = guestMount(snap, p.offset, p.size, 'guest-snap');
    try {
      // The disk as it is now.
      expect(fs.readFileSync(path.join(now, 'notes.txt')).equals(NOTES_V2)).toBe(true);
      expect(sha(fs.readFileSync(path.join(now, 'new.bin')))).toBe(sha(NEW_FILE));
      expect(fs.existsSync(path.join(now, 'doomed.txt'))).toBe(false);
      // The disk as it was at the snapshot.
      expect(fs.readFileSync(path.join(then, 'notes.txt')).equals(OLD['notes.txt'])).toBe(true);
      expect(fs.existsSync(path.join(then, 'new.bin'))).toBe(false);
      expect(fs.readFileSync(path.join(then, 'doomed.txt')).equals(OLD['doomed.txt'])).toBe(true);
      // Unchanged files are the same in both.
      for (const dir of [now, then]) {
        expect(fs.readFileSync(path.join(dir, 'hello.txt')).equals(OLD['hello.txt'])).toBe(true);
        expect(sha(fs.readFileSync(path.join(dir, 'data/big.bin')))).toBe(sha(BIG));
        expect(fs.readFileSync(path.join(dir, 'data/deep/nested/file.txt'), 'utf8')).toBe('deep\n');
      }
    } finally {
      guestUnmount(now);
      guestUnmount(then);
    }
    // The loop devices let go of the mounted files (autoclear may take a moment), then -u succeeds.
    await waitFor('the loop devices to detach', () => run('losetup', ['-j', active]).trim() === '' && run('losetup', ['-j', snap]).trim() === '', 10_000);
    const u = scratch.unmount(mnt);
    expect(u.status, u.stderr).toBe(0);
    expect(isMounted(mnt)).toBe(false);
  });
});
