import fs from 'node:fs';
import type { Worker } from 'node:worker_threads';
import { QcowError, hex } from '../errors.js';
import { BlockCache, type CachedBlock } from './block-cache.js';
import { type ImageFile, type StreamTarget, StreamFailed, newFileId, readWhole } from './image-file.js';
import type { CopiedRange } from './copy-addon.js';
import {
  CONTROL_BYTES,
  type ConnectionSettings,
  type FetchBlock,
  type FetchMessage,
  type OpenAnswer,
  SLOT,
  STAT,
  STAT_COUNT,
  STREAM_PROGRESS,
  STREAM_PROGRESS_BYTES,
  type StreamFailure,
  type WorkerMessage,
  controlMessage,
} from './remote-protocol.js';
import { parseRemoteUrl, redactText, redactUrl } from './remote-url.js';
import { withDeferredCa } from './trusted-ca.js';
import { workerScript } from '../package-files.js';
import { lazyWorkerThreads } from '../lazy-builtins.js';

export const DEFAULT_REMOTE_CACHE_SIZE = 256 * 1024 * 1024;
export const DEFAULT_REMOTE_BLOCK_SIZE = 256 * 1024;

export interface RemoteOptions {
  /** Headers for every request to the image's own server (`Authorization: Bearer ...`); never logged. */
  headers?: [string, string][];
  /** PEM text of certificates to trust besides the system's (a self-signed server). */
  ca?: string;
  /** A request that gets no bytes for this long is abandoned and retried (default 15 s). */
  timeoutMs?: number;
  /** Retries of a failed request, with doubling backoff, before the read fails with EIO (default 4). */
  retries?: number;
  /** First backoff delay (default 250 ms). */
  backoffMs?: number;
  /** A cache shared by several files (the files of one backing chain); else each file gets its own. */
  cache?: BlockCache;
  /** Bytes of the file's own cache when none is shared (default 256 MiB). */
  cacheSize?: number;
  /** Block size of the file's own cache (default 256 KiB). */
  blockSize?: number;
  /** Read-ahead window for a sequential reader, at most (default 64 MiB, and a quarter of the cache at most). */
  readAheadMax?: number;
}

/** Counters for info.json and the bench. */
export interface RemoteStats {
  /** Blocks a read found in the cache, or already on their way. */
  hits: number;
  /** Blocks a read had to ask for. */
  misses: number;
  /** Blocks fetched ahead of a sequential reader. */
  readAhead: number;
  requests: number;
  bytesFetched: number;
  retries: number;
  failures: number;
  /** Bytes the cache holds now, and at most. */
  cacheBytes: number;
  cacheLimit: number;
}

/**
 * Read-ahead window at most: at 20 ms each way a window is fetched once per round trip and more, so it
 * bounds a sequential reader's speed (in-process 4 MiB reads at 20 ms: 32 MiB 485-491 ms per 256 MiB,
 * 64 MiB 434-454 ms).
 */
const DEFAULT_READ_AHEAD_MAX = 64 * 1024 * 1024;

/** Largest Range request: several of these run in parallel ahead of a sequential reader. */
const MAX_REQUEST_BYTES = 4 * 1024 * 1024;

/**
 * A file read over HTTP(S) with Range requests, behind the same synchronous interface as a local
 * HostFile: `readAt` blocks (Atomics.wait) until the bytes are in shared memory that the network
 * worker filled. Blocks are cached, adjacent misses are fetched with one request, and a sequential
 * reader gets a growing window of blocks fetched ahead, several requests at once.
 *
 * `path` is the URL without credentials or query string: it is what messages and info.json show.
 */
export class RemoteFile implements ImageFile {
  readonly path: string;
  readonly size: number;
  readonly mtime: Date;
  /** Validators from the server at open: a later answer with others means the object changed. */
  readonly etag?: string;
  readonly lastModified?: string;
  readonly cache: BlockCache;
  private readonly ownCache: boolean;
  private readonly stats: BigInt64Array;
  private readonly blockSize: number;
  private readonly readAheadMax: number;
  private readonly waitLimitMs: number;
  private hits = 0;
  private misses = 0;
  private readAheadBlocks = 0;
  /** Sequential readers (several may read one file at once), most recently seen first. */
  private readonly streams: Stream[] = [];
  /** Set when the object changed on the server: no read is served after that. */
  private changed?: string;
  private closed = false;

