/**
 * Where a streamed body goes (remote-worker.ts, for qcow-export): one small buffer, reused, that the
 * network fills and that is written into a fresh output file at its place whenever it is full, so the
 * bytes of an image never pass through the block cache or fresh memory. All-zero blocks are left as
 * holes, as `qemu-img convert -S 4k` and the local export leave them.
 */
import fs from 'node:fs';

/** Buffer of one stream: big enough that writes stay few (1 per 256 KiB), small enough to stay in the CPU cache. */
export const SINK_BUFFER_BYTES = 256 * 1024;

/** A write to the output failed (ENOSPC...): no retry cures it, and it is the output's fault, not the image's. */
export class SinkWriteError extends Error {
  constructor(readonly error: NodeJS.ErrnoException) {
    super(error.message);
  }
}

/** The stream was cancelled: nothing more is written. */
export class SinkCancelled extends Error {
  constructor() {
    super('cancelled');
  }
}

export class FileSink {
  /** Bytes of the range done (written, or all zeros and skipped), from its start. */
  covered = 0;
  written = 0;
  cancelled = false;
  /** Bytes the current body still has to bring (for the BodyTarget `length`). */
  length = 0;
  private filled = 0;
  /** Where buffer[0] goes: flushes end on sparse-block boundaries of the output. */
  private bufferPos: number;
  private capacity = 0;

  constructor(
    private readonly buffer: Buffer,
    private readonly fd: number,
    private readonly outPos: number,
    private readonly sparseBlock: number,
    /** Told covered and written after every flush (shared counters the caller reads). */
    private readonly onFlush: (covered: number, written: number) => void,
  ) {
    this.bufferPos = outPos;
    this.restart();
  }

  /** Drops bytes not yet written (an attempt failed mid-buffer): the next one resumes at `covered`. */
  restart(): void {
    this.filled = 0;
    this.bufferPos = this.outPos + this.covered;
    const block = this.sparseBlock;
    this.capacity = this.buffer.length - (this.bufferPos % block);
  }

  /** Memory for the next bytes of the body. */
  room(): Uint8Array {
    return this.buffer.subarray(this.filled, this.capacity);
  }

  /** `n` bytes arrived in room(). */
  wrote(n: number): void {
    this.filled += n;
    if (this.filled === this.capacity) this.flush();
  }

  /** Copies a chunk in (a body read by Node's http module). */
  push(chunk: Uint8Array): void {
    for (let at = 0; at < chunk.length; ) {
      const room = this.room();
      const n = Math.min(room.length, chunk.length - at);
      room.set(chunk.subarray(at, at + n));
      at += n;
      this.wrote(n);
    }
  }

  /** Writes what the buffer holds, all-zero blocks left out. */
  flush(): void {
    if (this.cancelled) throw new SinkCancelled();
    const n = this.filled;
    if (n === 0) return;
    const buf = this.buffer;
    const block = this.sparseBlock;
    let runStart = -1;
    for (let at = 0; at < n; ) {
      const end = Math.min(n, at + block - ((this.bufferPos + at) % block));
      // A block of data rarely starts or ends with a zero byte: those two looks spare most compares.
      const zero = buf[at] === 0 && buf[end - 1] === 0 && isZero(buf, at, end);
      if (!zero && runStart < 0) runStart = at;
      else if (zero && runStart >= 0) {
        this.write(runStart, at);
        runStart = -1;
      }
      at = end;
    }
    if (runStart >= 0) this.write(runStart, n);
    this.covered += n;
    this.filled = 0;
    this.bufferPos += n;
    this.capacity = buf.length;
    this.onFlush(this.covered, this.written);
  }

  private write(from: number, to: number): void {
    try {
      for (let at = from; at < to; ) at += fs.writeSync(this.fd, this.buffer, at, to - at, this.bufferPos + at);
    } catch (err) {
      throw new SinkWriteError(err as NodeJS.ErrnoException);
    }
    this.written += to - from;
  }
}

const ZEROS = Buffer.alloc(64 * 1024);

function isZero(buf: Buffer, from: number, to: number): boolean {
  for (let at = from; at < to; ) {
    const n = Math.min(ZEROS.length, to - at);
    if (buf.compare(ZEROS, 0, n, at, at + n) !== 0) return false;
    at += n;
  }
  return true;
}
