/**
 * The network side of remote files (remote-file.ts): a worker thread that owns the HTTP(S) connections
 * (keep-alive agents) and writes the bytes of Range requests straight into shared memory, flagging each
 * block when it is complete so that a waiting reader can go on before the whole request is in.
 * Retries with backoff are done here; the calling thread only ever sees READY, FAILED or CHANGED.
 */
import type http from 'node:http';
import type https from 'node:https';
import { createRequire } from 'node:module';
import { parentPort } from 'node:worker_threads';
import { type BodyTarget, type Cancellable, FallbackError, RangeClient, type ResponseHead, type Tracker, tlsModule } from './range-client.js';
import { FileSink, SINK_BUFFER_BYTES, SinkCancelled, SinkWriteError } from './file-sink.js';
import { redactText, sameOrigin } from './remote-url.js';
import {
  type ConnectionSettings,
  type FetchBlock,
  type FetchMessage,
  type OpenAnswer,
  type OpenMessage,
  type StreamFailure,
  type StreamMessage,
  type WorkerMessage,
  SLOT,
  STAT,
  STREAM_PROGRESS,
  settle,
} from './remote-protocol.js';

/** Requests on the wire at once, over all files. */
const MAX_IN_FLIGHT = 12;
const MAX_REDIRECTS = 5;

interface RemoteObject {
  url: URL;
  settings: ConnectionSettings;
  size: number;
  etag?: string;
  lastModified?: string;
  stats: BigInt64Array;
  /** Set once a response shows another object: every later fetch fails the same way. */
  changed?: string;
  closed: boolean;
  requests: Set<{ destroy(error?: Error): void }>;
  /** The lean client for this object's Range GETs, until an answer needs the http module. */
  fast?: RangeClient;
}

/** An error that no retry can cure. */
class FinalError extends Error {
  constructor(
    message: string,
    readonly state: number = SLOT.FAILED,
    readonly status?: number,
  ) {
    super(message);
  }
}

const objects = new Map<number, RemoteObject>();
/** Requests for readers waiting now; then read-ahead and streams (export), in the order asked. */
const urgent: FetchMessage[] = [];
const ahead: (FetchMessage | StreamMessage)[] = [];
let inFlight = 0;

/** Stream jobs under way (or queued), by job id: what a cancel or a close must stop. */
interface StreamState {
  msg: StreamMessage;
  sink?: FileSink;
  connections: Set<Cancellable>;
  settled: boolean;
}
const streams = new Map<number, StreamState>();
/** Sink buffers of finished streams, reused: the number in use is bounded by MAX_IN_FLIGHT. */
const freeBuffers: Buffer[] = [];

/**
 * Node's http, https and tls modules are loaded when first needed: a plain-HTTP image served the usual
 * way never needs them (the lean client needs only net), and loading the three costs the worker's start
 * ~10 ms (3 ms for net alone).
 */
const lazy = createRequire(import.meta.url);
const httpModule = (): typeof http => lazy('node:http') as typeof http;
const httpsModule = (): typeof https => lazy('node:https') as typeof https;

const agents = new Map<string, http.Agent>();

function agentFor(url: URL, settings: ConnectionSettings): http.Agent {
  const key = `${url.protocol}|${settings.ca ?? ''}`;
  let agent = agents.get(key);
  if (!agent) {
    agent =
      url.protocol === 'https:'
        ? new (httpsModule().Agent)({ keepAlive: true, maxFreeSockets: MAX_IN_FLIGHT, ...(settings.ca ? { ca: [...tlsModule().rootCertificates, settings.ca] } : {}) })
        : new (httpModule().Agent)({ keepAlive: true, maxFreeSockets: MAX_IN_FLIGHT });
    agents.set(key, agent);
  }
  return agent;
}

