/**
 * How the commands and the mount daemon end: exit codes, the error that carries one, and the one line
 * an error is reported as. Shared by cli/ and mount/ (the daemon reports to its parent with these).
 *
 * Exit codes (documented in the README):
 *   0  success
 *   1  usage: bad or missing arguments, unknown option
 *   2  the image cannot be used: missing, unreadable, not a valid image, or uses something unsupported;
 *      also an unknown snapshot name
 *   3  mount failure: mount point missing / not a folder / already mounted, no /dev/fuse, FUSE refused,
 *      or the daemon failed before it was ready
 *   4  unmount failure: not mounted, busy, or the daemon did not exit
 *   5  output failure: the output cannot be written (exists without --force, disk full, ...)
 *   6  qcow-export --best-effort completed with unreadable regions (written as zeros, listed)
 *  70  internal error (a bug: please report it)
 */
import { QcowError } from './errors.js';

export const EXIT = {
  OK: 0,
  USAGE: 1,
  IMAGE: 2,
  MOUNT: 3,
  UNMOUNT: 4,
  OUTPUT: 5,
  PARTIAL: 6,
  INTERNAL: 70,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** An error a command reports as one line with a chosen exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

const ERRNO_TEXT: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EISDIR: 'is a directory',
  ENOTDIR: 'not a directory',
  EEXIST: 'already exists',
  ENOSPC: 'no space left on device',
  EROFS: 'read-only file system',
  EBUSY: 'device or resource busy',
  EIO: 'input/output error',
  ENOTCONN: 'transport endpoint is not connected (a dead FUSE mount?)',
};

/** One line describing an error: a QcowError's message names its file; errno errors name their path. */
export function errorMessage(err: unknown): string {
  let text: string;
  if (err instanceof QcowError || err instanceof CliError) text = err.message;
  else if (err instanceof Error) {
    const e = err as NodeJS.ErrnoException;
    if (e.code && ERRNO_TEXT[e.code] && e.path) text = `${e.path}: ${ERRNO_TEXT[e.code]}`;
    else text = e.message;
  } else text = String(err);
  return text.split('\n')[0]!.trim() || 'unknown error';
}

/** The exit code an error maps to when the caller does not say otherwise. */
export function exitCodeFor(err: unknown, fallback: ExitCode = EXIT.INTERNAL): ExitCode {
  if (err instanceof CliError) return err.exitCode;
  if (err instanceof QcowError) return EXIT.IMAGE;
  return fallback;
}