  private constructor(
    /** Integer naming this file in shared cache keys and to the worker. */
    readonly id: number,
    /** The URL as given, with its credentials and query string: never shown. */
    private readonly url: URL,
    answer: OpenAnswer,
    stats: BigInt64Array,
    options: RemoteOptions,
    settings: ConnectionSettings,
    cache: BlockCache,
  ) {
    this.path = redactUrl(url);
    this.size = answer.size;
    this.etag = answer.etag;
    this.lastModified = answer.lastModified;
    const parsed = answer.lastModified ? new Date(answer.lastModified) : new Date(0);
    this.mtime = Number.isNaN(parsed.getTime()) ? new Date(0) : parsed;
    this.stats = stats;
    this.ownCache = !options.cache;
    this.cache = cache;
    this.blockSize = this.cache.blockSize;
    // The window must leave room in the cache for the blocks being read.
    this.readAheadMax = Math.min(options.readAheadMax ?? DEFAULT_READ_AHEAD_MAX, Math.floor((this.cache.maxBlocks * this.blockSize) / 4));
    this.waitLimitMs = waitLimit(settings);
  }

  /**
   * Opens a URL: one Range request for the file's first cache block learns the size and validators
   * (and refuses a server without Range), and brings the header that is read next.
   */
  static open(urlText: string | URL, options: RemoteOptions = {}): RemoteFile {
    const url = typeof urlText === 'string' ? parseRemoteUrl(urlText) : urlText;
    const shown = redactUrl(url);
    const settings: ConnectionSettings = {
      headers: options.headers ?? [],
      ca: url.protocol === 'https:' ? withDeferredCa(options.ca) : options.ca,
      timeoutMs: options.timeoutMs ?? 15_000,
      retries: options.retries ?? 4,
      backoffMs: options.backoffMs ?? 250,
    };
    const client = RemoteClient.get(shown);
    const control = new SharedArrayBuffer(CONTROL_BYTES);
    const statsBuffer = new SharedArrayBuffer(STAT_COUNT * 8);
    const file = newFileId();
    const cache = options.cache ?? new BlockCache(options.cacheSize ?? DEFAULT_REMOTE_CACHE_SIZE, options.blockSize ?? DEFAULT_REMOTE_BLOCK_SIZE);
    const first = cache.claim(file, 0);
    client.post({ op: 'open', file, url: url.href, settings, control, stats: statsBuffer, first: first && { control: first.control, data: first.data } });
    const state = waitFor(control, waitLimit(settings));
    const text = controlMessage(control);
    if (state !== SLOT.READY) {
      client.post({ op: 'close', file });
      // No answer at all: the worker may still write into the block, so its buffer is not reused.
      if (first && state === SLOT.PENDING) cache.drop(first);
      else if (first) dropUnfilled(cache, first);
      const detail = state === SLOT.PENDING ? { message: `no answer in ${Math.round(waitLimit(settings) / 1000)} s` } : (JSON.parse(text) as { message: string; status?: number });
      const code = detail.status === 404 || detail.status === 410 ? 'ENOENT' : detail.status === 401 || detail.status === 403 ? 'EACCES' : 'EBADIMAGE';
      throw new QcowError(code, shown, redactText(detail.message));
    }
    const answer = JSON.parse(text) as OpenAnswer;
    // Not filled (the http module answered, or an empty object): forgotten, fetched when read.
    if (first && !answer.first) dropUnfilled(cache, first);
    return new RemoteFile(file, url, answer, new BigInt64Array(statsBuffer), options, settings, cache);
  }

  /** The URL as given, credentials and query string included: for resolving names against, never for showing. */
  get secretUrl(): URL {
    return this.url;
  }

