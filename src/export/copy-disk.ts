import { QcowError } from '../errors.js';
import fs from 'node:fs';
import type { Hash } from 'node:crypto';
import os from 'node:os';
import type { Disk } from '../disk/disk.js';
import { ReadPool, type ViewSpec } from './read-pool.js';
import { type NativeCopier, nativeCopier } from './native-copy.js';
import { StreamCopies, streamingFiles } from './stream-copies.js';
import type { HostFile } from '../io/host-file.js';

/** Bytes read (and written) per step of a data run: large, so that syscalls and hops stay few. */
export const DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024;
/**
 * Inside data runs, blocks of this size that hold only zeros are skipped (left as holes), as
 * `qemu-img convert` does with its default `-S 4k`.
 */
export const SPARSE_BLOCK_BYTES = 4096;

/** Where the view's bytes go. */
export interface CopyTarget {
  fd: number;
  /**
   * `true`: a fresh file, already truncated to the view's size, written with positional writes; zero
   * and unallocated runs and all-zero blocks are skipped and stay holes.
   * `false`: a stream (a pipe, a terminal, a character device) or a device whose old contents must be
   * overwritten: every byte is written, zeros included, in order.
   */
  sparse: boolean;
  /** For `sparse: false`: write at positions (a block device) rather than appending (a pipe). */
  positional?: boolean;
}

/** A region of the view that could not be read (best effort): written as zeros. */
export interface BadRegion {
  /** Guest offset and length in the view. */
  offset: number;
  length: number;
  /** Why (the read's one-line error). */
  reason: string;
}

export interface BestEffort {
  /** Pieces a failed chunk is read again in (the image's cluster size): the unit of a bad region. */
  granularity: number;
  onBadRegion(region: BadRegion): void;
}

export interface CopyOptions {
  /**
   * Where a region cannot be read (an L2 table or cluster past the end of the file, a corrupt
   * compressed cluster, a failed decryption), write zeros, report it and keep going.
   */
  bestEffort?: BestEffort;
  /** Updated with every byte of the view, in order (zero runs included). */
  hash?: Hash;
  /** Called after each step with the bytes done so far. */
  onProgress?: (done: number) => void;
  chunkBytes?: number;
  /** Stops the copy between steps (the promise rejects with the signal's reason). */
  signal?: AbortSignal;
  /** Read on worker threads where the view holds much compressed data (inflating is the slow part). */
  parallel?: ParallelOptions;
}

export interface CopyResult {
  /** The view's size: every byte was produced. */
  bytes: number;
  /** Bytes actually written to the target (the rest are holes in a sparse target). */
  written: number;
  /** Bytes of the view that the image stores (data and compressed runs), read from the image. */
  read: number;
}

/**
 * Copies a whole view to `target`, or (target undefined) only hashes it. The run structure comes from
 * `disk.extents()`, so zero and unallocated runs cost no reads; data and compressed runs are read in
 * large chunks into reused buffers, and each chunk is written (asynchronously, on the thread pool)
 * while the next ones are read, so reading and writing overlap. With `parallel`, and where the view holds
 * enough compressed data to pay for it, chunks are read (and inflated) by worker threads, several at once.
 */
