/**
 * The only module that imports fuse-native: mounts a set of FuseOps at a folder and reports when the
 * kernel has connected (FUSE INIT answered).
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import type Fuse from 'fuse-native';
import type { FuseOps } from './fuse-ops.js';
import { FUSE_SUBTYPE } from './system.js';

export interface AdapterOptions {
  allowOther: boolean;
  /** Shown as the mount's source (`df`, `mount`); commas and backslashes are dropped. */
  fsname: string;
  /** Seconds the kernel may cache attributes and names: the tree never changes while mounted. */
  cacheSeconds?: number;
  /** Largest read request, in bytes. */
  maxRead?: number;
  /** How long to wait for the kernel's INIT before giving up (ms). */
  initTimeoutMs?: number;
}

export { FUSE_SUBTYPE };

export interface MountedFuse {
  mountPoint: string;
  /** The options string handed to libfuse, for the log. */
  optionString: string;
}

/**
 * Mounts `ops` at `mountPoint`. Resolves once FUSE INIT has been answered, so the mount answers
 * requests; rejects (with libfuse's failure) when the kernel refused the mount.
 *
 * Options, chosen for an immutable image:
 * - `ro`: the kernel refuses every write with EROFS before asking us (the ops answer EROFS too);
 * - `default_permissions`: the kernel checks the 0444/0555 modes, as for any file system;
 * - `kernel_cache` (and no `auto_cache`): page cache is kept across opens, since nothing changes;
 * - long `attr_timeout`/`entry_timeout`/`negative_timeout`: names and sizes never change;
 * - `max_read` of 128 KiB or more; no per-request timeout in fuse-native (it costs a timer per request).
 */
export function mountFuse(mountPoint: string, ops: FuseOps, options: AdapterOptions): Promise<MountedFuse> {
  const cache = options.cacheSeconds ?? 3600;
  // Required here, not imported: its addon (and libfuse 2) is loaded only by a compat mount, never by a
  // native one or by the command's start (a bundle hoists every import of an external package).
  const FuseNative = createRequire(import.meta.url)('fuse-native') as typeof Fuse;
  const fuse = new FuseNative(mountPoint, ops, {
    timeout: false,
    force: false, // the CLI checks the mount point itself; never unmount something found there
    mkdir: false,
    allowOther: options.allowOther,
    defaultPermissions: true,
    kernelCache: true,
    autoCache: false,
    attrTimeout: cache,
    entryTimeout: cache,
    maxRead: Math.max(131072, options.maxRead ?? 131072),
    fsname: options.fsname.replace(/[,\\]/g, '') || FUSE_SUBTYPE,
    subtype: FUSE_SUBTYPE,
  });
  installDirectReadHandler(fuse, ops);
  const base = fuse._fuseOptions.bind(fuse);
  const optionString = `${base()},ro,negative_timeout=${cache}`;
  fuse._fuseOptions = () => optionString;

  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      reject(new Error(`the kernel did not start the FUSE session within ${(options.initTimeoutMs ?? 15000) / 1000} s`));
    }, options.initTimeoutMs ?? 15000);
    fuse.mount((err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve({ mountPoint: fuse.mnt, optionString });
    });
  });
}

/** The native side of fuse-native that the direct read handler talks to. */
interface FuseBinding {
  op_read: number;
  /** Answers a read request: (thread handle, bytes read or -errno, unused, the buffer's ArrayBuffer to detach). */
  fuse_native_signal_read(handle: unknown, result: number, unused: number, arrayBuffer: ArrayBufferLike): void;
}

let binding: FuseBinding | null | undefined;

/** fuse-native's native module (the same instance fuse-native itself loaded), or null if it cannot be found. */
function fuseBinding(): FuseBinding | null {
  if (binding !== undefined) return binding;
  try {
    const require = createRequire(import.meta.url);
    const dir = path.dirname(require.resolve('fuse-native/package.json'));
    const b = (require('node-gyp-build') as (dir: string) => Partial<FuseBinding>)(dir);
    binding = typeof b.fuse_native_signal_read === 'function' && typeof b.op_read === 'number' ? (b as FuseBinding) : null;
  } catch {
    binding = null;
  }
  return binding;
}

