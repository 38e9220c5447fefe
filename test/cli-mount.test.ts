/**
 * qcow-mount's command line where no FUSE mount is needed: usage errors and their exit codes, the
 * attached -oOPTS form, refusing to unmount what is not a FUSE mount. (Mounting itself, and the errors
 * around it, are tested with real mounts in native-test/mount-lifecycle.test.ts.)
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../src/exit.js';
import { CLI, ensureBuilt } from '../native-test/mount-support.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-mount-cli-'));
beforeAll(() => ensureBuilt());
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, QCOW_MOUNT_STATE_DIR: path.join(tmp, 'state') } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, lines: r.stderr.trim().split('\n') };
}

describe('qcow-mount usage', () => {
  it('documents the exit codes the commands share', () => {
    expect(EXIT).toEqual({ OK: 0, USAGE: 1, IMAGE: 2, MOUNT: 3, UNMOUNT: 4, OUTPUT: 5, PARTIAL: 6, INTERNAL: 70 });
  });

  it.each([
    [['-oallow_other,bogus', 'a.qcow2', tmp], /unknown mount option "bogus"/],
    [['-o', 'uid=x', 'a.qcow2', tmp], /uid needs a numeric id/],
    [['--cluster-cache', '1.5G', 'a.qcow2', tmp], /--cluster-cache "1\.5G" is not a size/],
    [['-u', tmp, tmp], /-u needs exactly one argument/],
    [['-u'], /-u needs exactly one argument/],
    [[], /expected IMAGE and MOUNTPOINT \(got 0 arguments\)/],
    [['a', 'b', 'c'], /too many arguments|expected IMAGE and MOUNTPOINT/],
    [['-o'], /argument missing/],
  ])('%j is a usage error', (args, message) => {
    const r = cli(...args);
    expect(r.status, r.stderr).toBe(EXIT.USAGE);
    expect(r.lines).toHaveLength(1);
    expect(r.lines[0]).toMatch(/^qcow-mount: /);
    expect(r.lines[0]).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('refuses to unmount what is not a FUSE mount', () => {
    const r = cli('-u', '/proc');
    expect(r.status).toBe(EXIT.UNMOUNT);
    expect(r.lines).toEqual(['qcow-mount: /proc: not a FUSE mount (proc); qcow-mount -u only unmounts FUSE mounts']);
  });

  it('checks the image before the mount point', () => {
    const r = cli(path.join(tmp, 'missing.qcow2'), path.join(tmp, 'missing-dir'));
    expect(r.status).toBe(EXIT.IMAGE);
    expect(r.lines).toEqual([`qcow-mount: ${path.join(tmp, 'missing.qcow2')}: no such file`]);
  });

  it('--help names every option, the file names, the log and pid-file locations and the exit codes', () => {
    const r = cli('--help');
    expect(r.status).toBe(0);
    for (const s of ['--foreground', '--debug', '--log', '-o <OPTIONS>', '--l2-cache', '--cluster-cache', '--unmount', '--lazy', 'allow_other', 'uid=N', 'l2_cache_size', 'cluster_cache_size', 'fuse=native|compat', 'snapshots/NAME.raw', 'NAME.vmstate', 'XDG_RUNTIME_DIR', 'Exit codes']) {
      expect(r.stdout, s).toContain(s);
    }
    expect(r.stdout).not.toContain('daemon-child');
  });
});
