/**
 * A small HTTP/1.1 client for the network worker's Range GETs (remote-worker.ts), used where answers are
 * plain: a 206 with a Content-Length. Node's http module costs about 1.1 ms of CPU per MiB on loopback
 * (a Buffer, a parser pass and a stream event per 64 KiB); here, over plain HTTP, the kernel writes the
 * body straight into the blocks' shared memory (`onread` with a buffer per read) and the whole GET costs
 * about 0.5 ms per MiB. Anything else (a redirect, a chunked body, 1xx) is a FallbackError, and the
 * worker goes back to the http module for that object.
 */
import { createRequire } from 'node:module';
import net from 'node:net';
import type tls from 'node:tls';

/** tls is loaded for an https URL only (it costs a worker's start several ms). */
const lazy = createRequire(import.meta.url);
export const tlsModule = (): typeof tls => lazy('node:tls') as typeof tls;

/** The answer's status line and headers (names in lower case, the first value of each). */
export interface ResponseHead {
  statusCode: number;
  statusMessage: string;
  headers: Record<string, string>;
}

/** Where a body goes: `room()` is the memory for the next bytes, `wrote(n)` says n of them arrived. */
export interface BodyTarget {
  /** Bytes the body must have (its Content-Length). */
  length: number;
  room(): Uint8Array;
  wrote(n: number): void;
}

/** An answer this client does not handle: ask again with the http module. */
export class FallbackError extends Error {}

/** Something that can be cut off when its file closes. */
export interface Cancellable {
  destroy(error?: Error): void;
}

/** Where a request's connection is kept while it runs (a Set will do). */
export interface Tracker {
  add(c: Cancellable): void;
  delete(c: Cancellable): void;
}

const HEAD_LIMIT = 64 * 1024;
const SCRATCH_BYTES = 64 * 1024;

interface Job {
  request: string;
  onHead: (head: ResponseHead) => BodyTarget | undefined;
  resolve: () => void;
  reject: (err: Error) => void;
  head: string;
  target?: BodyTarget;
  remaining: number;
  /** Some answer byte came: a failure now is not a stale keep-alive socket. */
  answered: boolean;
  keepAlive: boolean;
}

/** Keep-alive connections to one origin, one request on each at a time. */
export class RangeClient {
  private readonly idle: Connection[] = [];
  private readonly host: string;
  private readonly port: number;

  constructor(
    private readonly url: URL,
    private readonly tlsOptions: tls.ConnectionOptions | undefined,
    private readonly timeoutMs: number,
  ) {
    this.host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    this.port = Number(url.port) || (url.protocol === 'https:' ? 443 : 80);
  }

  /** True when `headers` can be written as given (no line breaks: the http module refuses those itself). */
  static usable(headers: [string, string][]): boolean {
    return headers.every(([k, v]) => /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(k) && !/[\r\n\0]/.test(v));
  }

  /**
   * GETs the client's URL with `headers`. `onHead` sees the answer's head and returns where the body
   * goes, or undefined to drop the connection unread; it may throw (the error is this call's). Resolves
   * once the body is complete.
   */
  get(headers: [string, string][], onHead: (head: ResponseHead) => BodyTarget | undefined, track: Tracker): Promise<void> {
    const lines = [`GET ${this.url.pathname}${this.url.search} HTTP/1.1`, `Host: ${this.url.host}`];
    if (this.url.username || this.url.password) {
      const user = `${decodeURIComponent(this.url.username)}:${decodeURIComponent(this.url.password)}`;
      lines.push(`Authorization: Basic ${Buffer.from(user).toString('base64')}`);
    }
    for (const [k, v] of headers) lines.push(`${k}: ${v}`);
    const request = `${lines.join('\r\n')}\r\n\r\n`;
    return new Promise<void>((resolve, reject) => {
      const job: Job = { request, onHead, resolve, reject, head: '', remaining: 0, answered: false, keepAlive: true };
      const reused = this.idle.pop();
      const start = (conn: Connection, mayRetry: boolean) => {
        track.add(conn);
        conn.run(job, (err) => {
          track.delete(conn);
          // A kept-alive socket the server closed meanwhile fails before any byte: once more, fresh.
          if (err && mayRetry && !job.answered) return start(this.connect(), false);
          if (err) return reject(err);
          if (job.keepAlive) this.idle.push(conn);
          else conn.destroy();
          resolve();
        });
      };
      start(reused ?? this.connect(), reused !== undefined);
    });
  }

  private connect(): Connection {
    return new Connection(this, this.host, this.port, this.tlsOptions, this.timeoutMs);
  }

  /** An idle connection the server closed. */
  forget(conn: Connection): void {
    const i = this.idle.indexOf(conn);
    if (i >= 0) this.idle.splice(i, 1);
  }
}

class Connection implements Cancellable {
  private readonly socket: net.Socket;
  private readonly scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  private job?: Job;
  private done?: (err?: Error) => void;
  /** The view handed to the last read was a body target's memory (not scratch). */
  private direct = false;
  private dead = false;

