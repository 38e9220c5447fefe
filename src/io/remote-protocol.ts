/**
 * What the calling thread and the network worker (remote-worker.ts) say to each other. The calling
 * thread never waits for a message: it blocks with Atomics.wait on a small shared control word that the
 * worker sets when bytes (or an error) are in shared memory.
 */

/** Control word values (Int32 at index 0 of a control buffer). */
export const SLOT = {
  /** Asked for, not there yet. */
  PENDING: 0,
  READY: 1,
  /** Failed after retries (network, HTTP status): a later read may ask again. */
  FAILED: 2,
  /** The object on the server is not the one we opened: every later read fails too. */
  CHANGED: 3,
} as const;

/** Control buffer: Int32 state, Int32 length of the message that follows (UTF-8). */
export const CONTROL_HEADER = 8;
export const CONTROL_MESSAGE_MAX = 1024;
export const CONTROL_BYTES = CONTROL_HEADER + CONTROL_MESSAGE_MAX;

/** Statistics the worker keeps for one file, in a shared BigInt64Array. */
export const STAT = { REQUESTS: 0, BYTES: 1, RETRIES: 2, FAILURES: 3 } as const;
export const STAT_COUNT = 4;

export interface ConnectionSettings {
  /** Headers sent with every request to the image's own server (never logged). */
  headers: [string, string][];
  /** PEM certificates trusted in addition to the system's. */
  ca?: string;
  /** A request with no bytes for this long is abandoned (and retried). */
  timeoutMs: number;
  /** Attempts after the first, with doubling backoff. */
  retries: number;
  /** First backoff delay. */
  backoffMs: number;
}

export interface OpenMessage {
  op: 'open';
  file: number;
  url: string;
  settings: ConnectionSettings;
  /** Control buffer for the answer: on success the message is the JSON of an OpenAnswer. */
  control: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  /**
   * Block 0 of the file's cache: the open's request asks for all of it (the header, often the L1 table),
   * so that the first reads need no request of their own. The worker fills it and settles it READY, or
   * leaves it alone (OpenAnswer.first false: an answer only Node's http module could read).
   */
  first?: { control: SharedArrayBuffer; data: SharedArrayBuffer };
}

export interface OpenAnswer {
  size: number;
  etag?: string;
  lastModified?: string;
  /** HTTP status of a refused open, to choose the error code. */
  status?: number;
  /** OpenMessage.first holds the object's first bytes (and is READY). */
  first?: boolean;
}

/** One block of a fetch: `data` receives bytes [start, start + length) of the object. */
export interface FetchBlock {
  start: number;
  length: number;
  control: SharedArrayBuffer;
  data: SharedArrayBuffer;
}

export interface FetchMessage {
  op: 'fetch';
  file: number;
  /** Adjacent blocks, fetched with one Range request. */
  blocks: FetchBlock[];
  /** Asked for by a read that is waiting now (ahead of read-ahead). */
  urgent: boolean;
}

/**
 * Host bytes [start, start + length) of the object written straight into a file (`outFd` at `outPos`),
 * not through the block cache: each piece of the body is written where it belongs as it arrives, from a
 * small reused buffer. All-zero blocks of `sparseBlock` bytes (aligned to the output offset) are not
 * written (the file is fresh: holes read as zeros). `progress` (Float64Array) holds STREAM_PROGRESS.
 * The control word settles once: READY, or FAILED/CHANGED with a StreamFailure's JSON as its message.
 */
export interface StreamMessage {
  op: 'stream';
  file: number;
  /** Names the job for a cancel. */
  job: number;
  start: number;
  length: number;
  outFd: number;
  outPos: number;
  sparseBlock: number;
  control: SharedArrayBuffer;
  progress: SharedArrayBuffer;
}

/** Stops a stream job: no byte of it is written once its control word has settled. */
export interface CancelMessage {
  op: 'cancel';
  job: number;
}

/** Float64 slots of a stream job's progress buffer. */
export const STREAM_PROGRESS = { COVERED: 0, WRITTEN: 1 } as const;
export const STREAM_PROGRESS_BYTES = 16;

/** Why a stream job failed: a network/server reason, or (errno set) writing the output. */
export interface StreamFailure {
  message: string;
  /** Writing the output failed with this errno code (ENOSPC...): not the image's fault. */
  writeCode?: string;
}

export interface CloseMessage {
  op: 'close';
  file: number;
}

export type WorkerMessage = OpenMessage | FetchMessage | StreamMessage | CancelMessage | CloseMessage;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Sets a control word (with its message) and wakes whoever waits on it. */
export function settle(control: SharedArrayBuffer, state: number, message = ''): void {
  const words = new Int32Array(control, 0, 2);
  if (message === '') {
    // The common case (a block in): no encoding, no view of the message area.
    words[1] = 0;
    Atomics.store(words, 0, state);
    Atomics.notify(words, 0);
    return;
  }
  const bytes = encoder.encode(message).subarray(0, CONTROL_MESSAGE_MAX);
  new Uint8Array(control, CONTROL_HEADER, CONTROL_MESSAGE_MAX).set(bytes);
  words[1] = bytes.length;
  Atomics.store(words, 0, state);
  Atomics.notify(words, 0);
}

export function controlMessage(control: SharedArrayBuffer): string {
  const length = new Int32Array(control, 0, 2)[1];
  // Copy out of shared memory: TextDecoder refuses shared views.
  return decoder.decode(new Uint8Array(control, CONTROL_HEADER, length).slice());
}
