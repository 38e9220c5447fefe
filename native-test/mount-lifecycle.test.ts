/**
 * The daemon's life cycle with real FUSE mounts: background mode and -u, the foreground and Ctrl-C,
 * SIGTERM while reads are in flight, unmounting from outside, busy and lazy unmounts, a killed daemon,
 * and every mount error: one line, its exit code, and nothing left running or mounted.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesReady, loadManifest } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import {
  CLI,
  Scratch,
  alive,
  compareRange,
  daemonPid,
  daemonsFor,
  ensureBuilt,
  isMounted,
  mountsUnder,
  pidFileFor,
  waitFor,
} from './mount-support.js';

const ready = toolsAvailable('qemu-img', '/dev/fuse', 'fusermount3', 'umount', 'setpriv', 'unshare') && (fixturesReady() || process.env.CI === 'true');
/** Hiding /dev/fuse in a private mount namespace and switching to another user need root. */
const root = process.getuid?.() === 0;

let scratch: Scratch;
let image: string;
let bigImage: string;
let bigOracle: string;
let bigSize: number;
const children: ChildProcess[] = [];

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('life');
  const manifest = loadManifest();
  image = fixturePath(manifest.images.find((i) => i.name === 'v3-c64k')!.image);
  const big = manifest.images.find((i) => i.name === 'v3-c64k-l2cross')!;
  bigImage = fixturePath(big.image);
  bigOracle = fixturePath(big.views[0]!.oracle!);
  bigSize = big.views[0]!.size;
});

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

/** Asserts nothing is mounted and no daemon runs for this mount point. */
function nothingLeftFor(mnt: string): void {
  expect(isMounted(mnt), `${mnt} still mounted`).toBe(false);
  expect(daemonsFor(mnt), `daemon for ${mnt} still running`).toEqual([]);
  expect(pidFileFor(scratch, mnt), `pid file for ${mnt}`).toBeUndefined();
}

/** A reader process: reads the file in 1 MiB steps from `start` to the end, or until an error. */
function startReader(file: string, start = 0): ChildProcess {
  const code = `
    const fs = require('fs');
    const fd = fs.openSync(process.argv[1], 'r');
    const buf = Buffer.alloc(1 << 20);
    let pos = Number(process.argv[2]);
    process.stdout.write('open\\n');
    try {
      for (;;) { const n = fs.readSync(fd, buf, 0, buf.length, pos); if (n === 0) break; pos += n; }
      process.stdout.write('eof\\n');
    } catch (e) { process.stdout.write('error ' + e.code + '\\n'); process.exit(0); }
  `;
  const c = spawn(process.execPath, ['-e', code, file, String(start)], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(c);
  return c;
}

function exited(c: ChildProcess): Promise<void> {
  return c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise((r) => c.once('exit', () => r()));
}

function firstLine(c: ChildProcess): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    c.stdout!.on('data', (d: Buffer) => {
      text += d.toString();
      if (text.includes('\n')) resolve(text.split('\n')[0]!);
    });
  });
}

