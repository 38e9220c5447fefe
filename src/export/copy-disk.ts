import fs from 'node:fs';
import type { Hash } from 'node:crypto';
import type { Disk } from '../disk/disk.js';

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

export interface CopyOptions {
  /** Updated with every byte of the view, in order (zero runs included). */
  hash?: Hash;
  /** Called after each step with the bytes done so far. */
  onProgress?: (done: number) => void;
  chunkBytes?: number;
  /** Stops the copy between steps (the promise rejects with the signal's reason). */
  signal?: AbortSignal;
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
 * large chunks into two reused buffers, and each chunk is written (asynchronously, on the thread pool)
 * while the next one is read, so reading and writing overlap.
 */
export async function copyDisk(disk: Disk, target: CopyTarget | undefined, options: CopyOptions = {}): Promise<CopyResult> {
  const chunk = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const buffers = [Buffer.allocUnsafe(chunk), Buffer.allocUnsafe(chunk)];
  const zeros = Buffer.alloc(chunk);
  const { hash, onProgress, signal } = options;
  const writer = target ? new Writer(target) : undefined;
  const size = disk.size;
  let done = 0;
  let read = 0;
  let turn = 0;
  // Steps that write nothing (holes) never wait, so the event loop is let in now and then: signals,
  // the progress bar's timer and cancellation keep working on a long run of zeros.
  let lastYield = Date.now();
  const step = async (pos: number) => {
    done = pos;
    onProgress?.(done);
    if (Date.now() - lastYield >= 100) {
      await new Promise<void>((r) => setImmediate(r));
      lastYield = Date.now();
    }
    signal?.throwIfAborted();
  };

  // Extents are asked for in windows so that a huge disk never yields one huge array.
  const window = extentWindow(disk);
  try {
    for (let w = 0; w < size; w += window) {
      for (const e of disk.extents(w, Math.min(window, size - w))) {
        const end = e.start + e.length;
        if (e.kind === 'zero' || e.kind === 'unallocated') {
          if (!hash && (!writer || writer.sparse)) {
            await step(end); // a hole: nothing to read, hash or write
            continue;
          }
          for (let pos = e.start; pos < end; ) {
            const n = Math.min(chunk, end - pos);
            const z = zeros.subarray(0, n);
            hash?.update(z);
            if (writer && !writer.sparse) await writer.write(z, pos);
            pos += n;
            await step(pos);
          }
          continue;
        }
        // Data or compressed: read in chunks aligned to the chunk size (so cluster-aligned reads).
        for (let pos = e.start; pos < end; ) {
          const n = Math.min(chunk - (pos % chunk), end - pos);
          const buf = buffers[turn]!;
          turn ^= 1;
          const bytes = buf.subarray(0, n);
          const got = disk.readSync(bytes, pos);
          if (got !== n) throw new Error(`short read at ${pos}: ${got} of ${n} bytes`);
          read += n;
          hash?.update(bytes);
          if (writer) {
            if (writer.sparse) await writeNonZero(writer, bytes, pos, zeros);
            else await writer.write(bytes, pos);
          }
          pos += n;
          await step(pos);
        }
      }
    }
    if (writer) await writer.drain();
  } catch (err) {
    // Let a write in flight finish before the caller closes or removes the file.
    if (writer) await writer.drain().catch(() => undefined);
    throw err;
  }
  return { bytes: size, written: writer?.written ?? 0, read };
}

/** Extents per call: about 16384 clusters (so 256 MiB with 64 KiB clusters), between 8 MiB and 1 GiB. */
function extentWindow(disk: Disk): number {
  const cluster = (disk as { meta?: { clusterSize?: number } }).meta?.clusterSize ?? 65536;
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
    const zero = bytes.compare(zeros, 0, blockEnd - at, at, blockEnd) === 0;
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
 * One write in flight at a time: `write` waits for the previous write, then starts this one and returns,
 * so the caller may fill its other buffer meanwhile. Bytes handed to `write` must stay untouched until the
 * next-but-one call (two buffers in turn satisfy that). Short writes are continued; EAGAIN (a
 * non-blocking pipe that is full) is retried after a short wait.
 */
class Writer {
  readonly sparse: boolean;
  private readonly positional: boolean;
  private pending: Promise<void> = Promise.resolve();
  written = 0;

  constructor(private readonly target: CopyTarget) {
    this.sparse = target.sparse;
    this.positional = target.sparse || target.positional === true;
  }

  async write(bytes: Buffer, position: number): Promise<void> {
    await this.pending;
    this.pending = this.writeAll(bytes, position);
    // A rejection is reported by the next write or by drain(); keep it from being "unhandled" meanwhile.
    this.pending.catch(() => undefined);
  }

  async drain(): Promise<void> {
    await this.pending;
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