  /**
   * Reads `length` bytes at `position` into `into[offset..]`. Bytes past the end of the object read as
   * zeros (as for a local file); a network failure after retries, or a changed object, is EIO.
   */
  readAt(into: Uint8Array, offset: number, length: number, position: number, what: string): void {
    if (this.closed) throw new QcowError('EIO', this.path, `reading ${what}: the file is closed`);
    if (this.changed) throw new QcowError('EIO', this.path, `reading ${what} at ${hex(position)}: ${this.changed}`);
    const inFile = Math.max(0, Math.min(length, this.size - position));
    if (inFile > 0) {
      const bs = this.blockSize;
      const first = Math.floor(position / bs);
      const last = Math.floor((position + inFile - 1) / bs);
      this.fetchMissing(first, last, true);
      const streaming = !METADATA.test(what) && this.readAhead(position, inFile, last);
      if (waiting) this.leaveIfPending(first, last, what, position);
      for (let index = first; index <= last; index++) {
        const block = this.cache.get(this.id, index) ?? this.fetchOne(index);
        // Fetched again just now (evicted for another of this read's blocks in a small cache): wait.
        if (waiting && Atomics.load(block.state, 0) === SLOT.PENDING && Date.now() - waiting.since < this.waitLimitMs) throw new BlockPending(block.state, this.waitLimitMs);
        this.settled(block, what, position, waiting ? 0 : this.waitLimitMs);
        const blockStart = index * bs;
        const from = Math.max(position, blockStart);
        const to = Math.min(position + inFile, blockStart + bs);
        into.set(new Uint8Array(block.data, from - blockStart, to - from), offset + (from - position));
        // Drop-behind: a block a sequential reader has read to its end is not read again soon; its
        // buffer is reused for the next block ahead instead of growing the cache (fresh shared memory
        // costs a page fault per 4 KiB), and the cache keeps what random readers (metadata) use. Only
        // blocks this read covers whole: the one it shares with its neighbour may still be waited for
        // by that read (reads run at once under readWithoutWaiting), and refetching it costs a round trip.
        if (streaming && from === blockStart && to === blockStart + bs) this.cache.drop(block);
      }
    }
    if (inFile < length) into.fill(0, offset + Math.max(0, inFile), offset + length);
  }

  /** Reads a metadata structure that must lie wholly inside the file. */
  readExact(position: number, length: number, what: string): Buffer {
    return readWhole(this, position, length, what);
  }

  /**
   * Copies bytes [position, position + length) of the object into a fresh output file without the block
   * cache: the network worker writes each piece of the server's answer at its place as it arrives, from
   * a small reused buffer (all-zero blocks left as holes), with its usual retries. The bytes never pass
   * through this thread. A changed object, or a server that fails after the retries, is a StreamFailed
   * (EIO, like a read); a stream that brings nothing for the wait limit is cancelled: never a hang.
   */
  async streamTo(target: StreamTarget, position: number, length: number, signal?: AbortSignal): Promise<CopiedRange> {
    if (this.closed) throw new StreamFailed('EIO', this.path, 'reading guest data: the file is closed', 0);
    if (this.changed) throw new StreamFailed('EIO', this.path, `reading guest data at ${hex(position)}: ${this.changed}`, 0);
    signal?.throwIfAborted();
    const inFile = Math.max(0, Math.min(length, this.size - position));
    if (inFile === 0) return { covered: length, written: 0 };
    const control = new SharedArrayBuffer(CONTROL_BYTES);
    const progressBuffer = new SharedArrayBuffer(STREAM_PROGRESS_BYTES);
    const progress = new Float64Array(progressBuffer);
    const job = nextStreamJob++;
    const client = RemoteClient.get(this.path);
    client.post({ op: 'stream', file: this.id, job, start: position, length: inFile, outFd: target.fd, outPos: target.position, sparseBlock: target.sparseBlock, control, progress: progressBuffer });
    const cancel = () => client.post({ op: 'cancel', job });
    signal?.addEventListener('abort', cancel, { once: true });
    const state = new Int32Array(control, 0, 2);
    let stalled = false;
    // Atomics.waitAsync does not keep the process alive: a timer does, while the stream runs.
    const alive = setInterval(() => undefined, 1 << 30);
    try {
      let seen = -1;
      let since = Date.now();
      while (Atomics.load(state, 0) === SLOT.PENDING) {
        const covered = progress[STREAM_PROGRESS.COVERED]!;
        if (covered !== seen) {
          seen = covered;
          since = Date.now();
        }
        const left = this.waitLimitMs - (Date.now() - since);
        if (left <= 0 && !stalled) {
          // The worker's own timeouts should have ended it: cancel, and wait for the cancel to land.
          stalled = true;
          cancel();
        }
        const wait = waitAsync(state, 0, SLOT.PENDING, stalled ? 1000 : Math.min(Math.max(1, left), 1000));
        if (wait.async) await wait.value;
      }
    } finally {
      clearInterval(alive);
      signal?.removeEventListener('abort', cancel);
    }
    const covered = progress[STREAM_PROGRESS.COVERED]!;
    const outcome = Atomics.load(state, 0);
    if (outcome === SLOT.READY) return { covered: length, written: progress[STREAM_PROGRESS.WRITTEN]! };
    signal?.throwIfAborted();
    const failure = parseFailure(controlMessage(control));
    if (failure.writeCode) throw Object.assign(new Error(`${failure.writeCode}: ${failure.message}`), { code: failure.writeCode, syscall: 'write' });
    const why = stalled ? `no answer from the server in ${Math.round(this.waitLimitMs / 1000)} s` : redactText(failure.message ?? 'failed');
    if (outcome === SLOT.CHANGED) this.changed = why;
    throw new StreamFailed('EIO', this.path, `reading guest data at ${hex(position + covered)}: ${why}`, covered);
  }