export async function copyDisk(disk: Disk, target: CopyTarget | undefined, options: CopyOptions = {}): Promise<CopyResult> {
  const chunk = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const zeros = Buffer.alloc(chunk);
  const { hash, onProgress, signal, parallel, bestEffort } = options;
  const writer = target ? new Writer(target) : undefined;
  let read = 0;

  // Steps that write nothing (holes) never wait, so the event loop is let in now and then: signals,
  // the progress bar's timer and cancellation keep working on a long run of zeros.
  let lastYield = Date.now();
  const step = async (pos: number) => {
    onProgress?.(pos);
    if (Date.now() - lastYield >= 100) {
      await new Promise<void>((r) => setImmediate(r));
      lastYield = Date.now();
    }
    signal?.throwIfAborted();
  };

  const hole = async (start: number, length: number) => {
    const end = start + length;
    if (!hash && (!writer || writer.sparse)) return step(end); // nothing to read, hash or write
    for (let pos = start; pos < end; ) {
      const n = Math.min(chunk, end - pos);
      const z = zeros.subarray(0, n);
      hash?.update(z);
      if (writer && !writer.sparse) await writer.write(z, pos);
      pos += n;
      await step(pos);
    }
  };

  const data = async (bytes: Buffer, pos: number) => {
    read += bytes.length;
    hash?.update(bytes);
    if (writer) {
      if (writer.sparse) await writeNonZero(writer, bytes, pos, zeros);
      else await writer.write(bytes, pos);
    }
    await step(pos + bytes.length);
  };

  // Data runs stored as they are read go from the image file to the output file in the native addon, where
  // nothing needs their bytes here (no digest, no best-effort checks).
  const native = writer?.sparse && !hash && !bestEffort ? nativeCopier(disk) : undefined;
  // Data runs of a remote file go from the server's answers straight into the output, several at once.
  const streamFile = writer?.sparse && !hash ? streamingFiles(disk) : undefined;
  const streams = streamFile ? new StreamCopies(writer!.fd, SPARSE_BLOCK_BYTES) : undefined;
  // A digest is computed on this thread: reading on a worker meanwhile overlaps the two.
  const workers = parallel ? workerCount(disk, parallel, hash !== undefined) : 0;
  try {
    if (workers > 0) await copyWithPool(disk, chunk, new ReadPool(parallel!.spec, workers), workers * 2, writer, hole, data, bestEffort);
    else {
      // Buffers in turn: one is read into while the others' writes finish. A buffer is reused only once
      // its own writes are done (a chunk with nothing to write does not tell us that on its own).
      const count = (writer?.maxInFlight ?? 1) + 1;
      const buffers = Array.from({ length: count }, () => Buffer.allocUnsafe(chunk));
      const written: Promise<void>[] = buffers.map(() => Promise.resolve());
      let turn = 0;
      const readChunk = async (pos: number, length: number) => {
        await written[turn];
        const bytes = buffers[turn]!.subarray(0, length);
        let got: number;
        try {
          got = disk.readSync(bytes, pos);
        } catch (err) {
          if (!bestEffort || !(err instanceof QcowError)) throw err;
          got = readBestEffort(disk, bytes, pos, bestEffort);
        }
        if (got !== length) throw new Error(`short read at ${pos}: ${got} of ${length} bytes`);
        await data(bytes, pos);
        if (writer) written[turn] = writer.mark();
        turn = (turn + 1) % count;
      };
      // A streamed run that failed: an error, or in best effort the rest of it read the usual way.
      const streamFailures = async () => {
        for (let f = streams?.failed.shift(); f; f = streams!.failed.shift()) {
          if (!bestEffort || !(f.error instanceof QcowError)) throw f.error;
          const end = f.pos + f.length;
          for (let pos = f.pos + f.covered; pos < end; pos += chunk) await readChunk(pos, Math.min(chunk, end - pos));
        }
      };
      for (const t of tasks(disk, chunk, bestEffort !== undefined)) {
        if (t.hole) {
          await hole(t.pos, t.length);
          continue;
        }
        const remote = streamFile && t.kind === 'data' && t.host !== undefined ? streamFile(t.depth) : undefined;
        if (remote) {
          await streams!.add(remote, t.pos, t.host!, t.length);
          await streamFailures();
          await step(t.pos + t.length);
          continue;
        }
        await streams?.flush();
        const file = native && t.kind === 'data' && t.host !== undefined ? native.hostFile(t.depth) : undefined;
        if (file) {
          const n = copyNatively(native!, writer!, file, t);
          read += n;
          await step(t.pos + t.length);
          continue;
        }
        await readChunk(t.pos, t.length);
      }
      if (streams) {
        await streams.flush();
        await streams.drain();
        await streamFailures();
      }
    }
    if (writer) await writer.drain();
  } catch (err) {
    // Let a write in flight finish (and stop the streams) before the caller closes or removes the file.
    await streams?.cancel();
    if (writer) await writer.drain().catch(() => undefined);
    throw err;
  }
  read += streams?.covered ?? 0;
  return { bytes: disk.size, written: (writer?.written ?? 0) + (streams?.written ?? 0), read };
}

