import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ensureStateDir,
  findMount,
  mountKey,
  parseMountInfo,
  pidFileAlive,
  pidFilePath,
  processStartTime,
  readPidFile,
  removeOwnPidFile,
  resolveMountPoint,
  writePidFile,
} from '../src/mount/system.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-mount-unit-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('mountinfo', () => {
  const text = [
    '22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
    '42 22 0:39 / /tmp/with\\040space ro,nosuid,nodev,relatime shared:5 master:2 - fuse.qcow-mount /img/a\\134b.qcow2 ro,user_id=0',
    '43 22 0:40 / /mnt/x rw - tmpfs tmpfs rw',
    '44 43 0:41 / /mnt/x rw - fuse.qcow-mount /img/b.qcow2 ro',
    '',
  ].join('\n');

  it('parses fields, optional tags and octal escapes', () => {
    const entries = parseMountInfo(text);
    expect(entries).toHaveLength(4);
    expect(entries[1]).toEqual({
      id: 42,
      parentId: 22,
      mountPoint: '/tmp/with space',
      options: 'ro,nosuid,nodev,relatime',
      fsType: 'fuse.qcow-mount',
      source: '/img/a\\b.qcow2',
    });
  });

  it('finds the top mount of a stacked mount point', () => {
    const entries = parseMountInfo(text);
    expect(findMount('/mnt/x', entries)?.id).toBe(44);
    expect(findMount('/mnt', entries)).toBeUndefined();
  });

  it('reads this process\'s real mountinfo', () => {
    expect(findMount('/')).toBeDefined();
  });
});

describe('pid files', () => {
  it('keys mount points by a short hash', () => {
    expect(mountKey('/mnt/x')).toMatch(/^[0-9a-f]{16}$/);
    expect(mountKey('/mnt/x')).not.toBe(mountKey('/mnt/y'));
    expect(pidFilePath('/mnt/x', '/state')).toBe(`/state/${mountKey('/mnt/x')}.pid`);
  });

  it('writes, reads and removes its own pid file', () => {
    const dir = ensureStateDir(path.join(tmp, 'state'));
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    const file = pidFilePath('/mnt/x', dir);
    writePidFile(file, { mountPoint: '/mnt/x', image: '/a.qcow2', log: null, started: 'now' });
    const info = readPidFile(file)!;
    expect(info.pid).toBe(process.pid);
    expect(info.startTime).toBe(processStartTime(process.pid));
    expect(pidFileAlive(info)).toBe(true);
    expect(pidFileAlive({ ...info, startTime: '1' })).toBe(false); // a reused pid is not ours
    removeOwnPidFile(file);
    expect(fs.existsSync(file)).toBe(false);
  });

  it('leaves a pid file that names another process', () => {
    const file = path.join(tmp, 'other.pid');
    fs.writeFileSync(file, JSON.stringify({ pid: 1, startTime: '', mountPoint: '/m', image: '/i', log: null, started: '' }));
    removeOwnPidFile(file);
    expect(fs.existsSync(file)).toBe(true);
    expect(readPidFile(path.join(tmp, 'missing.pid'))).toBeUndefined();
  });
});

describe('resolveMountPoint', () => {
  it('resolves relative paths and a symlinked parent without entering the last component', () => {
    const real = fs.mkdtempSync(path.join(tmp, 'real-'));
    fs.mkdirSync(path.join(real, 'mnt'));
    fs.symlinkSync(real, path.join(tmp, 'link'));
    expect(resolveMountPoint(path.join(tmp, 'link', 'mnt'))).toBe(path.join(fs.realpathSync(real), 'mnt'));
    fs.symlinkSync(path.join(real, 'mnt'), path.join(tmp, 'mntlink'));
    expect(resolveMountPoint(path.join(tmp, 'mntlink'))).toBe(path.join(fs.realpathSync(real), 'mnt'));
    expect(resolveMountPoint(path.join(tmp, 'nope'))).toBe(path.join(fs.realpathSync(tmp), 'nope'));
  });
});
