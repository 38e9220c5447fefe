/**
 * qcow-info as users run it (dist/cli/qcow-info.js) against what QEMU says about the same images:
 * `qemu-img info` (text, and the JSON the fixture generator saved), `qemu-img snapshot -l` and
 * `qemu-img map --output=json`.
 */
import { type SpawnSyncReturns, execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ImageInfo, SnapshotInfo } from '../src/info/describe.js';
import { type FixtureImage, fixturePath, fixturesReady, loadManifest, repoRoot } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const BIN = path.join(repoRoot, 'dist/cli/qcow-info.js');
if (!fs.existsSync(BIN)) throw new Error(`${BIN} is missing: run \`npm run build\` first (npm test does)`);

const haveQemu = toolsAvailable('qemu-img');
const manifest = haveQemu && fixturesReady() ? loadManifest() : undefined;
if (haveQemu && !manifest) throw new Error('fixtures/manifest.json is missing: run `npm run fixtures` (vitest globalSetup builds it)');

function run(args: string[]): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', maxBuffer: 1 << 28, timeout: 60_000 });
}

function expectOneLineError(r: SpawnSyncReturns<string>, code: number, pattern?: RegExp): void {
  expect(r.status, r.stderr).toBe(code);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^qcow-info: \S/);
  if (pattern) expect(lines[0]).toMatch(pattern);
  expect(r.stdout).toBe('');
}

interface QemuInfo {
  'virtual-size': number;
  'cluster-size': number;
  'actual-size': number;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'dirty-flag'?: boolean;
  snapshots?: { id: string; name: string; 'vm-state-size': number; 'date-sec': number; 'date-nsec': number; 'vm-clock-sec': number; 'vm-clock-nsec': number; icount?: number }[];
  'format-specific': { data: Record<string, unknown> };
}

interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  zero: boolean;
  data: boolean;
  compressed?: boolean;
  offset?: number;
}

const qemuInfo = (f: FixtureImage): QemuInfo => (JSON.parse(fs.readFileSync(fixturePath(f.info as string), 'utf8')) as QemuInfo[])[0]!;
/** Images whose fixture has qemu-img's saved info and map, and that QEMU itself could open. */
const described = () => (manifest?.images ?? []).filter((f) => typeof f.info === 'string' && fs.existsSync(fixturePath(f.info as string)));
const NAMES = ['savevm-c64k', 'chain-backing-snapshots', 'chain-raw-qcow2-qcow2', 'datafile', 'datafile-raw', 'zstd-c64k', 'el2-c64k', 'v2-c64k', 'v3-c512', 'dirty-lazy-refcounts', 'bitmaps', 'snapshot-names', 'snapshots-resize', 'huge-2t'];

