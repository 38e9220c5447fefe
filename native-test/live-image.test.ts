/**
 * An image a running QEMU holds for writing: refused by all three commands in one line, as qemu-img
 * refuses it; read with -U / --force-share (one warning), equal to `qemu-img convert -U`; and a mount
 * of it notices when the image file changes underneath (log line, info.json `imageChanged`).
 * Holders: qemu-storage-daemon with a writable NBD export, and qemu-system-x86_64 -S with the image as
 * a drive.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt, isMounted, waitFor } from './mount-support.js';

const ready = toolsAvailable('qemu-img', 'qemu-io', 'qemu-storage-daemon', 'qemu-system-x86_64', '/dev/fuse', 'fusermount3');
let scratch: Scratch;
const holders: number[] = [];

const cmd = (name: string, args: string[]) =>
  spawnSync(process.execPath, [path.join(repoRoot, 'dist/cli', `${name}.js`), ...args], { encoding: 'buffer', maxBuffer: 1 << 27, timeout: 60_000 });

function makeImage(name: string): string {
  const img = scratch.path(name);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '8M']);
  execFileSync('qemu-io', ['-c', 'write -P 0x61 0 1M', '-c', 'write -P 0x62 6M 64k', img], { stdio: 'ignore' });
  return img;
}

function pidFrom(file: string): number {
  const pid = Number(fs.readFileSync(file, 'utf8').trim());
  holders.push(pid);
  return pid;
}

function stop(pid: number): void {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    // gone
  }
}

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('live');
});
afterAll(() => {
  for (const pid of holders) stop(pid);
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

function expectRefusedEverywhere(img: string): void {
  for (const [name, args] of [
    ['qcow-info', [img]],
    ['qcow-export', [img, scratch.path('refused.raw')]],
  ] as const) {
    const r = cmd(name, [...args]);
    expect(r.status, `${name}: ${r.stderr.toString()}`).toBe(2);
    const lines = r.stderr.toString().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`${name}: ${img}: failed to get shared "write" lock`);
  }
  expect(fs.existsSync(scratch.path('refused.raw'))).toBe(false);
  const mnt = scratch.mountPoint('refused');
  const m = scratch.cli([img, mnt]);
  expect(m.status).toBe(2);
  expect(m.stderr).toMatch(/^qcow-mount: .*failed to get shared "write" lock.*-U/);
  expect(isMounted(mnt)).toBe(false);
}

function expectForceShareReads(img: string): void {
  const oracle = scratch.path(`${path.basename(img)}.qemu.raw`);
  execFileSync('qemu-img', ['convert', '-U', '-O', 'raw', img, oracle]);
  const r = cmd('qcow-export', ['-U', img, '-']);
  expect(r.status, r.stderr.toString()).toBe(0);
  expect(r.stderr.toString()).toMatch(/^qcow-export: warning: .*running QEMU holds the image for writing.*inconsistent.*\n$/);
  expect(r.stdout.equals(fs.readFileSync(oracle))).toBe(true);
}

describe.skipIf(!ready)('live images', () => {
  it('held by qemu-storage-daemon (writable NBD export): refused, read with -U; a mount notices the change', async () => {
    const img = makeImage('qsd.qcow2');
    const sock = scratch.path('nbd.sock');
    const pidFile = scratch.path('qsd.pid');
    execFileSync('qemu-storage-daemon', [
      '--blockdev', `driver=file,node-name=file0,filename=${img}`,
      '--blockdev', 'driver=qcow2,node-name=disk0,file=file0',
      '--nbd-server', `addr.type=unix,addr.path=${sock}`,
      '--export', 'type=nbd,id=exp0,node-name=disk0,writable=on',
      '--daemonize', '--pidfile', pidFile,
    ]);
    const pid = pidFrom(pidFile);
    expectRefusedEverywhere(img);
    expectForceShareReads(img);

    const mnt = scratch.mountPoint('live');
    const log = scratch.path('live.log');
    const m = scratch.cli(['-U', '--log', log, img, mnt]);
    expect(m.status, m.stderr).toBe(0);
    try {
      expect(m.stderr).toMatch(/^qcow-mount: warning: .*running QEMU holds the image for writing/);
      // The VM side writes through the export: new clusters grow the file.
      execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x63 3M 1M', `nbd+unix:///disk0?socket=${sock}`], { stdio: 'ignore' });
      await waitFor('the mount to notice the change', () => fs.readFileSync(log, 'utf8').includes('changed while mounted'), 10_000);
      expect(fs.readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('changed while mounted'))).toHaveLength(1);
      const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { heldForWriting: boolean; imageChanged: { fileSize: number } | null };
      expect(info.heldForWriting).toBe(true);
      expect(info.imageChanged).not.toBeNull();
      expect(info.imageChanged!.fileSize).toBe(fs.statSync(img).size);
    } finally {
      expect(scratch.unmount(mnt).status).toBe(0);
    }
    stop(pid);
    await waitFor('qemu-storage-daemon to exit', () => !fs.existsSync(`/proc/${pid}`), 10_000);
    // Not held any more: read without -U, no warning.
    const after = cmd('qcow-info', [img]);
    expect(after.status).toBe(0);
    expect(after.stderr.toString()).toBe('');
  });

  it('held by qemu-system-x86_64 -S: refused, read with -U', async () => {
    const img = makeImage('vm.qcow2');
    const pidFile = scratch.path('vm.pid');
    execFileSync('qemu-system-x86_64', [
      '-S', '-display', 'none', '-nodefaults', '-machine', 'accel=tcg', '-m', '64',
      '-drive', `file=${img},format=qcow2,if=virtio`,
      '-daemonize', '-pidfile', pidFile,
    ]);
    const pid = pidFrom(pidFile);
    expectRefusedEverywhere(img);
    expectForceShareReads(img);
    stop(pid);
    await waitFor('QEMU to exit', () => !fs.existsSync(`/proc/${pid}`), 10_000);
  });
});
