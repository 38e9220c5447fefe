/**
 * The options every command takes about how the image is opened (qcow-mount, qcow-info, qcow-export
 * all accept them, with the same names and meaning), and the library options they become.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { type OpenOptions, type QcowImage, openImageSync } from '../image.js';
import { QcowError, oneLine } from '../errors.js';
import { problemLine } from '../problems.js';

export interface ImageCliOptions {
  dataFile?: string;
  /** commander's `--no-backing` sets this to false. */
  backing?: boolean;
  strict?: boolean;
  forceShare?: boolean;
}

export function addImageOptions(program: Command): Command {
  return program
    .option('--data-file <PATH>', "read the image's external data file from PATH instead of the name the image records")
    .option('--no-backing', 'ignore the backing file: unallocated clusters read as zeros (QEMU\'s backing=null), e.g. when the backing file is missing')
    .option('-U, --force-share', 'read an image that a running QEMU holds for writing (as qemu-img -U); the view may be inconsistent')
    .option('--strict', 'refuse a damaged image instead of hiding the snapshots whose table, extra data or L1 table cannot be read');
}

export function openOptionsFrom(opts: ImageCliOptions): OpenOptions {
  return {
    // Resolved here: the mount daemon runs in /.
    ...(opts.dataFile !== undefined ? { dataFile: path.resolve(opts.dataFile) } : {}),
    ...(opts.backing === false ? { noBacking: true } : {}),
    ...(opts.strict ? { strict: true } : {}),
    ...(opts.forceShare ? { forceShare: true } : {}),
  };
}

/** The same options as arguments, for a process started on the user's behalf (the mount daemon). */
export function imageArgs(o: OpenOptions): string[] {
  const args: string[] = [];
  if (o.dataFile !== undefined) args.push('--data-file', o.dataFile);
  if (o.noBacking) args.push('--no-backing');
  if (o.strict) args.push('--strict');
  if (o.forceShare) args.push('--force-share');
  return args;
}

/**
 * Whether an image that failed to open would open alone, without its backing chain: then the failure
 * is the backing file's, and `--no-backing` is the way to read the image.
 */
export function opensWithoutBacking(imagePath: string, options: OpenOptions): boolean {
  if (options.noBacking) return false;
  try {
    const alone = openImageSync(imagePath, { ...options, noBacking: true });
    const hasBacking = alone.header.backingFile !== undefined;
    alone.close();
    return hasBacking;
  } catch {
    return false;
  }
}

/** A refusal caused by the backing chain alone, with the hint that --no-backing reads the image. */
export function withNoBackingHint(err: unknown, imagePath: string, options: OpenOptions): unknown {
  if (!(err instanceof QcowError) || !opensWithoutBacking(imagePath, options)) return err;
  const problem = err.message.startsWith(`${err.file}: `) ? err.message.slice(err.file.length + 2) : err.message;
  return new QcowError(err.code, err.file, `${problem}; --no-backing reads the image alone (unallocated clusters as zeros)`, { cause: err });
}

/** One `PROG: warning: ...` line on stderr for each damaged part the image was opened without. */
export function warnProblems(prog: string, image: Pick<QcowImage, 'path' | 'problems' | 'heldForWriting'>): void {
  if (image.heldForWriting) process.stderr.write(`${prog}: warning: ${oneLine(liveWarning(image.path))}\n`);
  for (const p of image.problems) process.stderr.write(`${prog}: warning: ${oneLine(problemLine(image.path, p))}\n`);
}

export function liveWarning(imagePath: string): string {
  return `${imagePath}: a running QEMU holds the image for writing; reading it anyway (--force-share): the view may be inconsistent and goes stale as the VM writes`;
}