  remoteStats(): RemoteStats {
    return {
      hits: this.hits,
      misses: this.misses,
      readAhead: this.readAheadBlocks,
      requests: Number(Atomics.load(this.stats, STAT.REQUESTS)),
      bytesFetched: Number(Atomics.load(this.stats, STAT.BYTES)),
      retries: Number(Atomics.load(this.stats, STAT.RETRIES)),
      failures: Number(Atomics.load(this.stats, STAT.FAILURES)),
      cacheBytes: this.cache.bytes,
      cacheLimit: this.cache.maxBlocks * this.blockSize,
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    RemoteClient.existing()?.post({ op: 'close', file: this.id });
    this.cache.dropFile(this.id);
  }

  /** Asks for every block of [first, last] not in the cache, adjacent ones in one request. */
  private fetchMissing(first: number, last: number, urgent: boolean): number {
    let asked = 0;
    let run: CachedBlock[] = [];
    const flush = (): void => {
      if (run.length) this.send(run, urgent);
      run = [];
    };
    const perRequest = Math.max(1, Math.floor(MAX_REQUEST_BYTES / this.blockSize));
    for (let index = first; index <= last; index++) {
      if (this.cache.get(this.id, index)) {
        if (urgent && !waiting?.again) this.hits++;
        flush();
        continue;
      }
      const block = this.cache.claim(this.id, index);
      if (!block) break; // every block is in flight: the read waits for its own below
      run.push(block);
      asked++;
      if (run.length === perRequest) flush();
    }
    flush();
    if (urgent) this.misses += asked;
    return asked;
  }

  private fetchOne(index: number): CachedBlock {
    let block = this.cache.claim(this.id, index);
    // Many reads in flight at once (readWithoutWaiting) can fill a small cache with blocks on their
    // way: wait for one of them (without blocking when allowed, else here: nothing else runs then).
    const busy = block ? undefined : this.cache.somePending();
    if (busy && waiting) throw new BlockPending(busy.state, this.waitLimitMs);
    if (busy) {
      waitFor(busy.control, this.waitLimitMs);
      block = this.cache.claim(this.id, index);
    }
    if (!block) throw new QcowError('EIO', this.path, `the block cache is full of blocks being fetched (block ${index})`);
    this.misses++;
    this.send([block], true);
    return block;
  }

  private send(blocks: CachedBlock[], urgent: boolean): void {
    const bs = this.blockSize;
    const list: FetchBlock[] = blocks.map((b) => ({
      start: b.index * bs,
      length: Math.min(bs, this.size - b.index * bs),
      control: b.control,
      data: b.data,
    }));
    const msg: FetchMessage = { op: 'fetch', file: this.id, blocks: list, urgent };
    RemoteClient.get(this.path).post(msg);
  }

  /**
   * Under readWithoutWaiting: a block of the read still on its way ends this attempt (BlockPending on
   * the last such block: blocks of one request arrive in order). Past the wait limit, EIO as usual.
   */
  private leaveIfPending(first: number, last: number, what: string, position: number): void {
    for (let index = last; index >= first; index--) {
      const block = this.cache.get(this.id, index);
      if (!block || Atomics.load(block.state, 0) !== SLOT.PENDING) continue;
      if (Date.now() - waiting!.since >= this.waitLimitMs) this.settled(block, what, position, 0);
      throw new BlockPending(block.state, this.waitLimitMs);
    }
  }

  /**
   * A read that starts where one of the recent ones ended (give or take a block: the kernel reorders a
   * little) extends that reader's window of blocks fetched ahead, doubling up to readAheadMax; requests
   * go out in MAX_REQUEST_BYTES pieces so that several are in flight. The same read again (a retry
   * under readWithoutWaiting) changes nothing. True while the reader is sequential.
   */
  private readAhead(position: number, length: number, lastBlock: number): boolean {
    const bs = this.blockSize;
    const readEnd = position + length;
    // Forward by up to one read: the kernel's readahead requests overtake each other.
    const slack = Math.max(bs, length);
    let stream = this.streams.find((x) => (x.start === position && x.end === readEnd) || (position >= x.end - bs && position <= x.end + slack));
    if (stream) {
      this.streams.splice(this.streams.indexOf(stream), 1);
      if (stream.start !== position || stream.end !== readEnd) stream = { start: position, end: readEnd, streak: stream.streak + 1 };
    } else stream = { start: position, end: readEnd, streak: 0 };
    this.streams.unshift(stream);
    if (this.streams.length > MAX_STREAMS) this.streams.pop();
    if (stream.streak < 2) return false;
    // Readers at once share the read-ahead budget, so pending blocks never fill the cache (streams
    // within one window of each other are one reader's requests seen out of order).
    const readers = 1 + this.streams.filter((x) => x !== stream && x.streak >= 2 && Math.abs(x.end - readEnd) > this.readAheadMax).length;
    // The window doubles from one of the reader's own reads (a block for small FUSE reads; 4 MiB for
    // qcow-export's), so a large reader is not held to a window smaller than what it asks for at once.
    const unit = Math.max(bs, Math.ceil(length / bs) * bs);
    const window = Math.min(Math.max(bs, this.readAheadMax / readers), unit * 2 ** Math.min(stream.streak, 30));
    const lastInFile = Math.floor((this.size - 1) / bs);
    const end = Math.min(lastInFile, lastBlock + Math.max(1, Math.floor(window / bs)));
    // Top up only when a worthwhile piece of the window is missing, not one block per read.
    let firstMissing = lastBlock + 1;
    while (firstMissing <= end && this.cache.has(this.id, firstMissing)) firstMissing++;
    if (firstMissing > end) return true;
    const worthwhile = Math.min(Math.floor(MAX_REQUEST_BYTES / bs), Math.max(1, Math.floor(window / bs / 2)));
    if (end - firstMissing + 1 < worthwhile && end !== lastInFile) return true;
    this.readAheadBlocks += this.fetchMissing(firstMissing, end, false);
    return true;
  }

  /** Waits for a block to settle; a failure is EIO (and a changed object fails every later read too). */
  private settled(block: CachedBlock, what: string, position: number, limitMs: number): void {
    const state = waitFor(block.control, limitMs);
    if (state === SLOT.READY) return;
    const why = state === SLOT.PENDING ? `no answer from the server in ${Math.round(this.waitLimitMs / 1000)} s` : controlMessage(block.control);
    if (state === SLOT.CHANGED) this.changed = why;
    if (state !== SLOT.PENDING) this.cache.drop(block);
    throw new QcowError('EIO', this.path, `reading ${what} at ${hex(position)}: ${redactText(why)}`);
  }
}

/**
 * Reads of metadata (by what the caller says it reads) do not feed the read-ahead: the header, L1 and L2
 * reads at open follow on closely enough to look like a sequential reader, and their read-ahead (~4.5 MiB
 * on the bench image) was fetched for nothing when qcow-export then streamed the data runs past the cache.
 */
const METADATA = /header|table|LUKS key material|backing file name/;

/** Sequential readers told apart per file (each with its own read-ahead window). */
const MAX_STREAMS = 4;

interface Stream {
  start: number;
  end: number;
  /** Reads in a row that followed on. */
  streak: number;
}

/** Set while readWithoutWaiting runs a read: when it began, and whether this is a second try. */
let waiting: { since: number; again: boolean } | undefined;

/** Tries of one read under readWithoutWaiting before it waits the blocking way (blocks evicted meanwhile). */
const MAX_TRIES = 64;

/** A read under readWithoutWaiting needs a block still on its way: wait for `state`, then try again. */
class BlockPending extends Error {
  constructor(
    readonly state: Int32Array,
    readonly limitMs: number,
  ) {
    super('a remote block is on its way');
  }
}

/**
 * Runs a synchronous read (`Disk.readSync` of any view) so that remote files do not block the thread
 * while their blocks arrive: a read that needs a block still on its way is abandoned, the block is
 * awaited (Atomics.waitAsync), and the read runs again (its mapping is cached by then; blocks already
 * in are copied again). So a FUSE daemon can have many remote reads in flight at once. Reads of local
 * files are unaffected. Errors are the read's own: EIO after the wait limit, a changed object, etc.
 */
export async function readWithoutWaiting<T>(read: () => T): Promise<T> {
  const since = Date.now();
  for (let tries = 1; ; tries++) {
    let pending: BlockPending;
    waiting = tries < MAX_TRIES ? { since, again: tries > 1 } : undefined;
    try {
      return read();
    } catch (err) {
      if (!(err instanceof BlockPending)) throw err;
      pending = err;
    } finally {
      waiting = undefined;
    }
    // Alone, a read first waits a moment in place: a nearby server answers within it, and the hop
    // through the event loop (~40 µs) is saved. With others in flight it lets go at once.
    if (outstanding === 0 && Atomics.wait(pending.state, 0, SLOT.PENDING, BRIEF_WAIT_MS) !== 'timed-out') continue;
    outstanding++;
    try {
      const wait = waitAsync(pending.state, 0, SLOT.PENDING, Math.max(1, pending.limitMs - (Date.now() - since)));
      if (wait.async) await wait.value;
    } finally {
      outstanding--;
    }
  }
}

/** A stream's failure as the worker wrote it (JSON; cut short, it is the text itself). */
function parseFailure(text: string): StreamFailure {
  try {
    return JSON.parse(text) as StreamFailure;
  } catch {
    return { message: text };
  }
}

/** Names stream jobs to the worker (for a cancel). */
let nextStreamJob = 0;

/** Reads of readWithoutWaiting waiting asynchronously now. */
let outstanding = 0;
/** How long a lone read waits for its block in place before it lets the thread go (ms). */
const BRIEF_WAIT_MS = 1;

/** Atomics.waitAsync (Node 16+; not in this project's TypeScript lib). */
const waitAsync = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number, t: number): { async: boolean; value: Promise<string> | string } }).waitAsync;

