import fs from 'node:fs';
import { QcowError, hex } from '../errors.js';
import { type ImageFile, newFileId, readWhole } from './image-file.js';

/** O_NOATIME keeps a forensic read from touching the image's atime; only the owner (or root) may ask. */
const NOATIME = fs.constants.O_NOATIME ?? 0;

/**
 * One host file opened read-only (the image, its external data file, or a backing file): positional
 * reads, bounded by the size it had when opened. A read that comes back short inside that size means
 * the file changed underneath us, and is reported as EIO rather than served as zeros.
 */
export class HostFile implements ImageFile {
  readonly id = newFileId();
  readonly size: number;
  readonly mtime: Date;
  private closed = false;

  private constructor(
    readonly path: string,
    readonly fd: number,
    stat: fs.Stats,
  ) {
    this.size = stat.size;
    this.mtime = stat.mtime;
  }

  /** Opens a file read-only. `allowNonRegular` admits block devices (a chain on LVM, say). */
  static open(path: string, options: { allowNonRegular?: boolean } = {}): HostFile {
    let fd: number;
    try {
      fd = openReadOnly(path);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const code = e.code === 'ENOENT' ? 'ENOENT' : e.code === 'EACCES' || e.code === 'EPERM' ? 'EACCES' : 'EBADIMAGE';
      const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' || e.code === 'EPERM' ? 'permission denied' : e.code === 'EISDIR' ? 'is a directory, not an image file' : (e.message ?? String(e));
      throw new QcowError(code, path, why, { cause: err });
    }
    try {
      const stat = fs.fstatSync(fd);
      if (stat.isDirectory()) throw new QcowError('EBADIMAGE', path, 'is a directory, not an image file');
      if (!stat.isFile() && !(options.allowNonRegular && stat.isBlockDevice())) {
        throw new QcowError('EBADIMAGE', path, 'is not a regular file (pass allowNonRegularFiles to read a block device)');
      }
      if (stat.isBlockDevice()) {
        const size = blockDeviceSize(stat.rdev);
        return new HostFile(path, fd, Object.assign(stat, { size }));
      }
      return new HostFile(path, fd, stat);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  readAt(into: Uint8Array, offset: number, length: number, position: number, what: string): void {
    const inFile = Math.max(0, Math.min(length, this.size - position));
    let done = 0;
    while (done < inFile) {
      let n: number;
      try {
        n = fs.readSync(this.fd, into, offset + done, inFile - done, position + done);
      } catch (err) {
        throw new QcowError('EIO', this.path, `reading ${what} at ${hex(position + done)}: ${(err as Error).message}`, { cause: err });
      }
      if (n === 0) {
        throw new QcowError('EIO', this.path, `${what} at ${hex(position + done)}: the file ends early (was ${this.size} bytes when opened; did it shrink?)`);
      }
      done += n;
    }
    if (inFile < length) into.fill(0, offset + inFile, offset + length);
  }

  readExact(position: number, length: number, what: string): Buffer {
    return readWhole(this, position, length, what);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }
}

/**
 * O_NONBLOCK: opening a fifo (or a tty) read-only would otherwise wait for a writer forever, before
 * fstat could tell it is not an image. On regular files and block devices it changes nothing.
 */
const NONBLOCK = fs.constants.O_NONBLOCK ?? 0;

function openReadOnly(path: string): number {
  if (NOATIME) {
    try {
      return fs.openSync(path, fs.constants.O_RDONLY | NOATIME | NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
    }
  }
  return fs.openSync(path, fs.constants.O_RDONLY | NONBLOCK);
}

/** Size of a block device, from sysfs: its stat says 0. */
function blockDeviceSize(rdev: number): number {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 0x100000) & 0xfff00) >>> 0);
  const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim());
  return sectors * 512;
}