/** Reading on worker threads: up to `depth` chunks in flight, handled in order as they come back. */
async function copyWithPool(
  disk: Disk,
  chunk: number,
  pool: ReadPool,
  depth: number,
  writer: Writer | undefined,
  hole: (start: number, length: number) => Promise<void>,
  data: (bytes: Buffer, pos: number) => Promise<void>,
  bestEffort?: BestEffort,
): Promise<void> {
  type Queued = { pos: number; length: number; hole: true } | { pos: number; length: number; hole: false; buffer: Promise<ArrayBuffer> };
  const queue: Queued[] = [];
  const free: ArrayBuffer[] = [];
  // Buffers handed to the writer: free again once the writer has drained.
  let retired: ArrayBuffer[] = [];
  let allocated = 0;
  let reading = 0;
  const takeBuffer = async (): Promise<ArrayBuffer> => {
    if (free.length === 0 && allocated < depth + 2) {
      allocated++;
      return new ArrayBuffer(chunk);
    }
    if (free.length === 0) {
      if (writer) await writer.drain();
      free.push(...retired);
      retired = [];
    }
    return free.pop()!;
  };
  const handleHead = async () => {
    const q = queue.shift()!;
    if (q.hole) return hole(q.pos, q.length);
    reading--;
    let buffer: ArrayBuffer;
    try {
      buffer = await q.buffer;
    } catch (err) {
      if (!bestEffort || !(err instanceof QcowError)) throw err;
      // Read again here, piece by piece, into a buffer of our own.
      buffer = new ArrayBuffer(chunk);
      readBestEffort(disk, Buffer.from(buffer, 0, q.length), q.pos, bestEffort);
    }
    await data(Buffer.from(buffer, 0, q.length), q.pos);
    retired.push(buffer);
  };
  try {
    for (const t of tasks(disk, chunk, bestEffort !== undefined)) {
      if (t.hole) queue.push({ ...t, hole: true });
      else {
        const buffer = pool.read(await takeBuffer(), t.pos, t.length);
        buffer.catch(() => undefined); // rejections are handled in order, by handleHead
        queue.push({ ...t, hole: false, buffer });
        reading++;
      }
      while (queue.length > 0 && (reading >= depth || queue[0]!.hole)) await handleHead();
    }
    while (queue.length > 0) await handleHead();
  } finally {
    await pool.close();
  }
}

type Task = { hole: boolean; pos: number; length: number; kind?: string; depth: number; host?: number };

/**
 * A chunk of a data run copied by the native addon into the (fresh, truncated) output; bytes past the end of a
 * shorter host file are zeros there already. Returns the bytes copied.
 */
function copyNatively(copier: NativeCopier, writer: Writer, file: HostFile, t: Task): number {
  const host = t.host!;
  let copied;
  try {
    copied = copier.copy(writer.fd, t.pos, file, host, t.length, SPARSE_BLOCK_BYTES);
  } catch (err) {
    // A failed read is the image's problem (exit 2, named after it); a failed write stays the output's.
    if ((err as NodeJS.ErrnoException).syscall !== 'pread') throw err;
    throw new QcowError('EIO', file.path, `reading guest data at ${host}: ${(err as Error).message}`, { cause: err });
  }
  const { covered, written } = copied;
  if (covered < t.length && host + covered < file.size) throw new QcowError('EIO', file.path, `guest data at ${host + covered}: the file ends early (was ${file.size} bytes when opened; did it shrink?)`);
  writer.written += written;
  return covered;
}

/**
 * The extents of a window; in best effort, a window whose mapping cannot be read (an L2 table past the
 * end of the file) is one data run, read piece by piece, so its readable parts are kept.
 */
function windowExtents(disk: Disk, start: number, length: number, bestEffort: boolean): readonly { kind: string; start: number; length: number; depth: number; host?: number }[] {
  try {
    return disk.extents(start, length);
  } catch (err) {
    if (!bestEffort || !(err instanceof QcowError)) throw err;
    return [{ kind: 'data', start, length, depth: 0 }];
  }
}

