/**
 * qcow-diff as users run it (dist/cli/qcow-diff.js): the text table, --json, --verify, --svg (parsed by
 * xmllint, rendered by rsvg-convert), FROM/TO by ID, name or mount file name, and one-line refusals.
 */
import { type SpawnSyncReturns, execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from './support/fixtures.js';
import { partitionFixture, partitionFixturesReady } from './support/partition-fixtures.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'sfdisk', 'sgdisk', 'jq', 'losetup', 'mkfs.ext4', 'rsvg-convert', 'xmllint') && partitionFixturesReady();
const BIN = path.join(repoRoot, 'dist/cli/qcow-diff.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'diff-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const run = (args: string[]): SpawnSyncReturns<string> => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
const M = 1 << 20;
const K = 1024;

interface DiffJson {
  from: string;
  to: string;
  size: number;
  changed: { start: number; length: number }[];
  changedBytes: number;
  stats?: { l2TablesRead: number; spansCompared: number };
}

describe.skipIf(!ready)('qcow-diff', () => {
  const image = () => partitionFixture('diff/diff.qcow2');

  it('prints the ranges like qemu-img map, and a total', () => {
    const r = run([image(), 's2', 'active']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.split('\n').filter((l) => l !== '')).toEqual([
      expect.stringMatching(/^Start\s+Length$/),
      expect.stringMatching(/^0x600000\s+0x10000$/),
      expect.stringMatching(/^0xc00000\s+0x10000$/),
      'Total: 131072 bytes (0x20000) in 2 ranges; s2 is 16777216 bytes, active 16777216',
    ]);
  });

  it('--json by ID and by mount file name; --verify drops the identical rewrite', () => {
    const meta = JSON.parse(run([image(), '1', 'snapshots/s2.raw', '--json', '--stats']).stdout) as DiffJson;
    expect(meta).toMatchObject({ from: 's1', to: 's2', size: 16 * M, changedBytes: 7 * 64 * K, stats: { l2TablesRead: 2, spansCompared: 1 } });
    expect(meta.changed.map((r) => r.start)).toContain(4 * M);
    const verified = JSON.parse(run([image(), 's1', 's2', '--json', '--verify']).stdout) as DiffJson;
    expect(verified.changed.map((r) => r.start)).not.toContain(4 * M);
    expect(verified.changedBytes).toBe(6 * 64 * K);
  });

  it('--svg draws every snapshot and the active disk; it parses and renders', () => {
    const svg = path.join(tmp, 'timeline.svg');
    const r = run([image(), 's1', 'active', '--svg', svg]);
    expect(r.status, r.stderr).toBe(0);
    const text = fs.readFileSync(svg, 'utf8');
    for (const label of ['>s1<', '>s2<', '>active<']) expect(text).toContain(label);
    execFileSync('xmllint', ['--noout', svg]);
    execFileSync('rsvg-convert', ['-o', path.join(tmp, 'timeline.png'), svg]);
    expect(fs.statSync(path.join(tmp, 'timeline.png')).size).toBeGreaterThan(1000);
  });

  it('draws partitions under the axis', () => {
    const svg = path.join(tmp, 'repart.svg');
    expect(run([partitionFixture('repart/repart.qcow2'), 'before-repartition', 'active', '--svg', svg]).status).toBe(0);
    const text = fs.readFileSync(svg, 'utf8');
    expect(text).toContain('p1 new-root');
    expect(text).toContain('p2 new-data');
  });

  it('refuses an unknown view in one line, exit 2', () => {
    const r = run([image(), 's1', 'nope']);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^qcow-diff: .*diff\.qcow2: no snapshot with ID or name "nope" and it is not "active" \(it has 1 "s1", 2 "s2"\)$/)]);
  });

  it('refuses a missing argument with usage exit 1', () => {
    expect(run([image(), 's1']).status).toBe(1);
  });
});