parentPort!.on('message', (msg: WorkerMessage) => {
  if (msg.op === 'open') void open(msg);
  else if (msg.op === 'fetch') {
    (msg.urgent ? urgent : ahead).push(msg);
    pump();
  } else if (msg.op === 'stream') {
    streams.set(msg.job, { msg, connections: new Set(), settled: false });
    ahead.push(msg);
    pump();
  } else if (msg.op === 'cancel') cancelStream(msg.job, 'cancelled');
  else if (msg.op === 'close') close(msg.file);
});

function close(file: number): void {
  const obj = objects.get(file);
  if (!obj) return;
  obj.closed = true;
  objects.delete(file);
  for (const req of obj.requests) req.destroy(new Error('closed'));
  for (const [job, state] of streams) if (state.msg.file === file) cancelStream(job, 'the file was closed');
}

async function open(msg: OpenMessage): Promise<void> {
  const url = new URL(msg.url);
  const obj: RemoteObject = {
    url,
    settings: msg.settings,
    size: -1,
    stats: new BigInt64Array(msg.stats),
    closed: false,
    requests: new Set(),
  };
  objects.set(msg.file, obj);
  try {
    if (RangeClient.usable(obj.settings.headers)) {
      const tlsOptions = url.protocol === 'https:' ? (obj.settings.ca ? { ca: [...tlsModule().rootCertificates, obj.settings.ca] } : {}) : undefined;
      obj.fast = new RangeClient(url, tlsOptions, obj.settings.timeoutMs);
    }
    const answer = await withRetries(obj, () => probe(obj, msg.first));
    obj.size = answer.size;
    obj.etag = answer.etag;
    obj.lastModified = answer.lastModified;
    if (answer.first) settle(msg.first!.control, SLOT.READY);
    settle(msg.control, SLOT.READY, JSON.stringify(answer));
  } catch (err) {
    objects.delete(msg.file);
    const status = err instanceof FinalError ? err.status : undefined;
    settle(msg.control, SLOT.FAILED, JSON.stringify({ message: errorText(err), status }));
  }
}

/**
 * Learns the size and validators, and refuses a server that ignores Range: with the lean client, one
 * Range GET for the whole of the file's first cache block (a 206 proves Range support and brings the
 * header with it); else (a redirect, a chunked answer, headers the lean client cannot send) a one-byte
 * Range GET through the http module.
 */
async function probe(obj: RemoteObject, first: OpenMessage['first']): Promise<OpenAnswer> {
  if (obj.fast && first) {
    try {
      return await probeFast(obj, obj.fast, first);
    } catch (err) {
      if (!(err instanceof FallbackError)) throw err;
      obj.fast = undefined; // a redirect or a chunked body: the http module from now on
    }
  }
  return probeSlow(obj);
}

/** The probe through the lean client: block 0's bytes go straight into `first.data`. */
async function probeFast(obj: RemoteObject, client: RangeClient, first: NonNullable<OpenMessage['first']>): Promise<OpenAnswer> {
  let answer: OpenAnswer | undefined;
  let filled = 0;
  Atomics.add(obj.stats, STAT.REQUESTS, 1n);
  await client.get(requestHeaders(obj, obj.url, `bytes=0-${first.data.byteLength - 1}`), (res: ResponseHead) => {
    answer = probeAnswer(res);
    if (answer.size === 0) return undefined;
    const length = Math.min(answer.size, first.data.byteLength);
    const range = parseContentRange(header(res, 'content-range'))!;
    if (range.end !== length - 1) throw new FinalError(`asked for bytes 0-${first.data.byteLength - 1}, the server sent "${header(res, 'content-range') ?? ''}"`);
    answer.first = true;
    return {
      length,
      room: () => new Uint8Array(first.data, filled, length - filled),
      wrote: (n) => {
        filled += n;
        Atomics.add(obj.stats, STAT.BYTES, BigInt(n));
      },
    };
  }, obj.requests);
  return answer!;
}

/** The one-byte probe through Node's http module (not HEAD: a presigned URL is signed for one method, GET). */
async function probeSlow(obj: RemoteObject): Promise<OpenAnswer> {
  const res = await request(obj, 'bytes=0-0');
  try {
    const answer = probeAnswer(res);
    if (answer.size > 0) await drain(res);
    return answer;
  } finally {
    res.destroy();
  }
}

