/**
 * qcow-export of a URL streams the data runs stored as they are read (ImageFile.streamTo: the server's
 * answers written straight into the output, not through the block cache), and falls back per run for the
 * rest (compressed clusters here). Against a private nginx serving QEMU-made images: the output equals
 * `qemu-img convert` of the same URL, holes included (`qemu-img map -f raw`: SEEK_DATA/SEEK_HOLE); an
 * object replaced mid-export and a server killed mid-export fail in one line, in bounded time, with no
 * output left; `--best-effort` (library) zero-fills and lists what the dead server no longer gave.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../src/image.js';
import { exportToPath } from '../src/export/export-to-path.js';
import type { BadRegion } from '../src/export/copy-disk.js';
import { repoRoot } from './support/fixtures.js';
import { type Nginx, startNginx } from './support/nginx.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'qemu-io', 'nginx');
const MiB = 1024 * 1024;
const SECRET = 'X-Amz-Signature=SECRET-123';

const exportCli = path.join(repoRoot, 'dist/cli/qcow-export.js');
const rawMap = (file: string) => JSON.parse(execFileSync('qemu-img', ['map', '--output=json', '-f', 'raw', file], { encoding: 'utf8' })) as unknown[];
/** Range requests nginx answered, as [start, length]. */
const ranges = (ng: Nginx, name: string) =>
  ng
    .accessLog()
    .filter((l) => l.startsWith(`GET /${name} `))
    .map((l) => /bytes=(\d+)-(\d+)/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => [Number(m[1]), Number(m[2]) - Number(m[1]) + 1] as const);