/**
 * Best effort: reads `bytes` at `pos` in pieces of the granularity; a piece that fails is zeros and
 * reported. Returns the length (every byte is produced).
 */
function readBestEffort(disk: Disk, bytes: Buffer, pos: number, bestEffort: BestEffort): number {
  const g = bestEffort.granularity;
  for (let off = 0; off < bytes.length; ) {
    const n = Math.min(g - ((pos + off) % g), bytes.length - off);
    const piece = bytes.subarray(off, off + n);
    try {
      const got = disk.readSync(piece, pos + off);
      if (got !== n) throw new QcowError('EIO', '', `short read: ${got} of ${n} bytes`);
    } catch (err) {
      if (!(err instanceof QcowError)) throw err;
      piece.fill(0);
      const reason = err.file && err.message.startsWith(`${err.file}: `) ? err.message.slice(err.file.length + 2) : err.message;
      bestEffort.onBadRegion({ offset: pos + off, length: n, reason });
    }
    off += n;
  }
  return bytes.length;
}

/** The view as holes (zero and unallocated runs) and chunk reads (data and compressed), in guest order. */
function* tasks(disk: Disk, chunk: number, bestEffort = false): Generator<Task> {
  const size = disk.size;
  const window = extentWindow(disk);
  let holeStart = -1;
  let holeEnd = -1;
  for (let w = 0; w < size; w += window) {
    for (const e of windowExtents(disk, w, Math.min(window, size - w), bestEffort)) {
      const end = e.start + e.length;
      if (e.kind === 'zero' || e.kind === 'unallocated') {
        if (holeEnd === e.start) holeEnd = end;
        else {
          if (holeStart >= 0) yield { hole: true, pos: holeStart, length: holeEnd - holeStart, depth: 0 };
          holeStart = e.start;
          holeEnd = end;
        }
        continue;
      }
      if (holeStart >= 0) yield { hole: true, pos: holeStart, length: holeEnd - holeStart, depth: 0 };
      holeStart = holeEnd = -1;
      // Chunks aligned to the chunk size, so reads are cluster aligned.
      for (let pos = e.start; pos < end; ) {
        const n = Math.min(chunk - (pos % chunk), end - pos);
        yield { hole: false, pos, length: n, kind: e.kind, depth: e.depth, host: e.host === undefined ? undefined : e.host + (pos - e.start) };
        pos += n;
      }
    }
  }
  if (holeStart >= 0) yield { hole: true, pos: holeStart, length: holeEnd - holeStart, depth: 0 };
}

/** Compressed bytes that make worker threads worth their start-up (some tens of milliseconds each). */
export const PARALLEL_MIN_COMPRESSED_BYTES = 64 * 1024 * 1024;

export interface ParallelOptions {
  spec: ViewSpec;
  /** Worker threads (default: the cores available, at most 4). */
  workers?: number;
  /** Use workers only when the view holds at least this many compressed bytes (default 64 MiB; 0: always). */
  minCompressedBytes?: number;
}

/** Stored bytes that make one read worker pay for itself when this thread hashes what it reads. */
export const HASH_READER_MIN_BYTES = 64 * 1024 * 1024;

function workerCount(disk: Disk, parallel: ParallelOptions, hashing: boolean): number {
  const count = parallel.workers ?? Math.min(4, os.availableParallelism());
  if (count < 1) return 0;
  const min = parallel.minCompressedBytes ?? PARALLEL_MIN_COMPRESSED_BYTES;
  if (min <= 0) return count;
  // A metadata-only walk (L2 tables, cached for the copy that follows), stopped once the answer is known.
  const window = extentWindow(disk);
  let compressed = 0;
  let stored = 0;
  for (let w = 0; w < disk.size; w += window) {
    for (const e of disk.extents(w, Math.min(window, disk.size - w))) {
      if (e.kind === 'compressed') compressed += e.length;
      if (e.kind === 'compressed' || e.kind === 'data') stored += e.length;
    }
    if (compressed >= min) return count;
  }
  // Hashing is slower than reading plain data: one reader keeps this thread hashing without a pause.
  return hashing && stored >= HASH_READER_MIN_BYTES ? 1 : 0;
}

