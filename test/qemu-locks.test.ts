import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { QEMU_WRITE_LOCK_BYTE, heldForWriting } from '../src/io/qemu-locks.js';

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
