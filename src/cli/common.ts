/**
 * Helpers shared by the commands (qcow-mount, qcow-info, qcow-export): version, one-line error messages,
 * exit codes, size parsing and commander set-up.
 *
 * Exit codes (documented in the README):
 *   0  success
 *   1  usage: bad or missing arguments, unknown option
 *   2  the image cannot be used: missing, unreadable, not a valid qcow2 image, or uses something
 *      unsupported (encryption, qcow v1, ...); also an unknown snapshot name
 *   3  mount failure: mount point missing / not a folder / already mounted, no /dev/fuse, FUSE refused,
 *      or the daemon failed before it was ready
 *   4  unmount failure: not mounted, busy, or the daemon did not exit
 *   5  output failure: the output cannot be written (exists without --force, disk full, ...)
 *  70  internal error (a bug: please report it)
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { QcowError } from '../errors.js';

export const EXIT = {
  OK: 0,
  USAGE: 1,
  IMAGE: 2,
  MOUNT: 3,
  UNMOUNT: 4,
  OUTPUT: 5,
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

let cachedVersion: string | undefined;

/** The package version (src/cli and dist/cli are both two levels below the package root). */
export function packageVersion(): string {
  if (cachedVersion) return cachedVersion;
  try {
    const here = path.dirname(fileURLToPath(import.meta.url));
    const pkg = JSON.parse(fs.readFileSync(path.join(here, '..', '..', 'package.json'), 'utf8')) as { version?: string };
    cachedVersion = pkg.version ?? '0.0.0';
  } catch {
    cachedVersion = '0.0.0';
  }
  return cachedVersion;
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

/** The exit code an error maps to when a command does not say otherwise. */
export function exitCodeFor(err: unknown, fallback: ExitCode = EXIT.INTERNAL): ExitCode {
  if (err instanceof CliError) return err.exitCode;
  if (err instanceof QcowError) return EXIT.IMAGE;
  return fallback;
}

/** Prints `prog: message` (one line) on stderr. */
export function printError(prog: string, err: unknown): void {
  process.stderr.write(`${prog}: ${errorMessage(err)}\n`);
}

/** Prints the error and exits with its code. */
export function die(prog: string, err: unknown, fallback: ExitCode = EXIT.INTERNAL): never {
  printError(prog, err);
  process.exit(exitCodeFor(err, fallback));
}

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/**
 * Parses a byte count: a whole number with an optional binary suffix K, M, G or T (case-insensitive,
 * optionally followed by `B` or `iB`): `65536`, `64K`, `32M`, `1GiB`. Throws a CliError (usage) otherwise.
 */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$/i.exec(text);
  if (!m) throw new CliError(`${what} "${text}" is not a size (a number of bytes, or with a K, M, G or T suffix)`, EXIT.USAGE);
  const value = Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(value)) throw new CliError(`${what} "${text}" is too large`, EXIT.USAGE);
  return value;
}

/**
 * Common commander set-up: `--version`, errors printed as one line `prog: problem` with exit code 1
 * (commander's own code for usage errors), help and version exiting 0.
 */
export function configureProgram(program: Command, prog: string, description: string): Command {
  return program
    .name(prog)
    .description(description)
    .version(packageVersion(), '-V, --version', 'print the version and exit')
    .helpOption('-h, --help', 'print this help and exit')
    .showSuggestionAfterError(true)
    .configureOutput({
      outputError: (str, write) => write(`${prog}: ${str.replace(/^error: /, '').trim().split(/\s*\n\s*/).join(' ')}\n`),
    });
}

/**
 * Parses argv without letting commander exit the process: undefined when the command should go on,
 * else the exit code (0 after --help or --version; 1 after a usage error, which commander has printed).
 */
export function parseArguments(program: Command, argv: string[]): ExitCode | undefined {
  program.exitOverride();
  try {
    program.parse(argv);
    return undefined;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') return EXIT.OK;
    return EXIT.USAGE;
  }
}

/** Runs a command's main function: any error becomes one line and its exit code. */
export function runMain(prog: string, main: () => Promise<number | void> | number | void, fallback: ExitCode = EXIT.INTERNAL): void {
  Promise.resolve()
    .then(main)
    .then(
      (code) => {
        if (typeof code === 'number') process.exitCode = code;
      },
      (err: unknown) => {
        printError(prog, err);
        if (process.env.QCOW_MOUNT_DEBUG_ERRORS && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
        process.exitCode = exitCodeFor(err, fallback);
      },
    );
}