/** Longest a caller waits for one block: every attempt timing out, with every backoff, plus slack. */
function waitLimit(s: ConnectionSettings): number {
  let backoff = 0;
  for (let i = 0, d = s.backoffMs; i < s.retries; i++, d *= 2) backoff += d;
  return s.timeoutMs * (s.retries + 1) * 2 + backoff + 5_000;
}

/**
 * Forgets the block an open claimed and the worker did not fill. Still PENDING, the cache would not reuse
 * its buffer: marked failed first (nobody waits on it; the worker never writes it once the open settled).
 */
function dropUnfilled(cache: BlockCache, block: CachedBlock): void {
  if (Atomics.load(block.state, 0) === SLOT.PENDING) Atomics.store(block.state, 0, SLOT.FAILED);
  cache.drop(block);
}

function waitFor(control: SharedArrayBuffer, limitMs: number): number {
  const state = new Int32Array(control, 0, 2);
  const deadline = Date.now() + limitMs;
  for (;;) {
    const now = Atomics.load(state, 0);
    if (now !== SLOT.PENDING) return now;
    const left = deadline - Date.now();
    if (left <= 0) return SLOT.PENDING;
    Atomics.wait(state, 0, SLOT.PENDING, left);
  }
}

/** The one network worker of this thread, started on first use; it never keeps the process alive. */
class RemoteClient {
  private static instance: RemoteClient | undefined;
  private readonly worker: Worker;
  private failure?: string;

