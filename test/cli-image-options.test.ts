/**
 * The options all three commands take about opening the image: --no-backing (an overlay read alone, as
 * QEMU's `backing: null`) and --data-file (the external data file named outright). QEMU is the oracle:
 * qemu-img convert with a json: filename that sets backing to null.
 */
import { type SpawnSyncReturns, execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesReady, loadManifest, repoRoot } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const haveQemu = toolsAvailable('qemu-img', 'qemu-io');
const bin = (cmd: string) => path.join(repoRoot, 'dist/cli', `${cmd}.js`);
function run(cmd: string, args: string[], cwd?: string): SpawnSyncReturns<Buffer> {
  return spawnSync(process.execPath, [bin(cmd), ...args], { cwd, maxBuffer: 1 << 28, timeout: 120_000 });
}
const text = (b: Buffer) => b.toString('utf8');

let tmp: string;
let top: string;
let oracle: string;

beforeAll(() => {
  if (!haveQemu) return;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-image-options-'));
  const base = path.join(tmp, 'base.qcow2');
  top = path.join(tmp, 'top.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '4M']);
  execFileSync('qemu-io', ['-c', 'write -P 0x11 0 4M', base], { stdio: 'ignore' });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top], { cwd: tmp });
  execFileSync('qemu-io', ['-c', 'write -P 0x22 1M 64k', '-c', 'write -z 2M 64k', '-c', 'write -P 0x33 4032k 64k', top], { stdio: 'ignore' });
  fs.rmSync(base);
  oracle = path.join(tmp, 'oracle.raw');
  const spec = JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: top }, backing: null });
  execFileSync('qemu-img', ['convert', '-O', 'raw', `json:${spec}`, oracle]);
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

describe.skipIf(!haveQemu)('--no-backing: an overlay whose backing file is gone', () => {
  it('without it, qcow-export refuses in one line that names --no-backing', () => {
    const r = run('qcow-export', [top, path.join(tmp, 'refused.raw')]);
    expect(r.status).toBe(2);
    const lines = text(r.stderr).trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^qcow-export: .*top\.qcow2: backing file "base\.qcow2".*; --no-backing reads the image alone/);
    expect(fs.existsSync(path.join(tmp, 'refused.raw'))).toBe(false);
  });

  it('qcow-info describes the image alone and says the mount needs --no-backing; with it, no warning', () => {
    const r = run('qcow-info', [top]);
    expect(r.status, text(r.stderr)).toBe(0);
    expect(text(r.stderr)).toMatch(/^qcow-info: warning: the backing chain cannot be opened .*qcow-mount and qcow-export need --no-backing/);
    const alone = run('qcow-info', [top, '--no-backing']);
    expect(alone.status, text(alone.stderr)).toBe(0);
    expect(text(alone.stderr)).toBe('');
  });

  it('qcow-export --no-backing equals qemu-img convert with backing: null', () => {
    const out = path.join(tmp, 'alone.raw');
    const r = run('qcow-export', [top, out, '--no-backing']);
    expect(r.status, text(r.stderr)).toBe(0);
    const ours = fs.readFileSync(out);
    const qemu = fs.readFileSync(oracle);
    expect(ours.length).toBe(qemu.length);
    expect(ours.equals(qemu)).toBe(true);
    // Not all zeros: the overlay's own data is there, the backing file's is not.
    expect(ours[1024 * 1024]).toBe(0x22);
    expect(ours[0]).toBe(0);
  });

  it('qcow-info --extents --no-backing shows unallocated runs, not the backing file', () => {
    const r = run('qcow-info', [top, '--no-backing', '--extents', '--json']);
    expect(r.status, text(r.stderr)).toBe(0);
    const extents = JSON.parse(text(r.stdout)) as { kind: string; depth: number }[];
    expect(extents.some((e) => e.kind === 'unallocated')).toBe(true);
    expect(extents.every((e) => e.depth === 0)).toBe(true);
  });
});

describe.skipIf(!haveQemu || !fixturesReady())('--data-file PATH', () => {
  it('reads the external data file from PATH (here: the image copied away from it); equals QEMU', () => {
    const f = loadManifest().images.find((i) => i.name === 'datafile')!;
    const dir = fs.mkdtempSync(path.join(tmp, 'moved-'));
    const moved = path.join(dir, 'disk.qcow2');
    fs.copyFileSync(fixturePath(f.image), moved);
    const dataFile = path.join(path.dirname(fixturePath(f.image)), 'disk.data');
    const refused = run('qcow-export', [moved, path.join(dir, 'x.raw')]);
    expect(refused.status).toBe(2);
    const out = path.join(dir, 'out.raw');
    // A relative PATH is taken from the working directory.
    const r = run('qcow-export', [moved, out, '--data-file', path.relative(tmp, dataFile)], tmp);
    expect(r.status, text(r.stderr)).toBe(0);
    expect(fs.readFileSync(out).equals(fs.readFileSync(fixturePath(f.views[0]!.oracle!)))).toBe(true);
    const info = run('qcow-info', [moved, '--json', '--data-file', dataFile]);
    expect(info.status, text(info.stderr)).toBe(0);
  });
});
