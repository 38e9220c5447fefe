/**
 * The commands on guest memory: `qcow-export --snapshot NAME --memory raw|core` writes the RAM that
 * QEMU's loader placed and dump-guest-memory shows; `qcow-info --snapshot` tells the machine, blocks and
 * ranges; wrong combinations are usage errors.
 */
import { type SpawnSyncReturns, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const memoryDir = path.join(repoRoot, 'fixtures/memory');
const ready = toolsAvailable('qemu-system-x86_64') && fs.existsSync(path.join(memoryDir, 'manifest.json')) && fs.existsSync(path.join(repoRoot, 'dist/cli/qcow-export.js'));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-memory-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(name: string, args: string[]): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [path.join(repoRoot, `dist/cli/${name}.js`), ...args], { encoding: 'utf8', timeout: 120_000 });
}

function readAt(file: string, length: number, position: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(length);
    fs.readSync(fd, b, 0, length, position);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

describe.skipIf(!ready)('qcow-export --memory, qcow-info --snapshot on VM states', () => {
  const image = path.join(memoryDir, 'pc-below32m/disk.qcow2');
  const blobs = JSON.parse(fs.readFileSync(path.join(memoryDir, 'pc-below32m/vm.json'), 'utf8')).blobs as { file: string; size: number; address: number }[];

  it('--memory raw holds each loader blob at its physical address (split given by --ram-below-4g), sparse', () => {
    const out = path.join(tmp, 'below.ram');
    const r = cli('qcow-export', [image, out, '--snapshot', 's1', '--memory', 'raw', '--ram-below-4g', '32M']);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.statSync(out).size).toBe(0x1_0000_0000 + 32 * 1024 * 1024);
    expect(fs.statSync(out).blocks * 512).toBeLessThan(80 * 1024 * 1024);
    for (const b of blobs) expect(readAt(out, b.size, b.address).equals(fs.readFileSync(path.join(memoryDir, 'pc-below32m', b.file)))).toBe(true);
  });

  it('--memory core: the dump-guest-memory segment above 4 GiB, byte for byte, at its p_paddr', () => {
    const out = path.join(tmp, 'below.core');
    expect(cli('qcow-export', [image, out, '--snapshot', 's1', '--memory', 'core', '--ram-below-4g', '32M']).status).toBe(0);
    const loads = (file: string) => {
      const h = readAt(file, 4096, 0);
      const phoff = Number(h.readBigUInt64LE(32));
      return Array.from({ length: h.readUInt16LE(56) }, (_, i) => phoff + i * h.readUInt16LE(54))
        .filter((at) => h.readUInt32LE(at) === 1)
        .map((at) => ({ offset: Number(h.readBigUInt64LE(at + 8)), address: Number(h.readBigUInt64LE(at + 24)), length: Number(h.readBigUInt64LE(at + 32)) }));
    };
    const dump = path.join(memoryDir, 'pc-below32m/dump.elf');
    const high = loads(dump).find((l) => l.address === 0x1_0000_0000)!;
    const ours = loads(out).find((l) => l.address === 0x1_0000_0000)!;
    expect(ours.length).toBe(high.length);
    expect(readAt(out, ours.length, ours.offset).equals(readAt(dump, high.length, high.offset))).toBe(true);
  });

  it('qcow-info --snapshot shows the machine, blocks with page counts, ranges and the files', () => {
    const r = cli('qcow-info', [image, '--snapshot', 's1']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('machine type: pc-i440fx-7.2');
    expect(r.stdout).toMatch(/ram block: pc\.ram: 67108864 bytes \(\d+ data, \d+ zero, 0 unsent pages\)/);
    expect(r.stdout).toContain('physical range: 0x0-0x3ffffff: pc.ram at 0x0');
    expect(r.stdout).toContain('ram file: snapshots/s1.ram');
    const j = cli('qcow-info', [image, '--snapshot', 's1', '--json', '--ram-below-4g', '32M']);
    expect(JSON.parse(j.stdout).memory.ranges.map((x: { address: number }) => x.address)).toEqual([0, 0xfffc0000, 0x1_0000_0000]);
  });

  it('refuses --memory without --snapshot, with --vmstate, and --ram-below-4g alone (exit 1)', () => {
    for (const args of [
      ['--memory', 'raw'],
      ['--snapshot', 's1', '--memory', 'raw', '--vmstate'],
      ['--snapshot', 's1', '--ram-below-4g', '1G'],
      ['--snapshot', 's1', '--memory', 'elf'],
    ]) {
      const r = cli('qcow-export', [image, path.join(tmp, 'x'), ...args]);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(fs.existsSync(path.join(tmp, 'x'))).toBe(false);
  });
});