/**
 * What the answer to a Range request starting at byte 0 says of the object: its size and validators.
 * Refuses a server that ignores Range and an answer that does not say the size.
 */
function probeAnswer(res: Answer): OpenAnswer {
  const etag = header(res, 'etag');
  const lastModified = header(res, 'last-modified');
  if (res.statusCode === 200 && header(res, 'content-length') === '0') {
    // An empty object: some servers (nginx) answer a Range on it with a plain empty 200.
    return { size: 0, etag, lastModified };
  }
  if (res.statusCode === 200) throw new FinalError('the server ignores Range requests (answered 200 with the whole object): it cannot serve an image');
  if (res.statusCode === 416) {
    // An empty object has no byte 0: the server says so with its size.
    const total = /^bytes \*\/(\d+)$/.exec(header(res, 'content-range') ?? '');
    if (total && Number(total[1]) === 0) return { size: 0, etag, lastModified };
  }
  if (res.statusCode !== 206) throw statusError(res);
  const text = header(res, 'content-range');
  const range = parseContentRange(text);
  if (!range || range.start !== 0) throw new FinalError(`the server answered a Range request with a bad Content-Range "${text ?? ''}"`);
  if (range.total === undefined) throw new FinalError('the server does not say the object\'s size (Content-Range "bytes 0-0/*")');
  if (!Number.isSafeInteger(range.total)) throw new FinalError(`the server gives an impossible size ${range.total}`);
  return { size: range.total, etag, lastModified };
}

function pump(): void {
  while (inFlight < MAX_IN_FLIGHT) {
    const job = urgent.shift() ?? ahead.shift();
    if (!job) return;
    if (job.op === 'stream' && streams.get(job.job)?.settled !== false) continue; // cancelled while queued
    inFlight++;
    void (job.op === 'stream' ? streamJob(job) : fetchBlocks(job)).finally(() => {
      inFlight--;
      pump();
    });
  }
}

async function fetchBlocks(job: FetchMessage): Promise<void> {
  const obj = objects.get(job.file);
  if (!obj) {
    for (const b of job.blocks) settle(b.control, SLOT.FAILED, 'the file was closed');
    return;
  }
  // Blocks already complete stay complete across a retry: a retry asks only for the rest.
  let next = 0;
  try {
    await withRetries(obj, async () => {
      try {
        next = await fetchInto(obj, job.blocks, next);
      } catch (err) {
        next = (err as { progress?: number }).progress ?? next;
        throw err;
      }
    });
  } catch (err) {
    const state = err instanceof FinalError ? err.state : SLOT.FAILED;
    const text = errorText(err);
    for (let i = next; i < job.blocks.length; i++) settle(job.blocks[i].control, state, text);
  }
}

/** One Range request for blocks[first..]: returns the index past the last complete block. */
async function fetchInto(obj: RemoteObject, blocks: FetchBlock[], first: number): Promise<number> {
  if (obj.changed) throw new FinalError(obj.changed, SLOT.CHANGED);
  if (obj.fast) {
    try {
      return await fetchFast(obj, obj.fast, blocks, first);
    } catch (err) {
      if (!(err instanceof FallbackError)) throw err;
      obj.fast = undefined; // a redirect or a chunked body: the http module from now on
    }
  }
  const start = blocks[first].start;
  const last = blocks[blocks.length - 1];
  const end = last.start + last.length;
  const res = await request(obj, `bytes=${start}-${end - 1}`);
  let i = first;
  try {
      checkAnswer(obj, res, start, end);
    let filled = 0;
    let view = new Uint8Array(blocks[i].data, 0, blocks[i].length);
    for await (const chunk of res as AsyncIterable<Buffer>) {
      // Read to the end (not break) so that the connection stays open for the next request.
      if (i === blocks.length) continue;
      Atomics.add(obj.stats, STAT.BYTES, BigInt(chunk.length));
      let at = 0;
      while (at < chunk.length) {
        const n = Math.min(chunk.length - at, view.length - filled);
        view.set(chunk.subarray(at, at + n), filled);
        filled += n;
        at += n;
        if (filled === view.length) {
          settle(blocks[i].control, SLOT.READY);
          i++;
          filled = 0;
          if (i === blocks.length) break;
          view = new Uint8Array(blocks[i].data, 0, blocks[i].length);
        }
      }
    }
    if (i < blocks.length) throw new Error(`the connection closed after ${blocks[i].start - start + filled} of ${end - start} bytes`);
    return i;
  } catch (err) {
    // Hand back progress so that the retry starts at the first incomplete block.
    throw Object.assign(err as Error, { progress: i });
  } finally {
    res.destroy();
  }
}

