import { QcowError, hex } from '../errors.js';

/**
 * What the rest of the library reads an image through: a file opened read-only with positional,
 * synchronous reads. A local file (HostFile) is one; anything else that serves bytes by offset can be.
 */
export interface ImageFile {
  /** Small integer naming this file in shared cache keys. */
  readonly id: number;
  /** The path (or location) the file was opened as, for messages. */
  readonly path: string;
  /** Size in bytes when opened; reads are bounded by it. */
  readonly size: number;
  readonly mtime: Date;
  /**
   * Reads `length` bytes at `position` into `into[offset..]`. Bytes past the end of the file (as sized at
   * open) read as zeros, as QEMU's file driver does; `what` names the data for the error message.
   */
  readAt(into: Uint8Array, offset: number, length: number, position: number, what: string): void;
  /** Reads a metadata structure that must lie wholly inside the file. */
  readExact(position: number, length: number, what: string): Buffer;
  close(): void;
}

let nextFileId = 0;

/** A fresh id for a newly opened file. */
export function newFileId(): number {
  return nextFileId++;
}

/** A cache key for (file, offset): a plain number while it stays exact, else a string. */
export function fileOffsetKey(fileId: number, offset: number): number | string {
  const key = offset * 1024 + (fileId % 1024);
  return fileId < 1024 && Number.isSafeInteger(key) ? key : `${fileId}:${offset}`;
}

/** Reads a metadata structure that must lie wholly inside `file` (the body of every readExact). */
export function readWhole(file: ImageFile, position: number, length: number, what: string): Buffer {
  if (position < 0 || position + length > file.size) {
    throw new QcowError('EIO', file.path, `${what} at ${hex(position)} (${length} bytes) lies past the end of the file (size ${file.size})`);
  }
  const buf = Buffer.allocUnsafe(length);
  file.readAt(buf, 0, length, position, what);
  return buf;
}