function qemuIo(image: string, commands: string[]): void {
  execFileSync('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), image], { stdio: 'ignore' });
}

describe.runIf(ready)('qcow-export of a URL: data runs streamed into the output', () => {
  let dir: string;
  let out: string;
  let ng: Nginx;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-remote-stream-'));
    out = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-remote-stream-out-'));
    const at = (name: string) => path.join(dir, name);
    // A chain (relative backing name) with a snapshot: runs across the 4 MiB chunk and 16 MiB stream
    // piece boundaries, stored zeros inside them (holes in the output), zero clusters, compressed
    // clusters (read the usual way), unallocated ranges, and data of the backing file (depth 1).
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', at('base.qcow2'), '40M']);
    qemuIo(at('base.qcow2'), ['write -P 0x11 24M 8M', 'write -P 0 26M 64k']);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', '40M'], { cwd: dir });
    qemuIo(at('top.qcow2'), ['write -P 0xa5 0 20M', 'write -P 0 5M 8k', 'write -P 0 16380k 8k', 'write -z 8M 1M']);
    execFileSync('qemu-img', ['snapshot', '-c', 's1', at('top.qcow2')]);
    qemuIo(at('top.qcow2'), ['write -c -P 0x5a 21M 1M', 'write -P 0x77 28M 1M', 'write -P 0x66 2M 1M']);
    // 512-byte clusters: runs start off the 4 KiB grid of the output.
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', at('c512.qcow2'), '4M']);
    qemuIo(at('c512.qcow2'), ['write -P 0xa5 512 3M', 'write -P 0 262144 4096', 'write -P 0 1M 64k', `write -P 0 ${3 * MiB - 3584} 4096`]);
    // Many separate 1 MiB runs: more streams than run at once, so some start after a change.
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', at('runs.qcow2'), '64M']);
    qemuIo(at('runs.qcow2'), Array.from({ length: 32 }, (_, i) => `write -P ${i + 1} ${2 * i}M 1M`));
    ng = await startNginx(dir);
  });
  afterAll(async () => {
    await ng?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    if (out) fs.rmSync(out, { recursive: true, force: true });
  });

  const cases = [
    { name: 'top.qcow2', args: [] as string[], qemu: [] as string[] },
    { name: 'top.qcow2', args: ['--snapshot', 's1'], qemu: ['-l', 'snapshot.name=s1'] },
    { name: 'c512.qcow2', args: [], qemu: [] },
  ];
  for (const c of cases) {
    it(`${c.name} ${c.args.join(' ')}: bytes and holes equal qemu-img convert of the same URL`, () => {
      const url = `${ng.url}/${c.name}`;
      const tag = `${c.name}${c.args.join('')}`;
      const qemuOut = path.join(out, `${tag}.qemu.raw`);
      // -m 1: QEMU 7.2's curl driver can stall for good with several requests in flight (bench/NOTES.md).
      execFileSync('qemu-img', ['convert', '-m', '1', ...c.qemu, '-O', 'raw', url, qemuOut], { timeout: 60_000 });
      const ours = path.join(out, `${tag}.raw`);
      const r = spawnSync(process.execPath, [exportCli, '-q', ...c.args, `${url}?${SECRET}`, ours], { encoding: 'utf8', timeout: 60_000 });
      expect(r.status, r.stderr).toBe(0);
      expect(fs.readFileSync(ours).equals(fs.readFileSync(qemuOut))).toBe(true);
      const map = rawMap(ours);
      expect(map).toEqual(rawMap(qemuOut));
      expect(map.length).toBeGreaterThan(4); // holes to compare
    });
  }

  it('fetches the stored runs as streams: requests of whole runs, past the block cache\'s 4 MiB', () => {
    const url = `${ng.url}/top.qcow2`;
    const before = ranges(ng, 'top.qcow2').length;
    const ours = path.join(out, 'streams.raw');
    expect(spawnSync(process.execPath, [exportCli, '-q', url, ours], { encoding: 'utf8' }).status).toBe(0);
    const streamed = ranges(ng, 'top.qcow2').slice(before);
    // The top image's 11 MiB run (guest 9-20 MiB, stored in one piece): one request.
    expect(streamed.some(([, length]) => length === 11 * MiB)).toBe(true);
    // The block cache's way (QCOW_EXPORT_STREAM=0) never asks for more than 4 MiB at once: same bytes.
    const cached = path.join(out, 'cached.raw');
    const mark = ranges(ng, 'top.qcow2').length;
    expect(spawnSync(process.execPath, [exportCli, '-q', url, cached], { encoding: 'utf8', env: { ...process.env, QCOW_EXPORT_STREAM: '0' } }).status).toBe(0);
    expect(Math.max(...ranges(ng, 'top.qcow2').slice(mark).map(([, length]) => length))).toBeLessThanOrEqual(4 * MiB);
    expect(fs.readFileSync(cached).equals(fs.readFileSync(ours))).toBe(true);
  });

  /** Runs qcow-export on a throttled server and calls `meanwhile` once some runs have come and more are due. */
  async function exportCaughtMidway(name: string, meanwhile: (slow: Nginx) => Promise<void> | void): Promise<{ code: number | null; stderr: string; ms: number; files: string[] }> {
    const slow = await startNginx(dir, { limitRate: '512k' });
    const target = path.join(out, `${name}.midway`);
    fs.mkdirSync(target);
    let child: ChildProcess | undefined;
    try {
      const t0 = Date.now();
      child = spawn(process.execPath, [exportCli, '-q', `${slow.url}/${name}?${SECRET}`, path.join(target, 'disk.raw')], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((resolve) => child!.once('exit', (code) => resolve(code)));
      // Some 1 MiB runs done (the access log has a line once a request is complete), most still to come.
      // (nginx sends limit_rate's worth at once, then throttles: 512k makes a run take about a second.)
      while (ranges(slow, name).filter(([, length]) => length === MiB).length < 2) {
        if (child.exitCode !== null) throw new Error(`the export ended before the change: ${stderr}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(child.exitCode).toBeNull();
      await meanwhile(slow);
      const code = await exited;
      return { code, stderr, ms: Date.now() - t0, files: fs.readdirSync(target) };
    } finally {
      if (child && child.exitCode === null) child.kill('SIGKILL');
      await slow.stop();
    }
  }

  it('an object replaced on the server mid-export: exit 2, one line naming the URL, no output', async () => {
    const name = 'replaced.qcow2';
    fs.copyFileSync(path.join(dir, 'runs.qcow2'), path.join(dir, name));
    const r = await exportCaughtMidway(name, () => {
      // Other bytes under the same name, with another mtime (nginx's ETag and Last-Modified change).
      const next = path.join(dir, `${name}.next`);
      fs.copyFileSync(path.join(dir, 'runs.qcow2'), next);
      qemuIo(next, ['write -P 0xee 0 64M']);
      const later = new Date(Date.now() + 3600_000);
      fs.utimesSync(next, later, later);
      fs.renameSync(next, path.join(dir, name));
    });
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`qcow-export: http://127.0.0.1:`);
    expect(lines[0]).toContain(`/${name}: `);
    expect(lines[0]).toMatch(/changed on the server/);
    expect(r.stderr).not.toContain('SECRET');
    expect(r.files).toEqual([]);
  });

  it('a server killed mid-export: bounded retries, then exit 2 in one line, no output', async () => {
    const r = await exportCaughtMidway('runs.qcow2', (slow) => slow.kill());
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('/runs.qcow2: ');
    expect(r.stderr).not.toContain('SECRET');
    // Four retries with doubling backoff from 250 ms on refused connections: seconds, not minutes.
    expect(r.ms).toBeLessThan(30_000);
    expect(r.files).toEqual([]);
  });

  it('--best-effort (library): a server killed mid-export leaves its unread runs as listed zeros, the rest QEMU\'s bytes', async () => {
    const slow = await startNginx(dir, { limitRate: '512k' });
    const url = `${slow.url}/runs.qcow2`;
    const oracle = path.join(out, 'runs.qemu.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', path.join(dir, 'runs.qcow2'), oracle]);
    const image = await openImage(url, { remote: { retries: 0, cacheSize: 16 * MiB } });
    const target = path.join(out, 'best-effort.raw');
    const regions: BadRegion[] = [];
    try {
      const done = exportToPath(image.active, target, { bestEffort: { granularity: image.header.clusterSize, onBadRegion: (r) => regions.push(r) } });
      while (ranges(slow, 'runs.qcow2').filter(([, length]) => length === MiB).length < 2) await new Promise((r) => setTimeout(r, 20));
      slow.kill();
      await done;
    } finally {
      image.close();
      await slow.stop();
    }
    expect(regions.length).toBeGreaterThan(0);
    const got = fs.readFileSync(target);
    const want = fs.readFileSync(oracle);
    const bad = Buffer.alloc(got.length);
    for (const r of regions) {
      expect(r.reason.length).toBeGreaterThan(0);
      bad.fill(1, r.offset, r.offset + r.length);
    }
    let kept = 0;
    for (let at = 0; at < got.length; at += 512) {
      if (bad[at]) expect(got.subarray(at, at + 512).every((b) => b === 0), `zeros at ${at}`).toBe(true);
      else {
        expect(got.subarray(at, at + 512).equals(want.subarray(at, at + 512)), `QEMU's bytes at ${at}`).toBe(true);
        if (want[at] !== 0) kept += 512;
      }
    }
    // Runs that came before the kill are kept, from their streams.
    expect(kept).toBeGreaterThanOrEqual(2 * MiB);
  });
});
