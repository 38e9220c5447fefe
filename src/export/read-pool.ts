import type { Worker } from 'node:worker_threads';
import { QcowError, type QcowErrorCode } from '../errors.js';
import type { OpenOptions } from '../image.js';
import { workerScript } from '../package-files.js';
import { lazyWorkerThreads } from '../lazy-builtins.js';

/** How a worker finds the view again: the image, how it was opened, and which view. */
export interface ViewSpec {
  imagePath: string;
  openOptions?: OpenOptions;
  /** Position in the snapshot table; absent for the active disk. */
  snapshotIndex?: number;
  vmstate?: boolean;
  /** A window of the view (a partition), cut at the view's end. */
  window?: { start: number; length: number };
}

export interface ReadRequest {
  id: number;
  position: number;
  length: number;
  buffer: ArrayBuffer;
}

export interface ReadReply {
  id: number;
  buffer: ArrayBuffer;
  got?: number;
  error?: { message: string; code?: QcowErrorCode; file?: string };
}

interface Pending {
  resolve: (buffer: ArrayBuffer) => void;
  reject: (err: Error) => void;
  length: number;
}

/**
 * Worker threads that each open the view and read chunks of it. Requests go to the least busy worker;
 * each returns its buffer (transferred, not copied) filled. The caller keeps order.
 */
export class ReadPool {
  private readonly workers: { worker: Worker; busy: number }[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private failed: Error | undefined;

  constructor(spec: ViewSpec, count: number) {
    const url = workerScript('export/read-worker');
    for (let i = 0; i < count; i++) {
      const worker = new (lazyWorkerThreads().Worker)(url, { workerData: spec });
      const slot = { worker, busy: 0 };
      worker.on('message', (reply: ReadReply) => {
        slot.busy--;
        const p = this.pending.get(reply.id);
        if (!p) return;
        this.pending.delete(reply.id);
        if (reply.error) p.reject(toError(reply.error));
        else if (reply.got !== p.length) p.reject(new Error(`short read: ${reply.got} of ${p.length} bytes`));
        else p.resolve(reply.buffer);
      });
      worker.on('error', (err) => this.fail(err));
      worker.on('exit', (code) => {
        if (code !== 0) this.fail(new Error(`an export read worker exited with code ${code}`));
      });
      this.workers.push(slot);
    }
  }

  /** Reads `length` bytes at `position` into `buffer` (which is transferred away until the promise settles). */
  read(buffer: ArrayBuffer, position: number, length: number): Promise<ArrayBuffer> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.nextId++;
    const slot = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    slot.busy++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, length });
      const req: ReadRequest = { id, position, length, buffer };
      slot.worker.postMessage(req, [buffer]);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }

  private fail(err: Error): void {
    this.failed ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

function toError(e: NonNullable<ReadReply['error']>): Error {
  if (e.code && e.file !== undefined) {
    const prefix = `${e.file}: `;
    return new QcowError(e.code, e.file, e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message);
  }
  return new Error(e.message);
}
