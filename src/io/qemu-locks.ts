/**
 * Whether a running QEMU holds an image file for writing. QEMU (qemu-system, qemu-storage-daemon,
 * qemu-nbd) takes open file description locks on the image file (block/file-posix.c,
 * raw_apply_lock_bytes): a shared lock on byte 100 + N for each permission N it holds, and on
 * 200 + N for each permission it does not share. Permission 1 is "write", so a lock covering byte 101
 * means a writer; that is what `qemu-img` finds when it fails with `Failed to get shared "write" lock`.
 * The kernel lists every lock in /proc/locks with the file's device and inode.
 *
 * Node cannot take an OFD lock itself (no fcntl without a native addon), so this only looks: a QEMU
 * that starts after the check is not seen, and QEMU does not see us. Where the native addon is built it
 * asks the kernel about that byte (F_OFD_GETLK, QEMU's own test): reading /proc/locks makes the kernel
 * wait for an RCU grace period, 10-20 ms of every command's start on a machine like this one.
 */
import fs from 'node:fs';
import { copyAddon } from './copy-addon.js';

const LOCK_PERM_BASE = 100;
const PERM_WRITE_BIT = 1;
export const QEMU_WRITE_LOCK_BYTE = LOCK_PERM_BASE + PERM_WRITE_BIT;

/** The device and inode of a file as /proc/locks writes them: `MAJ:MIN:INODE`, major/minor in hex. */
function lockKey(st: fs.Stats): { major: number; minor: number; inode: number } {
  const dev = st.dev;
  return { major: Math.floor(dev / 256) & 0xfff, minor: (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00), inode: st.ino };
}

/** Asks the kernel (F_OFD_GETLK); undefined where it cannot (no addon, no OFD locks, unreadable file). */
function probeWriteByte(filePath: string): boolean | undefined {
  const p = copyAddon();
  if (!p) return undefined;
  let fd: number | undefined;
  try {
    fd = fs.openSync(filePath, 'r');
    return p.lockedByOthers(fd, QEMU_WRITE_LOCK_BYTE);
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * True when some process holds a lock covering QEMU's "write" permission byte of the file, i.e. a
 * running QEMU has it open for writing. `locksText` is /proc/locks (asked of the kernel directly, or
 * read, when not given).
 */
export function heldForWriting(filePath: string, locksText?: string): boolean {
  if (locksText === undefined) {
    const held = probeWriteByte(filePath);
    if (held !== undefined) return held;
  }
  let st: fs.Stats;
  let text: string;
  try {
    st = fs.statSync(filePath);
    text = locksText ?? fs.readFileSync('/proc/locks', 'utf8');
  } catch {
    return false; // no /proc/locks (not Linux): nothing to look at
  }
  const key = lockKey(st);
  for (const line of text.split('\n')) {
    // "1: OFDLCK ADVISORY  READ -1 fe:00:2155261 100 101"  (a "->" prefix marks a blocked waiter)
    const m = /^\d+:\s+(?:->\s+)?\S+\s+\S+\s+\S+\s+-?\d+\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s+(\d+)\s+(\d+|EOF)\s*$/i.exec(line);
    if (!m || line.includes('->')) continue;
    if (parseInt(m[1]!, 16) !== key.major || parseInt(m[2]!, 16) !== key.minor || Number(m[3]) !== key.inode) continue;
    const start = Number(m[4]);
    const end = m[5] === 'EOF' ? Infinity : Number(m[5]);
    if (start <= QEMU_WRITE_LOCK_BYTE && QEMU_WRITE_LOCK_BYTE <= end) return true;
  }
  return false;
}
