import type { Worker } from 'node:worker_threads';
import type { CompressionType } from '../format/header.js';
import { workerScript } from '../package-files.js';
import { lazyWorkerThreads } from '../lazy-builtins.js';

const PENDING = 0;
const DONE = 1;
const FAILED = 2;

/** A compressed cluster being inflated by a worker, into memory the main thread can see at once. */
interface Job {
  /** PENDING, then DONE or FAILED (set by the worker, with Atomics.notify). */
  state: Int32Array;
  out: SharedArrayBuffer;
}

/** What one worker is asked to do (see inflate-worker.ts). */
export interface InflateJob {
  type: CompressionType;
  src: ArrayBuffer;
  state: SharedArrayBuffer;
  out: SharedArrayBuffer;
}

/**
 * Worker threads that inflate compressed clusters ahead of a sequential reader, so that inflating runs
 * on the other cores while the main thread answers requests. The main thread takes a finished cluster
 * synchronously: a cluster still being inflated is waited for with Atomics.wait (a worker is already on
 * it); a failed one is handed back as missing, and the caller inflates it itself and reports the error
 * as it always does. Workers are started on first use and never keep the process alive.
 */
export class InflatePool {
  private readonly workers: Worker[] = [];
  private readonly jobs = new Map<number | string, Job>();
  private nextWorker = 0;
  private broken = false;
  /** Clusters handed to workers so far (for tests and statistics). */
  submitted = 0;

  constructor(
    /** Worker threads to start (at least 1). */
    readonly threads: number,
    /** Clusters in flight or finished and not yet taken, at most. */
    readonly maxJobs: number,
  ) {}

  /** Clusters submitted and not yet taken. */
  get size(): number {
    return this.jobs.size;
  }

  has(key: number | string): boolean {
    return this.jobs.has(key);
  }

  /**
   * Starts inflating `src` (a whole compressed cluster's bytes, as read from the file) into a fresh
   * cluster of `clusterSize` bytes. Returns false (and does nothing) when the key is already in flight,
   * the pool is full, or the workers cannot run.
   */
  submit(key: number | string, type: CompressionType, src: Uint8Array, clusterSize: number): boolean {
    if (this.broken || this.jobs.has(key) || this.jobs.size >= this.maxJobs) return false;
    const worker = this.worker();
    if (!worker) return false;
    const state = new SharedArrayBuffer(4);
    const out = new SharedArrayBuffer(clusterSize);
    const copy = new Uint8Array(src.length);
    copy.set(src);
    this.jobs.set(key, { state: new Int32Array(state), out });
    const job: InflateJob = { type, src: copy.buffer, state, out };
    worker.postMessage(job, [copy.buffer]);
    this.submitted++;
    return true;
  }

  /**
   * The inflated cluster for `key`, waiting for its worker if it is still at work; undefined when it
   * was never submitted, failed, or took unreasonably long (then the caller inflates it itself).
   */
  take(key: number | string): Buffer | undefined {
    const job = this.jobs.get(key);
    if (!job) return undefined;
    this.jobs.delete(key);
    // One cluster takes well under a second to inflate; a worker that died never answers.
    const deadline = Date.now() + 5000;
    while (Atomics.load(job.state, 0) === PENDING && Date.now() < deadline) Atomics.wait(job.state, 0, PENDING, 100);
    return Atomics.load(job.state, 0) === DONE ? Buffer.from(job.out) : undefined;
  }

  /** Hands every finished cluster to `keep` (and drops failed ones), making room for new jobs. */
  harvest(keep: (key: number | string, cluster: Buffer) => void): void {
    for (const [key, job] of this.jobs) {
      const s = Atomics.load(job.state, 0);
      if (s === PENDING) continue;
      this.jobs.delete(key);
      if (s === DONE) keep(key, Buffer.from(job.out));
    }
  }

  close(): void {
    this.broken = true;
    this.jobs.clear();
    for (const w of this.workers) void w.terminate();
    this.workers.length = 0;
  }

  private worker(): Worker | undefined {
    if (this.workers.length < this.threads) {
      try {
        const w = new (lazyWorkerThreads().Worker)(workerScript('codec/inflate-worker'));
        w.unref();
        w.on('error', () => this.fail());
        w.on('exit', () => this.fail());
        this.workers.push(w);
        return w;
      } catch {
        this.broken = true;
        return undefined;
      }
    }
    const w = this.workers[this.nextWorker++ % this.workers.length];
    return w;
  }

  /** A worker died: no new jobs; jobs in flight time out in take() and are inflated by the caller. */
  private fail(): void {
    this.broken = true;
  }
}

export const INFLATE_STATE = { PENDING, DONE, FAILED } as const;