/** Refuses an answer that is not the asked-for part of the object opened. */
function checkAnswer(obj: RemoteObject, res: Answer, start: number, end: number): void {
  if (res.statusCode !== 206) {
    if (res.statusCode === 200) throw changedError(obj, 'the server now ignores Range requests (200 with the whole object)');
    throw statusError(res);
  }
  checkSameObject(obj, res);
  const range = parseContentRange(header(res, 'content-range'));
  if (!range || range.start !== start || range.end !== end - 1) {
    throw new FinalError(`asked for bytes ${start}-${end - 1}, the server sent "${header(res, 'content-range') ?? ''}"`);
  }
}

/**
 * fetchInto through the lean client: the body goes straight into the blocks' shared memory, each block
 * flagged READY as soon as it is full.
 */
async function fetchFast(obj: RemoteObject, client: RangeClient, blocks: FetchBlock[], first: number): Promise<number> {
  const start = blocks[first].start;
  const last = blocks[blocks.length - 1];
  const end = last.start + last.length;
  Atomics.add(obj.stats, STAT.REQUESTS, 1n);
  let i = first;
  let filled = 0;
  // Counted once per request, not per read of the socket (a BigInt each).
  let got = 0;
  const target: BodyTarget = {
    length: end - start,
    room: () => new Uint8Array(blocks[i].data, filled, blocks[i].length - filled),
    wrote(n) {
      got += n;
      filled += n;
      if (filled === blocks[i].length) {
        settle(blocks[i].control, SLOT.READY);
        i++;
        filled = 0;
      }
    },
  };
  try {
    await client.get(requestHeaders(obj, obj.url, `bytes=${start}-${end - 1}`), (res: ResponseHead) => {
      checkAnswer(obj, res, start, end);
      return target;
    }, obj.requests);
    return i;
  } catch (err) {
    throw Object.assign(err as Error, { progress: i });
  } finally {
    Atomics.add(obj.stats, STAT.BYTES, BigInt(got));
  }
}

/**
 * A stream job: the object's bytes [start, start + length) written into the output file as they arrive
 * (FileSink), with retries that resume where the last attempt's written bytes end.
 */
async function streamJob(msg: StreamMessage): Promise<void> {
  const state = streams.get(msg.job)!;
  const obj = objects.get(msg.file);
  if (!obj) return finishStream(state, SLOT.FAILED, { message: 'the file was closed' });
  const progress = new Float64Array(msg.progress);
  const buffer = freeBuffers.pop() ?? Buffer.allocUnsafe(SINK_BUFFER_BYTES);
  const sink = new FileSink(buffer, msg.outFd, msg.outPos, msg.sparseBlock, (covered, written) => {
    progress[STREAM_PROGRESS.COVERED] = covered;
    progress[STREAM_PROGRESS.WRITTEN] = written;
  });
  state.sink = sink;
  try {
    await withRetries(obj, () => streamOnce(obj, msg, sink, state));
    finishStream(state, SLOT.READY);
  } catch (err) {
    if (err instanceof SinkWriteError) finishStream(state, SLOT.FAILED, { message: redactText(err.message), writeCode: err.error.code ?? 'EIO' });
    else finishStream(state, err instanceof FinalError ? err.state : SLOT.FAILED, { message: errorText(err) });
  } finally {
    freeBuffers.push(buffer);
  }
}