describe.skipIf(!ready)('background mode and -u', () => {
  it('returns once the mount answers, leaves a detached daemon with a pid file, and -u ends both', () => {
    const mnt = scratch.mountPoint('bg');
    const t0 = Date.now();
    const r = scratch.cli([image, mnt]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).toBe('');
    expect(Date.now() - t0).toBeLessThan(15_000);
    // Ready means ready: no waiting needed before the first read.
    expect(fs.readdirSync(mnt).sort()).toEqual(['active.raw', 'info.json', 'snapshots']);
    const pid = daemonPid(scratch, mnt)!;
    expect(alive(pid)).toBe(true);
    expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')).toContain('--daemon-child');
    expect(fs.readlinkSync(`/proc/${pid}/cwd`)).toBe('/'); // does not keep the caller's folder busy
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const [, , , sid] = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // state ppid pgrp session
    expect(Number(sid)).toBe(pid); // its own session: outlives the shell

    const u = scratch.unmount(mnt);
    expect(u.status, u.stderr).toBe(0);
    expect(u.stderr).toBe('');
    // -u waited: everything is gone the moment it returns.
    expect(alive(pid)).toBe(false);
    nothingLeftFor(mnt);
  });

  it('mounts the same image twice at once, and a folder again after it was unmounted', () => {
    const a = scratch.mountPoint('twice');
    const b = scratch.mountPoint('twice');
    scratch.mount(image, a);
    scratch.mount(image, b);
    expect(compareRange(path.join(a, 'active.raw'), path.join(b, 'active.raw'), 0, fs.statSync(path.join(a, 'active.raw')).size)).toBe(-1);
    expect(scratch.unmount(a).status).toBe(0);
    expect(isMounted(b)).toBe(true);
    scratch.mount(image, a);
    expect(scratch.unmount(a).status).toBe(0);
    expect(scratch.unmount(b).status).toBe(0);
    nothingLeftFor(a);
    nothingLeftFor(b);
  });
});