describe('arguments, help and version', () => {
  it('--help and --version exit 0', () => {
    const help = run(['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/Usage: qcow-info \[options\] <image>/);
    for (const opt of ['--json', '--snapshot', '--extents', 'Exit codes']) expect(help.stdout).toContain(opt);
    const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
    expect(run(['--version']).stdout.trim()).toBe(pkg.version);
  });

  it('argument errors exit 1 with one line', () => {
    expectOneLineError(run([]), 1, /missing required argument 'image'/);
    expectOneLineError(run(['a.qcow2', '--nope']), 1, /unknown option '--nope'/);
    expectOneLineError(run(['a.qcow2', 'b.qcow2']), 1, /too many arguments/);
    expectOneLineError(run(['a.qcow2', '--snapshot']), 1, /argument missing/);
  });

  it('a missing file or a file that is not qcow2: exit 2, one line naming it', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-info-bad-'));
    try {
      const bad = path.join(dir, 'text.qcow2');
      fs.writeFileSync(bad, 'hello, I am not an image'.repeat(10));
      expectOneLineError(run([bad]), 2, /text\.qcow2: not a qcow2 image/);
      expectOneLineError(run([path.join(dir, 'none.qcow2')]), 2, /none\.qcow2: no such file/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!manifest)('what qemu-img info says, qcow-info says', () => {
  for (const name of NAMES) {
    it(`${name}: the lines of qemu-img info, the snapshot list, and --json`, () => {
      const f = manifest!.images.find((i) => i.name === name);
      if (!f) throw new Error(`fixture ${name} missing from the manifest`);
      const image = fixturePath(f.image);
      const r = run([image]);
      expect(r.status, r.stderr).toBe(0);
      const ours = r.stdout.split('\n');
      const q = qemuInfo(f);

      // Text: the lines qemu-img info prints, as it prints them (paths aside).
      const theirs = execFileSync('qemu-img', ['info', image], { encoding: 'utf8' }).split('\n');
      for (const line of theirs) {
        if (/^(virtual size|disk size|cluster_size|backing file format): /.test(line)) expect(ours, line).toContain(line);
        if (/^ {4}\S[^:]*: /.test(line)) expect(ours, line).toContain(line); // format specific information
        if (line.startsWith('backing file: ')) expect(r.stdout).toContain(line.replace(/ \(actual path: .*\)$/, ''));
      }
      expect(r.stdout).toContain(`virtual size: `);
      expect(r.stdout).toMatch(new RegExp(`\\(${q['virtual-size']} bytes\\)`));
      expect(ours).toContain(`cluster_size: ${q['cluster-size']}`);

      // The snapshot list: every row of qemu-img snapshot -l, field by field, in our table.
      // (qemu-img snapshot -l refuses images with an external data file; qemu-img info lists them.)
      const list = theirs;
      const header = ours.findIndex((l) => /^ID +TAG +VM SIZE +DATE +VM CLOCK +ICOUNT +FILE$/.test(l));
      if ((q.snapshots ?? []).length === 0) expect(header).toBe(-1);
      for (const s of q.snapshots ?? []) {
        // The fields after the tag: VM SIZE, DATE, VM CLOCK and (maybe empty) ICOUNT.
        const theirRow = list.find((l) => l.startsWith(`${s.id} `) && l.slice(10).startsWith(s.name === '' ? ' ' : s.name));
        expect(theirRow, `qemu row for ${s.id}`).toBeDefined();
        const m = / (\d+(?:\.\d+)? [KMGTPE]?i?B) +(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) +(\d+:\d\d:\d\d\.\d{3}) *(\d*)$/.exec(theirRow!);
        expect(m, theirRow).not.toBeNull();
        const [, vmSize, date, clock, icount] = m!;
        const ourRow = ours
          .slice(header + 1)
          .find((l) => l.startsWith(`${s.id} `) && new RegExp(` ${vmSize!.replace('.', '\\.')} +${date} +${clock} +${icount ? `${icount} ` : ''} *snapshots/`).test(l));
        expect(ourRow, `our row for snapshot ${s.id} (${vmSize} ${date} ${clock} ${icount}) in\n${r.stdout}`).toBeDefined();
      }

      // --json: the header as QEMU reads it.
      const j = run([image, '--json']);
      expect(j.status, j.stderr).toBe(0);
      const info = JSON.parse(j.stdout) as ImageInfo;
      expect(info.virtualSize).toBe(q['virtual-size']);
      expect(info.clusterSize).toBe(q['cluster-size']);
      const data = q['format-specific'].data;
      expect(info.version === 3 ? '1.1' : '0.10').toBe(data.compat);
      if (data['compression-type'] !== undefined) expect(info.compressionType).toBe(data['compression-type']);
      if (data['refcount-bits'] !== undefined) expect(info.refcountBits).toBe(data['refcount-bits']);
      if (data['lazy-refcounts'] !== undefined) expect(info.lazyRefcounts).toBe(data['lazy-refcounts']);
      if (data['extended-l2'] !== undefined) expect(info.extendedL2).toBe(data['extended-l2']);
      if (data.corrupt !== undefined) expect(info.corrupt).toBe(data.corrupt);
      if (q['dirty-flag'] !== undefined) expect(info.dirty).toBe(q['dirty-flag']);
      if (data['data-file'] !== undefined) expect(info.dataFile?.name).toBe(data['data-file']);
      if (data['data-file-raw'] !== undefined) expect(info.dataFile?.raw).toBe(data['data-file-raw']);
      expect(info.backingFile).toBe(q['backing-filename'] ?? null);
      if (q['backing-filename-format']) expect(info.extensions.backingFormat).toBe(q['backing-filename-format']);
      expect(info.snapshots.map((s) => [s.id, s.name, s.vmStateSize, s.dateSeconds])).toEqual(
        (q.snapshots ?? []).map((s) => [s.id, s.name, s['vm-state-size'], s['date-sec']]),
      );
      expect(info.snapshots.map((s) => s.vmClockNs)).toEqual((q.snapshots ?? []).map((s) => (BigInt(s['vm-clock-sec']) * 1_000_000_000n + BigInt(s['vm-clock-nsec'])).toString()));
      // Every file name the mount shows is in the text report.
      for (const s of info.snapshots) {
        expect(r.stdout).toContain(s.files.raw);
        if (s.files.vmstate) expect(r.stdout).toContain(s.files.vmstate);
      }
    });
  }

  it('backing chain and feature names appear in the text report', () => {
    const f = manifest!.images.find((i) => i.name === 'chain-raw-qcow2-qcow2')!;
    const r = run([fixturePath(f.image)]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Backing chain:\n {4}1 {2}qcow2 .*\n {4}2 {2}raw /m);
    const dirty = manifest!.images.find((i) => i.name === 'dirty-lazy-refcounts')!;
    const d = run([fixturePath(dirty.image)]);
    expect(d.stdout).toMatch(/^ {4}compatible: lazy refcounts$/m);
    expect(d.stdout).toMatch(/^ {4}incompatible: dirty( bit)?$/m); // the name from the image's feature name table
  });

  it('--snapshot: one snapshot in detail, or as JSON; an unknown one is exit 2', () => {
    const f = manifest!.images.find((i) => i.name === 'savevm-c64k')!;
    const r = run([fixturePath(f.image), '--snapshot', 'vm1']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^id: 1$/m);
    expect(r.stdout).toMatch(/^name: vm1$/m);
    expect(r.stdout).toMatch(/^vm state file: snapshots\/vm1\.vmstate$/m);
    const j = run([fixturePath(f.image), '--snapshot', '2', '--json']);
    const s = JSON.parse(j.stdout) as SnapshotInfo;
    expect(s.name).toBe('vm2');
    expect(s.files).toEqual({ raw: 'snapshots/vm2.raw', vmstate: 'snapshots/vm2.vmstate', ram: 'snapshots/vm2.ram', core: 'snapshots/vm2.core' });
    expectOneLineError(run([fixturePath(f.image), '--snapshot', 'zzz']), 2, /no snapshot with ID or name "zzz"/);
  });

  it('--extents agrees with qemu-img map on what is data, where it lies, and at which depth', () => {
    for (const name of ['savevm-c64k', 'zero-discard-backing', 'chain-raw-qcow2-qcow2', 'el2-c64k', 'zlib-c64k', 'prealloc-metadata', 'huge-2t']) {
      const f = manifest!.images.find((i) => i.name === name)!;
      const r = run([fixturePath(f.image), '--extents', '--json']);
      expect(r.status, r.stderr).toBe(0);
      const ours = JSON.parse(r.stdout) as { start: number; length: number; kind: string; depth: number; host?: number }[];
      const theirs = JSON.parse(fs.readFileSync(fixturePath(f.map as string), 'utf8')) as QemuMapEntry[];
      // Both cover the disk without gaps.
      expect(ours.reduce((n, e) => n + e.length, 0)).toBe(f.views[0]!.size);
      // Walk both lists over the same byte ranges.
      let i = 0;
      let j = 0;
      let pos = 0;
      while (i < ours.length && j < theirs.length) {
        const a = ours[i]!;
        const b = theirs[j]!;
        const end = Math.min(a.start + a.length, b.start + b.length);
        const what = `${name} at ${pos}: ours ${JSON.stringify(a)} qemu ${JSON.stringify(b)}`;
        const ourData = a.kind === 'data' || a.kind === 'compressed';
        // qemu-img map also reports holes of the host file inside allocated clusters as zero (data and
        // zero both true); what is allocated where must agree.
        expect(ourData, what).toBe(b.data);
        if (ourData) expect(a.depth, what).toBe(b.depth);
        if (a.kind === 'data' && b.offset !== undefined) expect(a.host! + (pos - a.start), what).toBe(b.offset + (pos - b.start));
        pos = end;
        if (a.start + a.length === end) i++;
        if (b.start + b.length === end) j++;
      }
    }
  });

  it('a missing backing file: the image alone is described, with a warning', () => {
    const f = manifest!.images.find((i) => i.name === 'chain-backing-snapshots')!;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-info-nobacking-'));
    try {
      const img = path.join(dir, 'top.qcow2');
      fs.copyFileSync(fixturePath(f.image), img);
      const r = run([img]);
      expect(r.status).toBe(0);
      expect(r.stderr).toMatch(/^qcow-info: warning: the backing chain cannot be opened/);
      expect(r.stdout).toMatch(/^backing file: base\.qcow2$/m);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!haveQemu)('a fresh image', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-info-fresh-'));
  });
  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('names with control characters stay on one line', () => {
    const img = path.join(dir, 'ctl.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '1M']);
    execFileSync('qemu-img', ['snapshot', '-c', 'two\nlines', img]);
    const r = run([img]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^1 +two\\nlines +0 B/m);
  });
});
