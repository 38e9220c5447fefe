import fs from 'node:fs';
import path from 'node:path';
import type { Disk } from '../disk/disk.js';
import { type CopyOptions, type CopyResult, type CopyTarget, copyDisk } from './copy-disk.js';

/** A problem with the output (exists, is a folder, is the image...): the message is one line. */
export class ExportError extends Error {
  constructor(
    message: string,
    readonly code: 'EEXIST' | 'EISDIR' | 'EINVAL' | 'EIO' = 'EIO',
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ExportError';
  }
}

export interface ExportOptions extends CopyOptions {
  /** Replace an existing regular file (atomically, by rename) or write over a block device. */
  force?: boolean;
  /** Files the output must never be (the image, its backing files, its data file). */
  protect?: readonly string[];
  /** Where standard output goes, for `-` (default 1). */
  stdoutFd?: number;
}

export interface ExportResult extends CopyResult {
  /** How the output was written ('discard': /dev/null, nothing written, only hashed). */
  mode: 'file' | 'stream' | 'device' | 'discard';
}

/**
 * Writes a view to `output`:
 * - `-`: standard output, every byte written (zeros too) in order.
 * - a new path, or an existing regular file with `force`: a sparse temporary file next to it (holes for
 *   zero and unallocated runs and for all-zero blocks), renamed into place only once complete, so a
 *   failure or an interruption leaves no partial file. Without `force` an existing file is never replaced,
 *   not even by a race: the finished file is hard-linked into place, which fails if the name was taken.
 * - `/dev/null`: nothing is written (the view is only read, for its digest).
 * - an existing character device or FIFO (a named pipe, a terminal): written as a stream.
 * - an existing block device, with `force` only: written in place, every byte (its old contents are not
 *   zeros).
 */
export async function exportToPath(disk: Disk, output: string, options: ExportOptions = {}): Promise<ExportResult> {
  if (output === '-') {
    const result = await copyDisk(disk, { fd: options.stdoutFd ?? 1, sparse: false }, options);
    return { ...result, mode: 'stream' };
  }
  if (output === '') throw new ExportError('the output path is empty', 'EINVAL');

  let stat: fs.Stats | undefined;
  try {
    stat = fs.statSync(output);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') throw new ExportError(`${output}: ${describeErrno(err)}`, 'EIO', { cause: err });
  }
  if (stat) checkNotProtected(output, stat, options.protect ?? []);

  if (stat?.isDirectory()) throw new ExportError(`${output}: is a directory (give a file name for the raw output)`, 'EISDIR');
  if (stat && isDevNull(stat)) return { ...(await copyDisk(disk, undefined, options)), mode: 'discard' };
  if (stat && (stat.isCharacterDevice() || stat.isFIFO() || stat.isSocket())) {
    const fd = openOrThrow(output, 'w');
    try {
      return { ...(await copyDisk(disk, { fd, sparse: false }, options)), mode: 'stream' };
    } finally {
      fs.closeSync(fd);
    }
  }
  if (stat?.isBlockDevice()) {
    if (!options.force) throw new ExportError(`${output}: is a block device; pass --force to write over it`, 'EEXIST');
    const fd = openOrThrow(output, 'r+');
    try {
      return { ...(await copyDisk(disk, { fd, sparse: false, positional: true }, options)), mode: 'device' };
    } finally {
      fs.closeSync(fd);
    }
  }
  if (stat && !options.force) throw new ExportError(`${output}: already exists (pass --force to replace it)`, 'EEXIST');

  // A symbolic link to a file: replace the file it names, as writing through the link would.
  const dest = stat ? fs.realpathSync(output) : output;
  // Unique enough with the pid ('wx' refuses a name in use); not a secret, so Math.random (node:crypto
  // would cost the start ~5 ms).
  const tag = Math.floor(Math.random() * 0x1_0000_0000).toString(16).padStart(8, '0');
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.${process.pid}.${tag}.part`);
  const fd = openOrThrow(tmp, 'wx', dest);
  let fdOpen = true;
  try {
    fs.ftruncateSync(fd, disk.size);
    const result = await copyDisk(disk, { fd, sparse: true }, options);
    if (stat) fs.fchmodSync(fd, stat.mode & 0o7777);
    fdOpen = false;
    fs.closeSync(fd);
    moveIntoPlace(tmp, dest, options.force === true);
    return { ...result, mode: 'file' };
  } catch (err) {
    if (fdOpen) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    if (err instanceof ExportError || !(err as NodeJS.ErrnoException).syscall) throw err;
    // An errno from writing: name the output, not the temporary file.
    throw new ExportError(`${output}: ${describeErrno(err)}`, 'EIO', { cause: err });
  }
}

/** The null device (by device number, so that a link to it or a second node counts too). */
function isDevNull(stat: fs.Stats): boolean {
  if (!stat.isCharacterDevice()) return false;
  try {
    return fs.statSync('/dev/null').rdev === stat.rdev;
  } catch {
    return false;
  }
}

function moveIntoPlace(tmp: string, dest: string, replace: boolean): void {
  if (replace) {
    fs.renameSync(tmp, dest);
    return;
  }
  try {
    fs.linkSync(tmp, dest);
    fs.unlinkSync(tmp);
    return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new ExportError(`${dest}: was created by someone else while exporting; not replaced (pass --force to replace it)`, 'EEXIST');
    // File systems without hard links (vfat, some FUSE ones): check, then rename.
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EMLINK') throw err;
  }
  if (fs.existsSync(dest)) throw new ExportError(`${dest}: was created by someone else while exporting; not replaced (pass --force to replace it)`, 'EEXIST');
  fs.renameSync(tmp, dest);
}

function checkNotProtected(output: string, stat: fs.Stats, protect: readonly string[]): void {
  for (const p of protect) {
    let other: fs.Stats;
    try {
      other = fs.statSync(p);
    } catch {
      continue;
    }
    if (other.dev === stat.dev && other.ino === stat.ino) {
      throw new ExportError(`${output}: is ${p === protect[0] ? 'the image being exported' : `a file the image reads (${p})`}; refusing to write over it`, 'EINVAL');
    }
  }
}

function openOrThrow(file: string, flags: string, shownAs = file): number {
  try {
    return fs.openSync(file, flags, 0o666);
  } catch (err) {
    throw new ExportError(`${shownAs}: cannot create the output: ${describeErrno(err)}`, 'EIO', { cause: err });
  }
}

const ERRNO_TEXT: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOSPC: 'no space left on device',
  EDQUOT: 'disk quota exceeded',
  EROFS: 'read-only file system',
  EISDIR: 'is a directory',
  ENOTDIR: 'a component of the path is not a directory',
  EPIPE: 'broken pipe (the reader went away)',
  EFBIG: 'file too large for the file system',
  EIO: 'input/output error',
};

/** An errno as a short phrase (`no space left on device`), without Node's `ENOSPC: ..., write` framing. */
export function describeErrno(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return (e.code && ERRNO_TEXT[e.code]) ?? e.message ?? String(err);
}

export type { CopyTarget };
