import { QcowError, type QcowErrorCode, hex } from '../errors.js';
import type { CopiedRange } from './copy-addon.js';

/** Where streamed host bytes go: a fresh (truncated) output file; all-zero blocks are left as holes. */
export interface StreamTarget {
  fd: number;
  /** Output offset of the range's first byte. */
  position: number;
  /** Blocks (aligned to the output offset) that hold only zeros are not written. */
  sparseBlock: number;
}

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
  /**
   * Where a file has a cheaper way than readAt for bulk copies (a remote file: the server's answer goes
   * straight into the output, not through the block cache): copies its bytes [position, position +
   * length) into `target`, several calls at once. Bytes past the end of the file are zeros (holes).
   * Rejects with a StreamFailed naming this file, with an errno error (syscall `write`) where the output
   * could not be written, or with the signal's reason once it aborts (no byte is written after that).
   */
  streamTo?(target: StreamTarget, position: number, length: number, signal?: AbortSignal): Promise<CopiedRange>;
  close(): void;
}

/** A streamTo that failed part way: the first `covered` bytes of its range are in the output. */
export class StreamFailed extends QcowError {
  constructor(
    code: QcowErrorCode,
    file: string,
    problem: string,
    readonly covered: number,
  ) {
    super(code, file, problem);
  }
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