/** Extents per call: about 16384 clusters (so 256 MiB with 64 KiB clusters), between 8 MiB and 1 GiB. */
function extentWindow(disk: Disk): number {
  const cluster = disk.granularity ?? 65536;
  return Math.min(1024 * 1024 * 1024, Math.max(8 * 1024 * 1024, cluster * 16384));
}

/** Writes the parts of `bytes` that are not all zeros, in SPARSE_BLOCK_BYTES blocks, joined into runs. */
async function writeNonZero(writer: Writer, bytes: Buffer, pos: number, zeros: Buffer): Promise<void> {
  const n = bytes.length;
  if (bytes.compare(zeros, 0, n, 0, n) === 0) return;
  // Blocks are aligned to the guest offset, so the holes fall where a file system can make them.
  let runStart = -1;
  let at = 0;
  while (at < n) {
    const blockEnd = Math.min(n, at + SPARSE_BLOCK_BYTES - ((pos + at) % SPARSE_BLOCK_BYTES));
    // A block of data rarely starts or ends with a zero byte: those two looks spare most compares.
    const zero = bytes[at] === 0 && bytes[blockEnd - 1] === 0 && bytes.compare(zeros, 0, blockEnd - at, at, blockEnd) === 0;
    if (!zero && runStart < 0) runStart = at;
    else if (zero && runStart >= 0) {
      await writer.write(bytes.subarray(runStart, at), pos + runStart);
      runStart = -1;
    }
    at = blockEnd;
  }
  if (runStart >= 0) await writer.write(bytes.subarray(runStart, n), pos + runStart);
}

/**
 * Writes on the thread pool, several at once for a positional target (so that a slow wake-up of one
 * pool thread does not stall the copy), one at a time, in order, for a stream. `write` returns once the
 * write has started; bytes handed to it must stay untouched until a `mark()` taken after it settles (or
 * `drain()`). Short writes are continued; EAGAIN (a non-blocking pipe that is full) is retried after a
 * short wait. The first error is thrown by the next `write` or by `drain`.
 */
class Writer {
  readonly sparse: boolean;
  readonly fd: number;
  private readonly positional: boolean;
  readonly maxInFlight: number;
  private readonly inFlight = new Set<Promise<void>>();
  private error: unknown;
  written = 0;

  constructor(private readonly target: CopyTarget) {
    this.sparse = target.sparse;
    this.fd = target.fd;
    this.positional = target.sparse || target.positional === true;
    this.maxInFlight = this.positional ? 4 : 1;
  }

  async write(bytes: Buffer, position: number): Promise<void> {
    while (this.inFlight.size >= this.maxInFlight) await Promise.race(this.inFlight);
    if (this.error !== undefined) throw this.error;
    const p: Promise<void> = this.writeAll(bytes, position).then(
      () => {
        this.inFlight.delete(p);
      },
      (err: unknown) => {
        this.error ??= err;
        this.inFlight.delete(p);
      },
    );
    this.inFlight.add(p);
  }

  /** Settles once every write started so far is done (never rejects). */
  mark(): Promise<void> {
    return Promise.all(this.inFlight).then(() => undefined);
  }

  async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
    if (this.error !== undefined) throw this.error;
  }

  private async writeAll(bytes: Buffer, position: number): Promise<void> {
    let off = 0;
    let idle = 1;
    while (off < bytes.length) {
      try {
        off += await writeOnce(this.target.fd, bytes, off, bytes.length - off, this.positional ? position + off : null);
        idle = 1;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        await new Promise((r) => setTimeout(r, idle));
        idle = Math.min(idle * 2, 50);
      }
    }
    this.written += bytes.length;
  }
}

function writeOnce(fd: number, bytes: Buffer, offset: number, length: number, position: number | null): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.write(fd, bytes, offset, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}
