import { QcowError } from '../errors.js';

/** What one run of guest bytes is made of, as the qcow2 metadata says; no guest data is read to tell. */
export type ExtentKind =
  /** Stored uncompressed in a host file (the image, its external data file or a raw backing file). */
  | 'data'
  /** Reads as zeros because the image says so: a zero flag or a zero subcluster. */
  | 'zero'
  /**
   * Not allocated anywhere in the chain (or past the end of a shorter backing file, reported one level
   * below the image that ends): reads as zeros, and a sparse copy may leave a hole.
   */
  | 'unallocated'
  /** A compressed cluster (zlib or zstd), inflated on read. */
  | 'compressed';

export interface Extent {
  /** Guest offset of the run, in bytes. */
  start: number;
  length: number;
  kind: ExtentKind;
  /** Index of the image in the backing chain that holds the run: 0 = the top image. */
  depth: number;
  /** For 'data': where the run starts in its host file (the image, its data file or a raw backing file). */
  host?: number;
}

/** A readable view: the active disk, a snapshot's disk, a snapshot's VM state, or a raw backing file. */
export interface Disk {
  /** Size in bytes. */
  readonly size: number;
  /**
   * Reads into `into` from `position`; returns the bytes read: `into.length`, short only at the end of
   * the disk, 0 at or past it. Throws a QcowError for a bad region of the image.
   */
  readSync(into: Uint8Array, position: number): number;
  /** The same read, as a promise (the work is done synchronously on page-cached data; see README). */
  read(into: Uint8Array, position: number): Promise<number>;
  /** Runs covering [start, start + length) clipped to the disk, merged where kind and depth agree. */
  extents(start: number, length: number): Extent[];
  /**
   * The unit the disk is mapped in (a qcow2 cluster), where it has one: a caller that walks the disk in
   * windows sizes them by it.
   */
  readonly granularity?: number;
}

/** The bytes of a read at `position` that lie inside a disk of `size` bytes (0 at or past its end). */
export function clampLength(size: number, length: number, position: number): number {
  if (!Number.isSafeInteger(position) || position < 0) throw new QcowError('EINVAL', '', `invalid read position ${position}`);
  return Math.max(0, Math.min(length, size - position));
}

/** `read` for a disk whose work is synchronous: its result, or its QcowError, as a promise. */
export function readAsPromise(disk: Disk, into: Uint8Array, position: number): Promise<number> {
  try {
    return Promise.resolve(disk.readSync(into, position));
  } catch (err) {
    return Promise.reject(err);
  }
}
