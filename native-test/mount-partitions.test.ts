/**
 * Partition files through a real mount: every VIEW.pN holds exactly the bytes of QEMU's raw output at
 * the range sfdisk gives for it, and the ext4 logical partition file (active.p5) loop-mounts read-only
 * with no offset arithmetic, its files hashing as they were written.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  loadPartitionManifest,
  loadSfdisk,
  partitionFixture,
  partitionFixturesReady,
  sfdiskNumber,
  type PartitionFixtureView,
} from '../test/support/partition-fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt, mountsUnder } from './mount-support.js';

const ready = toolsAvailable('qemu-img', 'sfdisk', 'mount', 'umount', 'losetup', '/dev/fuse') && partitionFixturesReady();
const root = process.getuid?.() === 0;
const EXTENDED = new Set([0x05, 0x0f, 0x85]);

let scratch: Scratch;
const guestMounts: string[] = [];

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('partitions');
});

afterAll(() => {
  if (!scratch) return;
  for (const g of [...guestMounts].reverse()) spawnSync('umount', ['-l', g]);
  for (const m of mountsUnder(scratch.root).reverse()) if (!guestMounts.includes(m)) scratch.unmount(m);
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

function viewBase(view: PartitionFixtureView): string {
  return view.view === 'active' ? 'active' : path.join('snapshots', view.snapshot!);
}

describe.skipIf(!ready)('partition files in the mount', () => {
  const manifest = ready ? loadPartitionManifest() : { views: [], ext4: { name: '', partition: 0, files: {} } };
  const images = [...new Set(manifest.views.map((v) => v.image))];

  it.each(images)('%s: every VIEW.pN equals QEMU output at the sfdisk range', (image) => {
    const mnt = scratch.mountPoint('m');
    scratch.mount(partitionFixture(image), mnt);
    try {
      for (const view of manifest.views.filter((v) => v.image === image)) {
        const sf = loadSfdisk(view);
        const expected = sf.partitions.filter((p) => sf.label === 'gpt' || !EXTENDED.has(parseInt(p.type, 16)));
        const base = viewBase(view);
        const dir = path.join(mnt, path.dirname(base));
        const listed = fs
          .readdirSync(dir)
          .filter((f) => f.startsWith(`${path.basename(base)}.p`))
          .sort();
        expect(listed).toEqual(expected.map((p) => `${path.basename(base)}.p${sfdiskNumber(p.node)}`).sort());
        for (const p of expected) {
          const file = path.join(mnt, `${base}.p${sfdiskNumber(p.node)}`);
          const size = p.size * sf.sectorsize;
          expect(fs.statSync(file).size).toBe(size);
          const qemu = Buffer.alloc(size);
          const fd = fs.openSync(partitionFixture(view.raw), 'r');
          fs.readSync(fd, qemu, 0, size, p.start * sf.sectorsize);
          fs.closeSync(fd);
          expect(fs.readFileSync(file).equals(qemu), file).toBe(true);
        }
      }
    } finally {
      scratch.unmount(mnt);
    }
  });

  it.skipIf(!root)('loop-mounts the ext4 logical partition file read-only', () => {
    const { name, partition, files } = manifest.ext4;
    const view = manifest.views.find((v) => v.name === name && v.view === 'active')!;
    const mnt = scratch.mountPoint('m');
    scratch.mount(partitionFixture(view.image), mnt);
    const guest = scratch.mountPoint('guest');
    try {
      execFileSync('mount', ['-t', 'ext4', '-o', 'loop,ro,noload', path.join(mnt, `active.p${partition}`), guest]);
      guestMounts.push(guest);
      for (const [file, sha] of Object.entries(files)) {
        expect(createHash('sha256').update(fs.readFileSync(path.join(guest, file))).digest('hex'), file).toBe(sha);
      }
    } finally {
      if (guestMounts.includes(guest)) {
        execFileSync('umount', [guest]);
        guestMounts.splice(guestMounts.indexOf(guest), 1);
      }
      scratch.unmount(mnt);
    }
  });
});
