/**
 * Data runs of a file that can stream its bytes (ImageFile.streamTo: a remote image) copied straight
 * into the output, several at once, while the export goes on with the runs after them. The bytes do not
 * pass through this thread or the block cache; a run that fails is handed back (with how much of it was
 * done) for the caller to read the usual way (best effort) or to fail with.
 */
import { setMaxListeners } from 'node:events';
import type { Disk } from '../disk/disk.js';
import type { ImageFile } from '../io/image-file.js';
import { storedFileAt } from './native-copy.js';

/**
 * Streams in flight at once: each is one Range request of up to a chunk (4 MiB). Enough to hide a round
 * trip of 40 ms behind the others' transfers; the network worker runs 12 requests at most, which leaves
 * room for the reads of metadata that the rest of the export does meanwhile.
 */
export const STREAMS_IN_FLIGHT = 8;

/**
 * One stream (one Range request) covers at most this much: under latency each request costs a round
 * trip before its first byte, so large ones keep the link busy. In-process, 256 MiB from nginx, 8 in
 * flight: 4 MiB 233-236 ms, 16 MiB 194-208, 32 MiB 214-240; at 20 ms each way 630-690, 510-514, 447-474.
 */
export const STREAM_PIECE_BYTES = 16 * 1024 * 1024;

export type StreamingFile = ImageFile & Required<Pick<ImageFile, 'streamTo'>>;

/** A streamed run that failed: bytes [pos + covered, pos + length) of the view are not in the output. */
export interface FailedStream {
  pos: number;
  length: number;
  covered: number;
  error: unknown;
}

/** The file that streams the data runs of chain depth `depth` (undefined: read them the usual way). */
export function streamingFiles(disk: Disk): (depth: number) => StreamingFile | undefined {
  if (process.env.QCOW_EXPORT_STREAM === '0') return () => undefined;
  const byDepth = new Map<number, StreamingFile | undefined>();
  return (depth) => {
    if (!byDepth.has(depth)) {
      const file = storedFileAt(disk, depth);
      byDepth.set(depth, file?.streamTo ? (file as StreamingFile) : undefined);
    }
    return byDepth.get(depth);
  };
}

export class StreamCopies {
  /** Bytes done (of the view) and written, by the streams that succeeded. */
  covered = 0;
  written = 0;
  readonly failed: FailedStream[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private readonly stop = new AbortController();
  private pending?: { file: StreamingFile; pos: number; host: number; length: number };

  constructor(
    private readonly fd: number,
    private readonly sparseBlock: number,
    private readonly max = STREAMS_IN_FLIGHT,
  ) {
    // Every stream in flight listens to the one signal.
    setMaxListeners(max + 2, this.stop.signal);
  }

  /**
   * Streams view bytes [pos, pos + length) from `host` of `file`: joined to the run before when it
   * follows on, up to STREAM_PIECE_BYTES, else that run starts first (see flush).
   */
  async add(file: StreamingFile, pos: number, host: number, length: number): Promise<void> {
    const p = this.pending;
    if (p && p.file === file && p.pos + p.length === pos && p.host + p.length === host && p.length + length <= STREAM_PIECE_BYTES) {
      p.length += length;
      return;
    }
    await this.flush();
    this.pending = { file, pos, host, length };
  }

  /** Starts the run add() has gathered, if any. */
  async flush(): Promise<void> {
    const p = this.pending;
    this.pending = undefined;
    if (p) await this.start(p.file, p.pos, p.host, p.length);
  }

  /** Starts streaming view bytes [pos, pos + length) from `host` of `file`; waits first while `max` are in flight. */
  private async start(file: StreamingFile, pos: number, host: number, length: number): Promise<void> {
    while (this.inFlight.size >= this.max) await Promise.race(this.inFlight);
    const p: Promise<void> = file.streamTo({ fd: this.fd, position: pos, sparseBlock: this.sparseBlock }, host, length, this.stop.signal).then(
      (r) => {
        this.covered += r.covered;
        this.written += r.written;
        this.inFlight.delete(p);
      },
      (error: unknown) => {
        const covered = (error as { covered?: number }).covered ?? 0;
        this.covered += covered;
        this.failed.push({ pos, length, covered, error });
        this.inFlight.delete(p);
      },
    );
    this.inFlight.add(p);
  }

  /** Waits for every stream started so far. */
  async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  /** Stops the streams in flight and waits until none can write any more (before the output is closed). */
  async cancel(): Promise<void> {
    this.pending = undefined;
    this.stop.abort(new Error('export stopped'));
    await this.drain();
  }
}
