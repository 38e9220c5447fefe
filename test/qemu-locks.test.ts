import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { QEMU_WRITE_LOCK_BYTE, heldForWriting } from '../src/io/qemu-locks.js';
import { toolsAvailable } from './support/tools.js';

const haveQemu = toolsAvailable('qemu-img', 'qemu-io');

/** /proc/locks lines for this test file's own device and inode, as the kernel writes them. */
function locksFor(file: string, ranges: [string, string][], kind = 'OFDLCK'): string {
  const st = fs.statSync(file);
  const major = (Math.floor(st.dev / 256) & 0xfff).toString(16).padStart(2, '0');
  const minor = ((st.dev & 0xff) | (Math.floor(st.dev / 4096) & 0xfff00)).toString(16).padStart(2, '0');
  return ranges.map(([a, b], i) => `${i + 1}: ${kind} ADVISORY  READ -1 ${major}:${minor}:${st.ino} ${a} ${b}`).join('\n');
}

describe('QEMU write locks in /proc/locks', () => {
  const file = new URL(import.meta.url).pathname;

  it('byte 101 (permission "write") locked means a QEMU writer', () => {
    expect(QEMU_WRITE_LOCK_BYTE).toBe(101);
    // What qemu-storage-daemon with a writable export holds (seen on QEMU 7.2).
    expect(heldForWriting(file, locksFor(file, [['203', '203'], ['201', '201'], ['103', '103'], ['100', '101']]))).toBe(true);
    expect(heldForWriting(file, locksFor(file, [['101', '101']]))).toBe(true);
    expect(heldForWriting(file, locksFor(file, [['0', 'EOF']], 'POSIX'))).toBe(true);
  });

  it('a reader\'s locks (byte 100 and shared-permission bytes) are not a writer', () => {
    expect(heldForWriting(file, locksFor(file, [['100', '100'], ['201', '201'], ['203', '203']]))).toBe(false);
    expect(heldForWriting(file, '')).toBe(false);
  });

  it('locks on another file (other inode) do not count', () => {
    const st = fs.statSync(file);
    const other = locksFor(file, [['100', '101']]).replace(`:${st.ino} `, `:${st.ino + 1} `);
    expect(heldForWriting(file, other)).toBe(false);
  });
});

/*
 * A real holder: qemu-io keeps the image open (with QEMU's locks) while it sleeps. Asked of the kernel
 * (the native probe, where the addon is built) and read from /proc/locks, the answer is the same.
 */
describe.skipIf(!haveQemu)('a running qemu-io', () => {
  async function whileHeld(readOnly: boolean, check: (image: string) => void): Promise<void> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-locks-'));
    const image = path.join(dir, 'held.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '1M']);
    const child = spawn('qemu-io', [...(readOnly ? ['-r'] : []), '-c', 'sleep 20000', image], { stdio: 'ignore' });
    try {
      // Up once its locks show (a reader holds byte 100 too).
      const deadline = Date.now() + 10_000;
      const ino = fs.statSync(image).ino;
      while (!fs.readFileSync('/proc/locks', 'utf8').split('\n').some((l) => l.includes(`:${ino} `))) {
        if (Date.now() > deadline) throw new Error('qemu-io took no lock within 10 s');
        await new Promise((r) => setTimeout(r, 50));
      }
      check(image);
    } finally {
      child.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  it('open for writing: held', async () => {
    await whileHeld(false, (image) => {
      expect(heldForWriting(image)).toBe(true);
      expect(heldForWriting(image, fs.readFileSync('/proc/locks', 'utf8'))).toBe(true);
    });
  });

  it('read-only (-r): not held for writing', async () => {
    await whileHeld(true, (image) => {
      expect(heldForWriting(image)).toBe(false);
      expect(heldForWriting(image, fs.readFileSync('/proc/locks', 'utf8'))).toBe(false);
    });
  });
});