  constructor(
    private readonly owner: RangeClient,
    host: string,
    port: number,
    tlsOptions: tls.ConnectionOptions | undefined,
    private readonly timeoutMs: number,
  ) {
    if (tlsOptions) {
      this.socket = tlsModule().connect({ ...tlsOptions, host, port, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'] });
      this.socket.on('data', (chunk: Buffer) => this.feed(chunk));
    } else {
      this.socket = net.connect({
        host,
        port,
        onread: {
          buffer: () => this.nextBuffer(),
          callback: (n: number, buf: Uint8Array) => {
            if (this.direct) this.body(n);
            else this.feed(buf.subarray(0, n));
            return true;
          },
        },
      } as net.NetConnectOpts);
    }
    this.socket.setNoDelay(true);
    this.socket.on('timeout', () => this.socket.destroy(new Error(`no answer for ${this.timeoutMs} ms`)));
    this.socket.on('error', (err) => this.finish(err));
    this.socket.on('close', () => {
      this.dead = true;
      this.finish(new Error('the server closed the connection'));
      this.owner.forget(this);
    });
  }

  run(job: Job, done: (err?: Error) => void): void {
    if (this.dead) return done(new Error('the server closed the connection'));
    this.job = job;
    this.done = done;
    this.socket.ref();
    this.socket.setTimeout(this.timeoutMs);
    this.socket.write(job.request);
  }

  destroy(error?: Error): void {
    this.socket.destroy(error);
  }

  /** Memory for the next read: the body target's, during a body (plain HTTP), else scratch. */
  private nextBuffer(): Uint8Array {
    const job = this.job;
    if (job?.target && job.remaining > 0) {
      const room = job.target.room();
      if (room.length > 0) {
        this.direct = true;
        return room.length > job.remaining ? room.subarray(0, job.remaining) : room;
      }
    }
    this.direct = false;
    return this.scratch;
  }

  private feed(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) {
      const job = this.job;
      if (!job) return void this.socket.destroy(new Error('the server sent bytes nobody asked for'));
      job.answered = true;
      if (!job.target) {
        const before = job.head.length;
        job.head += Buffer.from(chunk.buffer, chunk.byteOffset + at, chunk.length - at).toString('latin1');
        const end = job.head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (job.head.length > HEAD_LIMIT) this.fail(new Error('the server sent an answer head of more than 64 KiB'));
          return;
        }
        at += end + 4 - before;
        if (!this.startBody(job, job.head.slice(0, end))) return;
        continue;
      }
      const room = job.target.room();
      const n = Math.min(room.length, job.remaining, chunk.length - at);
      if (n <= 0) {
        this.fail(new Error('the answer is longer than asked for'));
        return;
      }
      room.set(chunk.subarray(at, at + n));
      at += n;
      this.body(n);
    }
  }

  /** The head is in: decides what happens to the body. False when the job ended. */
  private startBody(job: Job, text: string): boolean {
    const lines = text.split('\r\n');
    const status = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0] ?? '');
    if (!status) return this.fail(new Error('the server sent an answer that is not HTTP/1.x'));
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      headers[name] ??= line.slice(colon + 1).trim();
    }
    const statusCode = Number(status[2]);
    const head: ResponseHead = { statusCode, statusMessage: status[3] ?? '', headers };
    if (statusCode < 200 || (statusCode >= 300 && statusCode < 400)) return this.fail(new FallbackError(`answer ${statusCode} needs the http module`));
    const connection = (headers.connection ?? '').toLowerCase();
    job.keepAlive = status[1] === '1' ? connection !== 'close' : connection === 'keep-alive';
    let target: BodyTarget | undefined;
    try {
      target = job.onHead(head);
    } catch (err) {
      return this.fail(err as Error);
    }
    if (!target) return this.fail(undefined);
    // A body this client reads must say its length (a chunked one goes to the http module).
    const length = headers['content-length'];
    if (headers['transfer-encoding'] !== undefined || length === undefined || !/^\d+$/.test(length)) return this.fail(new FallbackError('a body without Content-Length'));
    if (Number(length) !== target.length) return this.fail(new Error(`the body has ${length} bytes, ${target.length} were asked for`));
    job.target = target;
    job.remaining = target.length;
    if (job.remaining === 0) this.finish();
    return this.job !== undefined;
  }

  private body(n: number): void {
    const job = this.job!;
    job.answered = true;
    job.remaining -= n;
    try {
      job.target!.wrote(n);
    } catch (err) {
      // The target could not take the bytes (a write to a file failed): this request ends with that.
      this.fail(err as Error);
      return;
    }
    if (job.remaining === 0) this.finish();
  }

  /** Ends the job with an error and drops the connection (its body, if any, is not read). */
  private fail(err: Error | undefined): false {
    const job = this.job;
    if (job) job.keepAlive = false;
    this.finish(err);
    this.socket.destroy();
    return false;
  }

  private finish(err?: Error): void {
    const done = this.done;
    if (!done) return;
    this.job = undefined;
    this.done = undefined;
    this.direct = false;
    this.socket.setTimeout(0);
    // An idle socket must not keep the worker's loop turning.
    this.socket.unref();
    done(err);
  }
}