describe.skipIf(!ready)('foreground mode', () => {
  it.each(['SIGINT', 'SIGTERM'] as const)('-f serves until %s, then unmounts and exits 0', async (sig) => {
    const mnt = scratch.mountPoint('fg');
    const c = spawn(process.execPath, [CLI, '-f', image, mnt], { env: scratch.env(), stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(c);
    let stderr = '';
    c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await waitFor('the foreground mount', () => isMounted(mnt) && /mounted/.test(stderr), 15_000);
    expect(fs.statSync(path.join(mnt, 'active.raw')).size).toBeGreaterThan(0);
    c.kill(sig);
    await exited(c);
    expect(c.exitCode, stderr).toBe(0);
    expect(stderr).toMatch(new RegExp(`got ${sig}: unmounting`));
    nothingLeftFor(mnt);
  });
});

describe.skipIf(!ready)('ending the daemon', () => {
  it('SIGTERM while reads are in flight: the daemon unmounts and exits; the readers end', async () => {
    const mnt = scratch.mountPoint('sigterm');
    scratch.mount(bigImage, mnt);
    const pid = daemonPid(scratch, mnt)!;
    const readers = [0, 1, 2, 3].map((i) => startReader(path.join(mnt, 'active.raw'), i * 100 * 2 ** 20));
    await Promise.all(readers.map(firstLine));
    await new Promise((r) => setTimeout(r, 300));
    process.kill(pid, 'SIGTERM');
    await waitFor('the daemon to exit', () => !alive(pid), 10_000);
    nothingLeftFor(mnt);
    await Promise.race([Promise.all(readers.map(exited)), new Promise((_, rej) => setTimeout(() => rej(new Error('readers hang')), 10_000))]);
  });

  it.each([
    ['umount', ['umount']],
    ['fusermount3 -u', ['fusermount3', '-u']],
  ])('unmounted from outside with %s: the daemon notices and exits', async (_name, cmd) => {
    const mnt = scratch.mountPoint('ext');
    scratch.mount(image, mnt);
    const pid = daemonPid(scratch, mnt)!;
    const r = spawnSync(cmd[0]!, [...cmd.slice(1), mnt], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    await waitFor('the daemon to exit', () => !alive(pid), 5000);
    nothingLeftFor(mnt);
  });

  it('a busy mount: -u refuses with a clear message; -u -z detaches, open files keep working, then the daemon exits', async () => {
    const mnt = scratch.mountPoint('busy');
    scratch.mount(bigImage, mnt);
    const pid = daemonPid(scratch, mnt)!;
    // A process holding active.raw open, reading a range each time it gets a line.
    const code = `
      const fs = require('fs'); const crypto = require('crypto');
      const fd = fs.openSync(process.argv[1], 'r'); const buf = Buffer.alloc(1 << 20);
      process.stdout.write('open\\n');
      process.stdin.on('data', (d) => {
        for (const line of d.toString().split('\\n').filter(Boolean)) {
          if (line === 'quit') process.exit(0);
          const n = fs.readSync(fd, buf, 0, buf.length, Number(line));
          process.stdout.write(crypto.createHash('sha256').update(buf.subarray(0, n)).digest('hex') + '\\n');
        }
      });
    `;
    const holder = spawn(process.execPath, ['-e', code, path.join(mnt, 'active.raw')], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(holder);
    const lines: string[] = [];
    holder.stdout!.on('data', (d: Buffer) => lines.push(...d.toString().split('\n').filter(Boolean)));
    await waitFor('the holder to open the file', () => lines.includes('open'));

    const busy = scratch.unmount(mnt);
    expect(busy.status).toBe(4);
    expect(busy.stderr.trim().split('\n')).toHaveLength(1);
    expect(busy.stderr).toMatch(/^qcow-mount: .*busy.*-z/);
    expect(isMounted(mnt)).toBe(true);
    expect(alive(pid)).toBe(true);

    const lazy = scratch.cli(['-u', '-z', mnt]);
    expect(lazy.status, lazy.stderr).toBe(0);
    expect(isMounted(mnt)).toBe(false);
    expect(alive(pid)).toBe(true); // still serving the open file

    const offset = 300 * 2 ** 20 + 12345;
    holder.stdin!.write(`${offset}\n`);
    await waitFor('the read after the detach', () => lines.length >= 2);
    const oracle = Buffer.alloc(2 ** 20);
    const fd = fs.openSync(bigOracle, 'r');
    fs.readSync(fd, oracle, 0, oracle.length, offset);
    fs.closeSync(fd);
    const { createHash } = await import('node:crypto');
    expect(lines[1]).toBe(createHash('sha256').update(oracle).digest('hex'));

    holder.stdin!.write('quit\n');
    await exited(holder);
    await waitFor('the daemon to exit after the last close', () => !alive(pid), 5000);
    nothingLeftFor(mnt);
  });

  it('a busy mount held by a loop device: -u names the device and how to detach it', () => {
    const mnt = scratch.mountPoint('loop');
    scratch.mount(image, mnt);
    const attach = spawnSync('losetup', ['-r', '-f', '--show', path.join(mnt, 'active.raw')], { encoding: 'utf8' });
    expect(attach.status, attach.stderr).toBe(0);
    const device = attach.stdout.trim();
    try {
      const busy = scratch.unmount(mnt);
      expect(busy.status).toBe(4);
      expect(busy.stderr.trim().split('\n')).toHaveLength(1);
      expect(busy.stderr).toContain(`loop device ${device} (${path.join(mnt, 'active.raw')})`);
      expect(busy.stderr).toContain(`losetup -d ${device}`);
      expect(isMounted(mnt)).toBe(true);
    } finally {
      spawnSync('losetup', ['-d', device]);
    }
    // Detaching is asynchronous in the kernel: wait until sysfs lets go of the file.
    for (let i = 0; i < 50 && fs.existsSync(`/sys/block/${path.basename(device)}/loop/backing_file`); i++) spawnSync('sleep', ['0.1']);
    const u = scratch.unmount(mnt);
    expect(u.status, u.stderr).toBe(0);
    nothingLeftFor(mnt);
  });

  it('a killed daemon leaves a dead mount: mounting there is refused, -u clears it', () => {
    const mnt = scratch.mountPoint('killed');
    scratch.mount(image, mnt);
    const pid = daemonPid(scratch, mnt)!;
    process.kill(pid, 'SIGKILL');
    spawnSync('sleep', ['0.3']);
    expect(isMounted(mnt)).toBe(true);
    let code: string | undefined;
    try {
      fs.readdirSync(mnt); // (stat may still answer from the kernel's attribute cache)
    } catch (err) {
      code = (err as NodeJS.ErrnoException).code;
    }
    expect(code).toBe('ENOTCONN');
    const again = scratch.cli([image, mnt]);
    expect(again.status).toBe(3);
    expect(again.stderr).toMatch(/^qcow-mount: .*dead FUSE mount.*qcow-mount -u/);
    const u = scratch.unmount(mnt);
    expect(u.status, u.stderr).toBe(0);
    expect(isMounted(mnt)).toBe(false);
    expect(pidFileFor(scratch, mnt), 'the dead daemon\'s pid file').toBeUndefined();
    scratch.mount(image, mnt);
    expect(scratch.unmount(mnt).status).toBe(0);
    nothingLeftFor(mnt);
  });
});

describe.skipIf(!ready)('errors before mounting: one line, an exit code, nothing left behind', () => {
  const cases: [string, () => { args: string[]; mnt: string; prefix?: string[] }, number, RegExp][] = [
    ['missing image', () => ({ args: [scratch.path('missing.qcow2'), scratch.mountPoint()], mnt: '' }), 2, /missing\.qcow2: no such file/],
    [
      'image that is not qcow2',
      () => {
        fs.writeFileSync(scratch.path('text.qcow2'), 'hello, this is not an image\n'.repeat(100));
        return { args: [scratch.path('text.qcow2'), scratch.mountPoint()], mnt: '' };
      },
      2,
      /text\.qcow2: not a qcow2 image/,
    ],
    ['image that is a folder', () => ({ args: [scratch.root, scratch.mountPoint()], mnt: '' }), 2, /is a directory/],
    ['mount point missing', () => ({ args: [image, scratch.path('no-such-dir')], mnt: '' }), 3, /no-such-dir: mount point does not exist/],
    [
      'mount point is a file',
      () => {
        fs.writeFileSync(scratch.path('a-file'), '');
        return { args: [image, scratch.path('a-file')], mnt: '' };
      },
      3,
      /a-file: mount point is not a folder/,
    ],
    [
      'mount point not empty',
      () => {
        const m = scratch.mountPoint('full');
        fs.writeFileSync(path.join(m, 'x'), '');
        return { args: [image, m], mnt: m };
      },
      3,
      /mount point is not empty/,
    ],
    ['unknown -o option', () => ({ args: ['-o', 'allow_other,bogus_opt', image, scratch.mountPoint()], mnt: '' }), 1, /unknown mount option "bogus_opt"/],
    ['rw', () => ({ args: ['-o', 'rw', image, scratch.mountPoint()], mnt: '' }), 1, /rw .*read-only/],
    ['bad cache size', () => ({ args: ['--l2-cache', '12Q', image, scratch.mountPoint()], mnt: '' }), 1, /--l2-cache "12Q" is not a size/],
    ['unknown long option', () => ({ args: ['--frobnicate', image, scratch.mountPoint()], mnt: '' }), 1, /unknown option '--frobnicate'/],
    ['missing mount point argument', () => ({ args: [image], mnt: '' }), 1, /expected IMAGE and MOUNTPOINT/],
    ['-z without -u', () => ({ args: ['-z', image, scratch.mountPoint()], mnt: '' }), 1, /-z\/--lazy only goes with -u/],
    ['-u on a folder that is not mounted', () => ({ args: ['-u', scratch.mountPoint()], mnt: '' }), 4, /not mounted/],
    ['-u on a missing folder', () => ({ args: ['-u', scratch.path('gone')], mnt: '' }), 4, /gone: no such folder/],
    [
      'log file that cannot be written',
      () => ({ args: ['--log', scratch.path('no-dir/x.log'), image, scratch.mountPoint()], mnt: '' }),
      3,
      /cannot open the log file/,
    ],
    [
      'no /dev/fuse',
      () => {
        fs.writeFileSync(scratch.path('not-a-device'), '');
        // In a private mount namespace, hide /dev/fuse behind a plain file.
        return {
          args: [image, scratch.mountPoint()],
          mnt: '',
          prefix: ['unshare', '-m', 'sh', '-c', `mount --bind ${scratch.path('not-a-device')} /dev/fuse && exec "$@"`, 'sh'],
        };
      },
      3,
      /\/dev\/fuse is not a character device/,
    ],
  ];

  it.each(cases.filter(([name]) => root || name !== 'no /dev/fuse'))('%s', (_name, make, status, message) => {
    const before = mountsUnder(scratch.root).length;
    const { args, prefix } = make();
    const r = scratch.cli(args, { prefix });
    expect(r.status, r.stderr).toBe(status);
    const lines = r.stderr.trim().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^qcow-mount: /);
    expect(lines[0]).toMatch(message);
    expect(r.stdout).toBe('');
    expect(mountsUnder(scratch.root).length).toBe(before);
    expect(daemonsFor(scratch.root)).toEqual([]);
  });

  it('already mounted', () => {
    const mnt = scratch.mountPoint('already');
    scratch.mount(image, mnt);
    const pid = daemonPid(scratch, mnt)!;
    const r = scratch.cli([image, mnt]);
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/^qcow-mount: .*already a mount point \(fuse\.qcow-mount from .*disk\.qcow2\)/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(daemonsFor(mnt)).toEqual([pid]);
    expect(scratch.unmount(mnt).status).toBe(0);
    nothingLeftFor(mnt);
  });

  // A module preloaded with --import runs in the parent and (passed on with execArgv) in the daemon
  // child; these make only the child fail, after the parent's checks passed.
  it.each([
    [
      'the daemon fails before it is ready: its one-line error, exit 3',
      `if (process.argv.includes('--daemon-child')) fs.writeFileSync(process.argv.at(-1) + '/intruder', '');`,
      3,
      /^qcow-mount: .*mount point is not empty/,
    ],
    [
      'the daemon dies before it is ready: exit 3, pointing at the log',
      `if (process.argv.includes('--daemon-child')) process.kill(process.pid, 'SIGKILL');`,
      3,
      /^qcow-mount: the daemon was killed by SIGKILL before the mount was ready; see .*\.log$/,
    ],
  ])('%s', (_name, hookCode, status, message) => {
    const hook = scratch.path(`hook-${status}-${Math.random().toString(36).slice(2)}.mjs`);
    fs.writeFileSync(hook, `import fs from 'node:fs';\n${hookCode}\n`);
    const mnt = scratch.mountPoint('childfail');
    const r = scratch.cli([image, mnt], { nodeArgs: ['--import', hook] });
    expect(r.status, r.stderr).toBe(status);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr.trim()).toMatch(message);
    nothingLeftFor(mnt);
  });

  it.skipIf(!root)('unreadable image (as an unprivileged user)', () => {
    const dir = scratch.path('locked');
    fs.mkdirSync(dir, { mode: 0o755 });
    fs.chmodSync(scratch.root, 0o755);
    const img = path.join(dir, 'secret.qcow2');
    fs.copyFileSync(image, img);
    fs.chmodSync(img, 0o000);
    const mnt = scratch.mountPoint('locked');
    fs.chmodSync(mnt, 0o777);
    const r = scratch.cli([img, mnt], { prefix: ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] });
    fs.chmodSync(scratch.root, 0o700);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr.trim()).toMatch(/^qcow-mount: .*secret\.qcow2: permission denied$/);
    expect(daemonsFor(scratch.root)).toEqual([]);
    expect(isMounted(mnt)).toBe(false);
  });

  it('--help and --version', () => {
    const help = scratch.cli(['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/Usage: qcow-mount \[options\] IMAGE MOUNTPOINT/);
    expect(help.stdout).toMatch(/Exit codes/);
    const version = scratch.cli(['--version']);
    expect(version.status).toBe(0);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });
});

describe.skipIf(!ready)('nothing left behind', () => {
  it('no qcow-mount daemon and no mount under this file\'s test folder', () => {
    expect(daemonsFor(scratch.root)).toEqual([]);
    expect(mountsUnder(scratch.root)).toEqual([]);
    expect(fs.readdirSync(scratch.stateDir).filter((f) => f.endsWith('.pid'))).toEqual([]);
  });
});