/** One Range request for what the stream has not written yet. */
async function streamOnce(obj: RemoteObject, msg: StreamMessage, sink: FileSink, state: StreamState): Promise<void> {
  if (state.settled) throw new FinalError('cancelled');
  if (obj.changed) throw new FinalError(obj.changed, SLOT.CHANGED);
  sink.restart();
  const start = msg.start + sink.covered;
  const end = msg.start + msg.length;
  if (start >= end) return;
  sink.length = end - start;
  const track: Tracker = {
    add: (c) => {
      obj.requests.add(c);
      state.connections.add(c);
    },
    delete: (c) => {
      obj.requests.delete(c);
      state.connections.delete(c);
    },
  };
  try {
    if (obj.fast) {
      try {
        Atomics.add(obj.stats, STAT.REQUESTS, 1n);
        await obj.fast.get(requestHeaders(obj, obj.url, `bytes=${start}-${end - 1}`), (res: ResponseHead) => {
          checkAnswer(obj, res, start, end);
          return sink;
        }, track);
        Atomics.add(obj.stats, STAT.BYTES, BigInt(end - start));
        sink.flush();
        return;
      } catch (err) {
        if (!(err instanceof FallbackError)) throw err;
        obj.fast = undefined; // a redirect or a chunked body: the http module from now on
        sink.restart();
      }
    }
    const res = await request(obj, `bytes=${start}-${end - 1}`);
    track.add(res);
    try {
      checkAnswer(obj, res, start, end);
      let got = 0;
      for await (const chunk of res as AsyncIterable<Buffer>) {
        const n = Math.min(chunk.length, end - start - got);
        if (n > 0) sink.push(n === chunk.length ? chunk : chunk.subarray(0, n));
        got += n;
      }
      Atomics.add(obj.stats, STAT.BYTES, BigInt(got));
      if (got < end - start) throw new Error(`the connection closed after ${got} of ${end - start} bytes`);
      sink.flush();
    } finally {
      track.delete(res);
      res.destroy();
    }
  } catch (err) {
    // No retry writes once cancelled (a failed write is not retried either: see withRetries).
    if (err instanceof SinkCancelled || state.settled) throw new FinalError('cancelled');
    throw err;
  }
}

/** Settles a stream job once; after that its sink writes nothing more. */
function finishStream(state: StreamState, slot: number, failure?: StreamFailure): void {
  if (state.settled) return;
  state.settled = true;
  if (state.sink) state.sink.cancelled = true;
  streams.delete(state.msg.job);
  settle(state.msg.control, slot, failure ? JSON.stringify(failure) : '');
}

/** Stops a stream at once: settled now (nothing is written after this), its connection dropped. */
function cancelStream(job: number, why: string): void {
  const state = streams.get(job);
  if (!state) return;
  finishStream(state, SLOT.FAILED, { message: why });
  for (const c of state.connections) c.destroy(new Error(why));
}

/** Runs `attempt` up to 1 + retries times, with doubling backoff; a FinalError is not retried. */
async function withRetries<T>(obj: RemoteObject, attempt: () => Promise<T>): Promise<T> {
  let delay = obj.settings.backoffMs;
  for (let n = 0; ; n++) {
    try {
      return await attempt();
    } catch (err) {
      if (err instanceof FinalError || err instanceof SinkWriteError || isCertificateError(err) || obj.closed || n >= obj.settings.retries) {
        Atomics.add(obj.stats, STAT.FAILURES, 1n);
        throw err;
      }
      Atomics.add(obj.stats, STAT.RETRIES, 1n);
      await new Promise((r) => setTimeout(r, delay));
      delay *= 2;
    }
  }
}

