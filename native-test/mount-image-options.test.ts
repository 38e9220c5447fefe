/**
 * qcow-mount with the options that change how the image is opened: --no-backing serves an overlay whose
 * backing file is gone, equal to QEMU's `backing: null`; without it the refusal names the option.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt, isMounted } from './mount-support.js';

const ready = toolsAvailable('qemu-img', 'qemu-io', '/dev/fuse', 'fusermount3');
let scratch: Scratch;
let top: string;
let oracle: string;

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('options');
  const base = scratch.path('base.qcow2');
  top = scratch.path('top.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '8M']);
  execFileSync('qemu-io', ['-c', 'write -P 0x11 0 8M', base], { stdio: 'ignore' });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top], { cwd: scratch.root });
  execFileSync('qemu-io', ['-c', 'write -P 0x22 1M 192k', '-c', 'write -z 3M 64k', top], { stdio: 'ignore' });
  fs.rmSync(base);
  oracle = scratch.path('oracle.raw');
  execFileSync('qemu-img', ['convert', '-O', 'raw', `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: top }, backing: null })}`, oracle]);
});
afterAll(() => {
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

describe.skipIf(!ready)('qcow-mount --no-backing', () => {
  it('refuses the overlay without it, naming the option; serves QEMU\'s backing=null bytes with it', () => {
    const mnt = scratch.mountPoint();
    const refused = scratch.cli([top, mnt]);
    expect(refused.status).toBe(2);
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    expect(refused.stderr).toMatch(/^qcow-mount: .*backing file "base\.qcow2".*--no-backing/);
    expect(isMounted(mnt)).toBe(false);

    scratch.mount(top, mnt, ['--no-backing']);
    try {
      expect(fs.readFileSync(path.join(mnt, 'active.raw')).equals(fs.readFileSync(oracle))).toBe(true);
    } finally {
      expect(scratch.unmount(mnt).status).toBe(0);
    }
  });
});
