/**
 * Guest memory through a real mount: snapshots/NAME.ram and NAME.core hold, at every PT_LOAD range of
 * QEMU's dump-guest-memory of the same paused VM, the same bytes (scripts/make-memory-fixtures.sh); a VM
 * state whose RAM cannot be rebuilt gets neither file, one log line and a reason in info.json, while
 * its .vmstate is still served.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImageSync } from '../src/index.js';
import { repoRoot } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt } from './mount-support.js';

const memoryDir = path.join(repoRoot, 'fixtures/memory');
const ready = toolsAvailable('qemu-system-x86_64', '/dev/fuse') && (fs.existsSync(path.join(memoryDir, 'manifest.json')) || process.env.CI === 'true');

let scratch: Scratch;
beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('memory');
});
afterAll(() => {
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

interface Load {
  offset: number;
  address: number;
  length: number;
}

function loadsOf(file: string): Load[] {
  const head = Buffer.alloc(65536);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  expect(head.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
  const phoff = Number(head.readBigUInt64LE(32));
  const out: Load[] = [];
  for (let i = 0; i < head.readUInt16LE(56); i++) {
    const at = phoff + i * head.readUInt16LE(54);
    if (head.readUInt32LE(at) === 1) out.push({ offset: Number(head.readBigUInt64LE(at + 8)), address: Number(head.readBigUInt64LE(at + 24)), length: Number(head.readBigUInt64LE(at + 32)) });
  }
  return out;
}

function readAt(fd: number, length: number, position: number): Buffer {
  const b = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, b, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return b.subarray(0, done);
}

/** Compares every oracle PT_LOAD inside our ranges; returns the oracle ranges we do not serve. */
function compareWithDump(mnt: string, stem: string, dump: string, skip: (address: number) => boolean = () => false): [number, number][] {
  const ram = path.join(mnt, 'snapshots', `${stem}.ram`);
  const core = path.join(mnt, 'snapshots', `${stem}.core`);
  const ours = loadsOf(core);
  const skipped: [number, number][] = [];
  const fds = [dump, ram, core].map((f) => fs.openSync(f, 'r'));
  try {
    for (const load of loadsOf(dump)) {
      if (skip(load.address)) continue;
      const inside = ours.find((l) => l.address <= load.address && load.address + load.length <= l.address + l.length);
      if (!inside) {
        skipped.push([load.address, load.length]);
        continue;
      }
      const chunk = 4 * 1024 * 1024;
      for (let at = 0; at < load.length; at += chunk) {
        const n = Math.min(chunk, load.length - at);
        const want = readAt(fds[0]!, n, load.offset + at);
        if (!readAt(fds[1]!, n, load.address + at).equals(want)) expect.fail(`${stem}.ram differs at ${(load.address + at).toString(16)}`);
        if (!readAt(fds[2]!, n, inside.offset + (load.address - inside.address) + at).equals(want)) expect.fail(`${stem}.core differs at ${(load.address + at).toString(16)}`);
      }
    }
  } finally {
    fds.forEach((fd) => fs.closeSync(fd));
  }
  return skipped;
}

describe.skipIf(!ready)('guest memory in the mount', () => {
  it('pc (SeaBIOS ran, VGA): .ram and .core equal dump-guest-memory except the VGA BAR left out', () => {
    const mnt = scratch.mountPoint();
    scratch.mount(path.join(memoryDir, 'pc-64m/disk.qcow2'), mnt);
    try {
      expect(fs.readdirSync(path.join(mnt, 'snapshots')).sort()).toEqual(['s1.core', 's1.ram', 's1.raw', 's1.vmstate']);
      expect(compareWithDump(mnt, 's1', path.join(memoryDir, 'pc-64m/dump.elf'))).toEqual([[0xfd000000, 0x1000000]]);
      const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8'));
      const s = info.snapshots[0];
      expect(s.files).toMatchObject({ ram: 'snapshots/s1.ram', core: 'snapshots/s1.core' });
      expect(s.memory.machineType).toBe('pc-i440fx-7.2');
      expect(s.memory.blocks.map((b: { name: string }) => b.name)).toContain('0000:00:02.0/vga.vram');
      expect(s.memory.leftOut.map((b: { block: string }) => b.block)).toContain('0000:00:02.0/vga.vram');
    } finally {
      expect(scratch.unmount(mnt).status).toBe(0);
    }
  });

  it('-o ram_below_4g=32M gives the split the VM had (max-ram-below-4g=32M): RAM from 4 GiB too', () => {
    const mnt = scratch.mountPoint();
    scratch.mount(path.join(memoryDir, 'pc-below32m/disk.qcow2'), mnt, ['-o', 'ram_below_4g=32M']);
    try {
      // Reset state: the chipset shows ROMs over 0xC0000-0xFFFFF, which the dump has and a booted guest would not.
      const pamWindow = (a: number) => a >= 0xc0000 && a < 0x100000;
      expect(compareWithDump(mnt, 's1', path.join(memoryDir, 'pc-below32m/dump.elf'), pamWindow)).toEqual([]);
      const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8'));
      expect(info.snapshots[0].memory).toMatchObject({ ramBelow4g: 32 * 1024 * 1024, ramBelow4gFrom: 'max-ram-below-4g' });
    } finally {
      expect(scratch.unmount(mnt).status).toBe(0);
    }
  });

  it('a VM state whose RAM cannot be read: no .ram/.core, one log line, info.json says why, .vmstate served', () => {
    const image = scratch.path('bad-block-list.qcow2');
    fs.copyFileSync(path.join(memoryDir, 'pc-64m/disk.qcow2'), image);
    // The block list's total sits after the header (8), the configuration (5 + "pc-i440fx-7.2") and the
    // ram section header (17): stream offset 43. Where it is in the file, the image's own map says.
    const opened = openImageSync(image);
    const vmState = opened.vmState(opened.snapshots[0]!)!;
    const first = vmState.extents(0, 4096)[0]!;
    opened.close();
    expect(first.kind).toBe('data');
    const total = Buffer.alloc(8);
    total.writeBigUInt64BE((1n << 50n) | 4n);
    const fd = fs.openSync(image, 'r+');
    fs.writeSync(fd, total, 0, 8, first.host! + 43);
    fs.closeSync(fd);

    const mnt = scratch.mountPoint();
    scratch.mount(image, mnt);
    try {
      expect(fs.readdirSync(path.join(mnt, 'snapshots')).sort()).toEqual(['s1.raw', 's1.vmstate']);
      const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8'));
      expect(info.snapshots[0].files).toMatchObject({ ram: null, core: null });
      expect(info.snapshots[0].memory.problem).toMatch(/block list claims 0x4000000000000 bytes of RAM/);
      expect(fs.statSync(path.join(mnt, 'snapshots/s1.vmstate')).size).toBe(info.snapshots[0].vmStateSize);
      const logs = fs.readdirSync(scratch.stateDir).filter((f) => f.endsWith('.log')).map((f) => fs.readFileSync(path.join(scratch.stateDir, f), 'utf8'));
      expect(logs.join('').match(/no \.ram\/\.core: .*block list claims/g)?.length).toBe(1);
    } finally {
      expect(scratch.unmount(mnt).status).toBe(0);
    }
  });
});