/** A GET with a Range header; follows redirects, sends the user's headers to the image's own server only. */
function request(obj: RemoteObject, range: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    let redirects = 0;
    const go = (url: URL): void => {
      if (obj.closed) return reject(new FinalError('the file was closed'));
      const headers = Object.fromEntries(requestHeaders(obj, url, range));
      const lib = url.protocol === 'https:' ? httpsModule() : httpModule();
      Atomics.add(obj.stats, STAT.REQUESTS, 1n);
      const req = lib.get(url, { agent: agentFor(url, obj.settings), headers, timeout: obj.settings.timeoutMs });
      obj.requests.add(req);
      req.on('close', () => obj.requests.delete(req));
      req.on('timeout', () => req.destroy(new Error(`no answer for ${obj.settings.timeoutMs} ms`)));
      req.on('error', reject);
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        const location = header(res, 'location');
        if (status >= 300 && status < 400 && status !== 304 && location) {
          res.destroy();
          if (++redirects > MAX_REDIRECTS) return reject(new FinalError(`more than ${MAX_REDIRECTS} redirects`));
          let target: URL;
          try {
            target = new URL(location, url);
          } catch {
            return reject(new FinalError('a redirect to an invalid URL'));
          }
          if (target.protocol !== 'http:' && target.protocol !== 'https:') return reject(new FinalError(`a redirect to ${target.protocol}`));
          return go(target);
        }
        // The body, slow or not, is watched by the socket timeout too.
        res.socket?.setTimeout(obj.settings.timeoutMs);
        resolve(res);
      });
    };
    go(obj.url);
  });
}

/** Range, no compression, and the user's headers for the image's own server only. */
function requestHeaders(obj: RemoteObject, url: URL, range: string): [string, string][] {
  const headers: [string, string][] = [['Range', range], ['Accept-Encoding', 'identity']];
  if (sameOrigin(url, obj.url)) headers.push(...obj.settings.headers);
  return headers;
}

/** What the checks need of an answer, from the http module or the lean client. */
type Answer = { statusCode?: number; statusMessage?: string; headers: Record<string, string | string[] | undefined> };

function checkSameObject(obj: RemoteObject, res: Answer): void {
  const etag = header(res, 'etag');
  const lastModified = header(res, 'last-modified');
  const range = parseContentRange(header(res, 'content-range'));
  if (range?.total !== undefined && range.total !== obj.size) {
    throw changedError(obj, `its size is now ${range.total} bytes, was ${obj.size} when opened`);
  }
  if (obj.etag !== undefined && etag !== undefined && etag !== obj.etag) {
    throw changedError(obj, `its ETag is now ${etag}, was ${obj.etag} when opened`);
  }
  if (obj.lastModified !== undefined && lastModified !== undefined && lastModified !== obj.lastModified) {
    throw changedError(obj, `its Last-Modified is now ${lastModified}, was ${obj.lastModified} when opened`);
  }
}

function changedError(obj: RemoteObject, why: string): FinalError {
  obj.changed = `the object changed on the server since it was opened (${why}); no more reads are served from it`;
  return new FinalError(obj.changed, SLOT.CHANGED);
}

function statusError(res: Answer): FinalError | Error {
  const status = res.statusCode ?? 0;
  const text = `the server answered ${status} ${res.statusMessage ?? ''}`.trim();
  // Server errors and throttling may pass; anything else will not.
  if (status >= 500 || status === 429 || status === 408) return new Error(text);
  return new FinalError(text, SLOT.FAILED, status);
}

function header(res: Answer, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function parseContentRange(text: string | undefined): { start: number; end: number; total?: number } | undefined {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(text?.trim() ?? '');
  if (!m) return undefined;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) };
}

async function drain(res: http.IncomingMessage): Promise<void> {
  for await (const _ of res as AsyncIterable<Buffer>) {
    // a one-byte body
  }
}

/** A certificate the server presents will not be any better on a retry. */
function isCertificateError(err: unknown): boolean {
  const code = String((err as NodeJS.ErrnoException)?.code ?? '');
  return /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/.test(code);
}

function errorText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const text = e?.code && !String(e.message).includes(e.code) ? `${e.message} (${e.code})` : String(e?.message ?? err);
  return redactText(text);
}
