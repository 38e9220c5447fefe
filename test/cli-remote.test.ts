/**
 * qcow-info and qcow-export given an http(s) URL (the built CLIs, as users run them), against a private
 * nginx serving the fixture folder: bytes equal QEMU's oracles; no secret from the URL or --header in
 * any output.
 */
import { type SpawnSyncReturns, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesDir, fixturesReady, repoRoot } from './support/fixtures.js';
import { type Nginx, startNginx } from './support/nginx.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'nginx') && fixturesReady();
const SECRET = 'X-Amz-Signature=SECRET-123';

function cli(name: string, args: string[]): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [path.join(repoRoot, `dist/cli/${name}.js`), ...args], { encoding: 'utf8', timeout: 120_000 });
}

describe.runIf(ready)('qcow-info and qcow-export by URL', () => {
  let ng: Nginx;
  let tmp: string;
  beforeAll(async () => {
    ng = await startNginx(fixturesDir);
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-remote-cli-'));
  });
  afterAll(async () => {
    await ng?.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('qcow-export of a chain with relative backing names, and of a snapshot, equals QEMU output', () => {
    const url = `${ng.url}/chain-subdir/vm/top.qcow2?${SECRET}`;
    const out = path.join(tmp, 'active.raw');
    let r = cli('qcow-export', ['-q', url, out]);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(out).equals(fs.readFileSync(fixturePath('chain-subdir/vm/active.raw')))).toBe(true);
    const snap = path.join(tmp, 'snap.raw');
    r = cli('qcow-export', ['-q', '--snapshot', 't1', url, snap]);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(snap).equals(fs.readFileSync(fixturePath('chain-subdir/vm/snap-1-t1.raw')))).toBe(true);
  });

  it('qcow-export of VM state and of a zstd image equals QEMU output', () => {
    const vm = path.join(tmp, 'vm.bin');
    let r = cli('qcow-export', ['-q', '--snapshot', 'vm1', '--vmstate', `${ng.url}/savevm-c64k/disk.qcow2`, vm]);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(vm).equals(fs.readFileSync(fixturePath('savevm-c64k/vmstate-1-vm1.bin')))).toBe(true);
    const z = path.join(tmp, 'z.raw');
    r = cli('qcow-export', ['-q', `${ng.url}/zstd-c2m/disk.qcow2`, z]);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(z).equals(fs.readFileSync(fixturePath('zstd-c2m/active.raw')))).toBe(true);
  });

  it('qcow-export by URL leaves all-zero blocks of stored clusters as holes and equals QEMU output (prealloc-full)', () => {
    const out = path.join(tmp, 'prealloc.raw');
    const r = cli('qcow-export', ['-q', `${ng.url}/prealloc-full/disk.qcow2`, out]);
    expect(r.status, r.stderr).toBe(0);
    const oracle = fs.readFileSync(fixturePath('prealloc-full/active.raw'));
    expect(fs.readFileSync(out).equals(oracle)).toBe(true);
    // Every cluster is stored, most of them zeros: only the 4 KiB blocks that hold data take space.
    const zero = Buffer.alloc(4096);
    let nonZero = 0;
    for (let at = 0; at < oracle.length; at += 4096) if (!oracle.subarray(at, at + 4096).equals(zero)) nonZero += 4096;
    expect(nonZero).toBeLessThan(oracle.length / 4);
    expect(fs.statSync(out).blocks * 512).toBeLessThanOrEqual(nonZero + 64 * 1024);
  });

  it('qcow-info --json shows the redacted URL, the server size and validators, and agrees with qemu-img info', () => {
    const r = cli('qcow-info', ['--json', '--header', 'X-Token: SECRET-123', `${ng.url}/chain-subdir/vm/top.qcow2?${SECRET}`]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).not.toContain('SECRET');
    const info = JSON.parse(r.stdout) as { image: string; virtualSize: number; remote: { url: string; size: number; etag: string; requests: number }; backingChain: { path: string }[] };
    const qemu = JSON.parse(fs.readFileSync(fixturePath('chain-subdir/vm/info.json'), 'utf8')) as { 'virtual-size': number }[] | { 'virtual-size': number };
    const first = Array.isArray(qemu) ? qemu[0]! : qemu;
    expect(info.virtualSize).toBe(first['virtual-size']);
    expect(info.image).toBe(`${ng.url}/chain-subdir/vm/top.qcow2`);
    expect(info.remote.url).toBe(info.image);
    expect(info.remote.size).toBe(fs.statSync(fixturePath('chain-subdir/vm/top.qcow2')).size);
    expect(info.remote.etag).toMatch(/^"/);
    expect(info.remote.requests).toBeGreaterThan(0);
    expect(info.backingChain.map((l) => l.path)).toEqual([`${ng.url}/chain-subdir/backing/mid.qcow2`, `${ng.url}/chain-subdir/backing/base/base.qcow2`]);
  });

  it('refuses a malformed --header as a usage error without quoting it, and a missing object in one line', () => {
    let r = cli('qcow-info', ['--header', 'no-colon-SECRET', `${ng.url}/zlib-c64k/disk.qcow2`]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).not.toContain('SECRET');
    r = cli('qcow-info', [`${ng.url}/nope.qcow2?${SECRET}`]);
    expect(r.status).toBe(2);
    expect(r.stderr.trim()).toBe(`qcow-info: ${ng.url}/nope.qcow2: the server answered 404 Not Found`);
  });

  it('NODE_EXTRA_CA_CERTS, deferred by the commands to the first https open, still trusts a self-signed server', async () => {
    const tls = await startNginx(fixturesDir, { tls: true });
    try {
      const url = `${tls.url}/zlib-c64k/disk.qcow2`;
      // Run as a program, as users do: the first line moves the variable aside (src/io/trusted-ca.ts).
      const run = (extra: string | undefined) => {
        const env = { ...process.env };
        delete env.NODE_EXTRA_CA_CERTS;
        if (extra !== undefined) env.NODE_EXTRA_CA_CERTS = extra;
        return spawnSync(path.join(repoRoot, 'dist/cli/qcow-info.js'), ['--json', url], { encoding: 'utf8', env, timeout: 60_000 });
      };
      let r = run(tls.certFile!);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
      expect((JSON.parse(r.stdout) as { virtualSize: number }).virtualSize).toBeGreaterThan(0);
      r = run(undefined);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/certificate/);
      r = run(path.join(tmp, 'missing.pem'));
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/^qcow-info: warning: ignoring extra certificates from \S*missing\.pem \(NODE_EXTRA_CA_CERTS\): ENOENT/);
      expect(r.stderr).toMatch(/certificate/);
    } finally {
      await tls.stop();
    }
  });
});