/**
 * Reads are the hot path: every 4 KiB random read is one FUSE request. fuse-native's generic handler
 * allocates per request (a bound signal, two argument arrays, a closure) and answers through
 * process.nextTick; this one calls ops.read and answers the native thread directly, with the same
 * arguments and the same answer (bytes read or -errno; the buffer's ArrayBuffer is detached so the
 * request's memory cannot be touched once answered). Any other operation keeps fuse-native's handler.
 * If fuse-native's internals are not as expected, nothing is replaced.
 */
function installDirectReadHandler(fuse: Fuse, ops: FuseOps): void {
  const b = fuseBinding();
  const handlers = (fuse as unknown as { _handlers?: unknown[] })._handlers;
  if (!b || !Array.isArray(handlers) || typeof handlers[b.op_read] !== 'function') return;
  const signal = b.fuse_native_signal_read;
  const poller = createPoller(process.env.QCOW_MOUNT_POLL_US);
  handlers[b.op_read] = (handle: unknown, _op: number, file: string, fd: number, buf: Buffer, len: number, offsetLow: number, offsetHigh: number) => {
    // Exactly one answer per request: a second one would wake the native thread's next request.
    let answered = false;
    const answer = (result: number) => {
      if (answered) return;
      answered = true;
      signal(handle, result, 0, buf.buffer);
    };
    poller?.arrived();
    try {
      ops.read(file, fd, buf, len, offsetHigh * 4294967296 + offsetLow, answer);
    } catch {
      answer(-5); // EIO: ops.read catches its own errors; this is a last resort so a request never hangs
    }
    if (len <= POLL_MAX_READ) poller?.answered();
  };
}

/** How long the event loop keeps polling for the next request after answering a small read (µs). */
export const DEFAULT_POLL_US = 50;
/** Reads larger than this (readahead, big sequential reads) are not followed by polling. */
const POLL_MAX_READ = 16 * 1024;
/** After seeing readers in parallel, no polling for this long (ms). */
const PARALLEL_QUIET_MS = 5;

/**
 * Adaptive polling for small reads, as QEMU's event loop polls before it sleeps (poll-max-ns).
 *
 * fuse-native hands every request from a libfuse thread to the JS thread and back: a random 4 KiB read
 * from one reader costs the JS thread a sleep and a wake-up (epoll, an IPI, a context switch) per
 * request, and that, not the read, is most of its latency. So after answering a read of <= 16 KiB the
 * event loop keeps turning (setImmediate; epoll with a zero timeout) for up to 50 µs: the next request
 * of a reader that waits for each answer arrives meanwhile and is taken at once. Measured on 2 cores:
 * random 4 KiB, 1 reader 14.8k -> 25.4k IOPS.
 *
 * It never runs when it would only take a core from other work: not after big reads (sequential reads
 * keep both cores busy copying), and not for a while once two requests arrive in one loop turn
 * (readers in parallel keep the loop busy by themselves). It stops 50 µs after the last small read, so
 * an idle mount costs nothing. QCOW_MOUNT_POLL_US sets the window; 0 turns polling off.
 */
function createPoller(setting: string | undefined): { arrived(): void; answered(): void } | undefined {
  const windowUs = setting === undefined || setting === '' ? DEFAULT_POLL_US : Number(setting);
  if (!Number.isFinite(windowUs) || windowUs <= 0) return undefined;
  const windowMs = Math.min(windowUs, 10_000) / 1000;
  let last = 0;
  let polling = false;
  let arrivals = 0;
  let quietUntil = 0;
  const turn = () => {
    const now = performance.now();
    if (arrivals >= 2) {
      polling = false;
      quietUntil = now + PARALLEL_QUIET_MS;
      return;
    }
    arrivals = 0;
    if (now - last < windowMs) setImmediate(turn);
    else polling = false;
  };
  return {
    arrived() {
      arrivals++;
    },
    answered() {
      last = performance.now();
      if (polling || last < quietUntil) return;
      polling = true;
      arrivals = 0;
      setImmediate(turn);
    },
  };
}
