/**
 * qcow-export --best-effort on a QEMU-made image cut short (a copy that failed): the readable parts equal
 * QEMU's output, every cluster that lies past the cut is zeros and listed (stderr and
 * OUTPUT.badblocks.json) exactly, the exit code is 6 and the printed digest is of what was written.
 * Without --best-effort the export fails as before (exit 2, nothing written).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'qemu-io');
const C = 65536;
let tmp: string;
let cut: string;
let qemuOut: Buffer;
let whole: Buffer;
/** Guest cluster offsets whose data lies past the cut. */
let lost: number[];

const run = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, [path.join(repoRoot, 'dist/cli/qcow-export.js'), ...args], { encoding: 'buffer', env: { ...process.env, ...env }, maxBuffer: 1 << 27, timeout: 120_000 });

beforeAll(() => {
  if (!ready) return;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-best-effort-'));
  const img = path.join(tmp, 'whole.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', img, '4M']);
  // Host clusters in write order: 0-1M, then 3M-4M, then 1M-2M.
  execFileSync('qemu-io', ['-c', 'write -P 0x31 0 1M', '-c', 'write -P 0x33 3M 1M', '-c', 'write -P 0x32 1M 1M', img], { stdio: 'ignore' });
  execFileSync('qemu-img', ['convert', '-O', 'raw', img, path.join(tmp, 'whole.raw')]);
  whole = fs.readFileSync(path.join(tmp, 'whole.raw'));
  const map = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', img], { encoding: 'utf8' })) as { start: number; length: number; data: boolean; offset?: number }[];
  const third = map.find((m) => m.data && m.start <= 3 * 2 ** 20 && 3 * 2 ** 20 < m.start + m.length)!;
  const cutAt = third.offset! + (3 * 2 ** 20 - third.start) + 8 * C; // eight clusters into the 3M run
  lost = [];
  for (const m of map.filter((x) => x.data)) for (let g = 0; g < m.length; g += C) if (m.offset! + g >= cutAt) lost.push(m.start + g);
  cut = path.join(tmp, 'cut.qcow2');
  fs.copyFileSync(img, cut);
  fs.truncateSync(cut, cutAt);
  execFileSync('qemu-img', ['convert', '-O', 'raw', cut, path.join(tmp, 'qemu-cut.raw')]);
  qemuOut = fs.readFileSync(path.join(tmp, 'qemu-cut.raw'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe.skipIf(!ready)('qcow-export --best-effort', () => {
  it('the cut image loses 24 clusters: 8 of the 3 MiB run and all 16 of the 1 MiB run', () => {
    expect(lost.length).toBe(24);
  });

  it('without it: exit 2, one line, nothing written', () => {
    const out = path.join(tmp, 'strict.raw');
    const r = run([cut, out]);
    expect(r.status).toBe(2);
    expect(r.stderr.toString().trim().split('\n')).toHaveLength(1);
    expect(fs.existsSync(out)).toBe(false);
  });

  for (const workers of ['0', '2']) {
    it(`zeros where unreadable, listed exactly; QEMU's bytes elsewhere; exit 6 (QCOW_EXPORT_WORKERS=${workers})`, () => {
      const out = path.join(tmp, `best-${workers}.raw`);
      const r = run([cut, out, '--best-effort', '--hash', 'sha256'], { QCOW_EXPORT_WORKERS: workers });
      expect(r.status, r.stderr.toString()).toBe(6);
      const ours = fs.readFileSync(out);
      expect(ours.length).toBe(whole.length);
      // What QEMU gives for the cut image (it reads past the end as zeros) is what we wrote.
      expect(ours.equals(qemuOut)).toBe(true);
      const listed = JSON.parse(fs.readFileSync(`${out}.badblocks.json`, 'utf8')) as { regions: { offset: number; length: number; reason: string }[] };
      const covered: number[] = [];
      for (const reg of listed.regions) {
        expect(reg.reason).toMatch(/past the end of the file/);
        for (let g = reg.offset; g < reg.offset + reg.length; g += C) covered.push(g);
      }
      expect(covered.sort((a, b) => a - b)).toEqual([...lost].sort((a, b) => a - b));
      for (let g = 0; g < whole.length; g += C) {
        const piece = ours.subarray(g, g + C);
        if (lost.includes(g)) expect(piece.every((b) => b === 0)).toBe(true);
        else expect(piece.equals(whole.subarray(g, g + C))).toBe(true);
      }
      const stderr = r.stderr.toString().trim().split('\n');
      expect(stderr.filter((l) => l.startsWith('qcow-export: unreadable, written as zeros: guest offset '))).toHaveLength(listed.regions.length);
      expect(r.stdout.toString()).toBe(`${createHash('sha256').update(ours).digest('hex')}  ${out}\n`);
    });
  }
});