  private constructor() {
    this.worker = startWorker();
    this.worker.unref();
    this.worker.on('error', (err) => {
      this.failure = redactText(err.message);
    });
    this.worker.on('exit', () => {
      this.failure ??= 'the network worker exited';
      if (RemoteClient.instance === this) RemoteClient.instance = undefined;
    });
  }

  static get(shown: string): RemoteClient {
    const c = (RemoteClient.instance ??= new RemoteClient());
    if (c.failure) {
      RemoteClient.instance = undefined;
      throw new QcowError('EIO', shown, `the network worker failed: ${c.failure}`);
    }
    return c;
  }

  static existing(): RemoteClient | undefined {
    return RemoteClient.instance;
  }

  post(msg: WorkerMessage): void {
    this.worker.postMessage(msg);
  }
}

/**
 * The worker is the built remote-worker.js (where: ../package-files.ts); run from the TypeScript sources
 * (tests, tsx), it is remote-worker.ts beside this file, loaded through tsx.
 */
function startWorker(): Worker {
  const js = workerScript('io/remote-worker');
  if (fs.existsSync(js)) return new (lazyWorkerThreads().Worker)(js);
  const ts = new URL('./remote-worker.ts', import.meta.url);
  const boot = `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(ts.href)}); })`;
  return new (lazyWorkerThreads().Worker)(boot, { eval: true });
}
