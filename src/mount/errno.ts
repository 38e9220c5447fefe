import os from 'node:os';
import { QcowError } from '../errors.js';

/** Negative errno values, as FUSE callbacks return them. */
export const ERRNO = {
  ENOENT: -os.constants.errno.ENOENT,
  EIO: -os.constants.errno.EIO,
  EACCES: -os.constants.errno.EACCES,
  EBADF: -os.constants.errno.EBADF,
  EINVAL: -os.constants.errno.EINVAL,
  EISDIR: -os.constants.errno.EISDIR,
  ENOTDIR: -os.constants.errno.ENOTDIR,
  EROFS: -os.constants.errno.EROFS,
} as const;

/**
 * The errno a failed request answers with. A QcowError says what kind of problem the image has; a bad
 * region found while serving (EIO) and anything unexpected are both EIO: the request fails, the daemon
 * keeps serving.
 */
export function errnoFor(err: unknown): number {
  if (err instanceof QcowError) {
    switch (err.code) {
      case 'ENOENT':
        return ERRNO.ENOENT;
      case 'EACCES':
        return ERRNO.EACCES;
      case 'EINVAL':
        return ERRNO.EINVAL;
      default:
        return ERRNO.EIO;
    }
  }
  return ERRNO.EIO;
}

/** One line for the log: a QcowError's message names the image file and the problem. */
export function describeFailure(err: unknown): string {
  if (err instanceof QcowError) return err.message;
  if (err instanceof Error) return `internal error: ${err.message}`;
  return `internal error: ${String(err)}`;
}
