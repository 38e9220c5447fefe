/**
 * The native FUSE back-end (native/src/fuse3.c): a libfuse 3 low-level session whose worker threads
 * answer the tree's metadata and every read they can serve from the translation map by themselves;
 * the rest comes here, to `read`, on the JS thread. What a read through JS learned can be published
 * to the map (`ViewMapper.fill`) so the next read of those clusters stays native.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { nativeAddonPath } from '../package-files.js';
import type { SectorCipherParams } from '../codec/sector-cipher.js';
import type { Logger } from './fuse-ops.js';
import { FUSE_SUBTYPE } from './system.js';
import type { DiskNode, FileNode, MountTree } from './tree.js';

interface Addon {
  mount(options: object): unknown;
  reply(session: unknown, id: number, buffer: Buffer | null, result: number): void;
  publish(session: unknown, view: number, firstCluster: number, entries: Float64Array, slot: number, zlibLengths?: Float64Array): boolean;
  stats(session: unknown): NativeStats;
  destroy(session: unknown): void;
  unref(session: unknown): void;
  cipherAvailable(name: string): boolean;
  defaultMaxWrite: number;
}

export interface NativeStats {
  /** Reads served by the worker threads from the map. */
  nativeReads: number;
  /** Reads handed to JavaScript. */
  jsReads: number;
  nativeBytes: number;
  /** Native replies of many segments, gathered in a worker's own pipe before going to the kernel. */
  pipedReads: number;
  /** Bytes of map tables allocated. */
  mapBytes: number;
  /** Requests served through FUSE over io_uring (-o fuse_uring). */
  ringRequests: number;
}

/** Where the kernel says whether FUSE over io_uring may be offered (root sets it; default N). */
export const ENABLE_URING_PARAMETER = '/sys/module/fuse/parameters/enable_uring';

/** How requests reach the daemon: FUSE over io_uring, or reads and writes of /dev/fuse. */
export type FuseTransport = 'io_uring' | 'dev';

let addon: Addon | null | undefined;
let loadProblem = '';

/** The built addon, or null (see nativeFuseProblem()). */
function loadAddon(): Addon | null {
  if (addon !== undefined) return addon;
  try {
    const require = createRequire(import.meta.url);
    addon = require(nativeAddonPath('qcow_fuse3')) as Addon;
  } catch (err) {
    addon = null;
    const why = (err as Error).message.split('\n')[0] ?? String(err);
    loadProblem = /Cannot find module/.test(why) ? 'the native FUSE addon is not built (npm install builds it when libfuse3-dev, pkg-config and a C compiler are there)' : `the native FUSE addon does not load: ${why}`;
  }
  return addon;
}

/** Whether the native back-end can be used. */
export function nativeFuseAvailable(): boolean {
  return loadAddon() !== null;
}

/** Why the native back-end cannot be used ('' when it can). */
export function nativeFuseProblem(): string {
  loadAddon();
  return loadProblem;
}

/** Whether the native back-end can decrypt with this OpenSSL cipher (e.g. aes-256-xts) in this Node. */
export function nativeCipherAvailable(name: string): boolean {
  return loadAddon()?.cipherAvailable(name) ?? false;
}

/**
 * An encrypted view's cipher for the worker threads (native/src/sector-crypt.h). Its key buffers are
 * copied into C at mount and zeroed here right after; C zeroes its copy when the session ends.
 */
export interface NativeCrypt extends SectorCipherParams {
  /** IVs from the guest sector (legacy AES), else from the host sector (LUKS). */
  ivGuest: boolean;
  /** Guest IVs: where the view starts in its L1 space (a VM state view lies past the disk). */
  ivOrigin: number;
}

/**
 * Publishes map entries of one view: -1 unknown, -2 zeros, else the cluster's host offset in `slot`;
 * where zlibLengths[i] > 0, entry i is instead a zlib stream of that many bytes at that host offset,
 * which the worker threads inflate.
 */
export type Publisher = (firstCluster: number, entries: Float64Array, slot: number, zlibLengths?: Float64Array) => boolean;

/** How one disk file's reads can be mapped to host files. */
export interface ViewMapper {
  /** log2 of the map's unit (the cluster size: 9..21). */
  clusterBits: number;
  /** log2 of the clusters per published table (one L2 table). */
  tableBits: number;
  /** Set for an encrypted view: its data clusters are decrypted by the worker threads. */
  crypt?: NativeCrypt;
  /** After JS served [position, position + length): publish what is now known about it. */
  fill(position: number, length: number, publish: Publisher): void;
}

export interface NativeMountOptions {
  allowOther: boolean;
  fsname: string;
  uid: number;
  gid: number;
  cacheSeconds?: number;
  /** Worker threads (2-4 are enough; measured in bench/NOTES.md). */
  threads?: number;
  /** Largest request (default 992 KiB: room in libfuse's 1 MiB splice pipe for replies of up to 5 segments). */
  maxWrite?: number;
  /** The mount's bdi read_ahead_kb (default 1024; 0 leaves the kernel's). Needs root. */
  readAheadKb?: number;
  /** Reply with host data spliced from the host file (default); false: copied through a buffer. */
  splice?: boolean;
  /** Open files for direct I/O (FOPEN_DIRECT_IO; st_blksize 1 MiB so stdio and coreutils read big). */
  directIo?: boolean;
  /** Every request through JS, logged (the compat back-end's -d). */
  debug?: boolean;
  /** Ask for FUSE over io_uring (-o fuse_uring): used when the kernel offers it, else /dev/fuse. */
  fuseUring?: boolean;
  /** Ring entries per queue (default: 8, fewer on hosts of many CPUs; native/src/fuse3.c). */
  uringEntries?: number;
  /** Where the queue threads run (native/src/fuse-uring.h; default adaptive). */
  uringPlacement?: 'adaptive' | 'pinned' | 'floating';
  /** How the rings are set up (measuring): plain (default), coop (COOP_TASKRUN), defer (DEFER_TASKRUN). */
  uringSetup?: 'plain' | 'coop' | 'defer';
  logger: Logger;
  /** Host files the mappers publish offsets in; a publisher's slot is the index here. */
  hostFds?: number[];
  /** The map for a disk file, or undefined: every read of that file goes to JS. */
  mapperFor?: (node: DiskNode) => ViewMapper | undefined;
  /** Bytes of map tables at most (default 64 MiB); past that, reads go to JS. */
  mapLimitBytes?: number;
  /** How long to wait for the kernel's INIT (ms). */
  initTimeoutMs?: number;
  /** Serves a read on the JS thread: the compat back-end's read op (EIO and its log line included). */
  read(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void;
  statfs: { bsize: number; frsize: number; blocks: number; files: number; namemax: number };
}

export interface NativeMount {
  mountPoint: string;
  optionString: string;
  /** Resolves when the kernel ended the session (unmounted by any means); the session is freed then. */
  ended: Promise<void>;
  /** False once the session has ended. */
  sessionOpen(): boolean;
  stats(): NativeStats;
  /** The transport INIT settled on. */
  transport: FuseTransport;
  /** With fuseUring: what was set up ("N queues of K entries of X KiB"), or why it was not. */
  transportDetail: string;
  /** Publishes map entries for a mapped disk file (false: not mapped, or past the map's memory bound). */
  publish(node: DiskNode, firstCluster: number, entries: Float64Array, slot: number, zlibLengths?: Float64Array): boolean;
  /** Gives up a mount still running (lazy detach); after `ended` there is nothing left to do. */
  destroy(): void;
}

/** The largest JS reply: a request is never bigger than max_write. */
const JS_BUFFER_BYTES = 1024 * 1024;
/** Reply buffers kept for reuse (reads through JS at once beyond this allocate and drop their own). */
const MAX_SPARE_REPLY_BUFFERS = 8;

/**
 * Mounts `tree` at `mountPoint` with the native back-end. Resolves once FUSE INIT has been answered
 * (and the mount's readahead raised); rejects when the kernel refused the mount or INIT never came.
 */
export async function mountNative(mountPoint: string, tree: MountTree, options: NativeMountOptions): Promise<NativeMount> {
  const a = loadAddon();
  if (!a) throw new Error(loadProblem);
  const cache = options.cacheSeconds ?? 3600;
  const fsname = options.fsname.replace(/[,\\]/g, '') || FUSE_SUBTYPE;
  const optionString = ['ro', 'default_permissions', `fsname=${fsname}`, `subtype=${FUSE_SUBTYPE}`, ...(options.allowOther ? ['allow_other'] : [])].join(',');
  const maxWrite = options.maxWrite ?? a.defaultMaxWrite;

  // Inode i + 1 is node i; the tree numbers its nodes the same way (the root is 1).
  const nodes = tree.nodes();
  const byIno: FileNode[] = [];
  const mappers: (ViewMapper | undefined)[] = [];
  const views: { size: number; clusterBits: number; tableBits: number; crypt?: NativeCrypt }[] = [];
  const viewOf = new Map<number, number>();
  const list = nodes.map((n, i) => {
    if (n.ino !== i + 1) throw new Error(`internal: node ${n.path} has inode ${n.ino}, expected ${i + 1}`);
    const parent = n.path === '/' ? 1 : tree.lookup(n.path.slice(0, n.path.lastIndexOf('/')) || '/')!.ino;
    const name = n.path === '/' ? '/' : n.path.slice(n.path.lastIndexOf('/') + 1);
    const base = { name, path: n.path, parent, mtimeMs: n.mtime.getTime() };
    if (n.kind === 'dir') return { ...base, dir: 1 };
    byIno[n.ino] = n;
    // info.json is read through JS: a mount rewrites it (in place) when the image file changes.
    if (n.kind === 'bytes') return n.path === '/info.json' ? { ...base, size: n.size, view: -1 } : { ...base, size: n.size, bytes: n.bytes };
    const mapper = options.debug ? undefined : options.mapperFor?.(n);
    let view = -1;
    if (mapper) {
      view = views.length;
      views.push({ size: n.size, clusterBits: mapper.clusterBits, tableBits: mapper.tableBits, crypt: mapper.crypt });
      mappers.push(mapper);
      viewOf.set(n.ino, view);
    }
    return { ...base, size: n.size, view };
  });

  let session: unknown;
  let open = true;
  let finalStats: NativeStats | undefined;
  let initDone: ((minor: number) => void) | undefined;
  let transportText: string | null = null;
  let endedDone: (() => void) | undefined;
  const ended = new Promise<void>((resolve) => (endedDone = resolve));
  const init = new Promise<number>((resolve) => (initDone = resolve));
  // Reply buffers are reused: reads answered later (remote ones, several at once) each hold one, and a
  // fresh 1 MiB buffer per read costs its zeroing and page faults (most of a remote read's own CPU time
  // on a first pass). At most MAX_SPARE_REPLY_BUFFERS are kept.
  const spareBuffers: Buffer[] = [];
  const publishers: Publisher[] = mappers.map((_, view) => (first, entries, slot, zlibLengths) => a.publish(session, view, first, entries, slot, zlibLengths));

  const onRead = (id: number, ino: number, pos: number, len: number) => {
    const node = byIno[ino];
    const buffer = spareBuffers.pop() ?? Buffer.alloc(JS_BUFFER_BYTES);
    let answered = false;
    const answer = (result: number) => {
      if (answered) return;
      answered = true;
      try {
        a.reply(session, id, result > 0 ? buffer : null, result);
      } catch {
        // the session was destroyed meanwhile: nobody waits for this answer
      }
      if (spareBuffers.length < MAX_SPARE_REPLY_BUFFERS) spareBuffers.push(buffer);
    };
    if (!node || len > buffer.length) return answer(-5);
    const into = buffer.subarray(0, len);
    try {
      options.read(node.path, 0, into, len, pos, answer);
    } catch {
      answer(-5); // the read op catches its own errors; a request must never hang
    }
    const view = viewOf.get(ino);
    if (view !== undefined) {
      try {
        mappers[view]!.fill(pos, len, publishers[view]!);
      } catch {
        // a region that cannot be mapped stays with JS; the read above reported it if it failed
      }
    }
  };
  const onEvent = (kind: string, text: string | null, code: number) => {
    if (kind === 'init') {
      transportText = text;
      initDone?.(code);
    }
    else if (kind === 'log' && text) options.logger.log(text);
    else if (kind === 'ended') {
      open = false;
      try {
        finalStats = a.stats(session);
        a.destroy(session);
      } catch {
        // destroyed already
      }
      endedDone?.();
    }
  };

  try {
    session = a.mount({
      mountPoint,
      fuseOptions: optionString,
      threads: options.threads ?? 3,
      maxWrite,
      uid: options.uid,
      gid: options.gid,
      cacheSeconds: cache,
      debug: options.debug ? 1 : 0,
      fuseUring: options.fuseUring ? 1 : 0,
      uringEntries: options.uringEntries ?? 0,
      uringPlacement: ['adaptive', 'pinned', 'floating'].indexOf(options.uringPlacement ?? 'adaptive'),
      uringSetup: ['plain', 'coop', 'defer'].indexOf(options.uringSetup ?? 'plain'),
      splice: options.splice === false ? 0 : 1,
      directIo: options.directIo ? 1 : 0,
      mapLimitBytes: options.mapLimitBytes ?? 64 * 1024 * 1024,
      nodes: list,
      views,
      fds: options.hostFds ?? [],
      statfs: options.statfs,
      onRead,
      onEvent,
    });
  } finally {
    for (const v of views) {
      v.crypt?.key.fill(0);
      v.crypt?.essivKey?.fill(0);
    }
  }

  const timeoutMs = options.initTimeoutMs ?? 15000;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)));
  // The kernel sends INIT when the mount is first used; asking for the root's attributes makes it so.
  const stat = fs.promises.stat(mountPoint);
  const first = await Promise.race([init, timedOut, ended.then(() => 'ended' as const)]);
  clearTimeout(timer);
  if (first === 'timeout' || first === 'ended') {
    if (first === 'timeout') a.destroy(session);
    throw new Error(first === 'timeout' ? `the kernel did not start the FUSE session within ${timeoutMs / 1000} s` : 'the FUSE session ended before it started');
  }
  const st = await stat.catch(() => undefined);
  const readAhead = options.readAheadKb ?? 1024;
  if (st && readAhead > 0) raiseReadAhead(st.dev, readAhead, options.logger, options.debug === true);

  // init's text: "io_uring: ..." when negotiated, "dev: why" when asked for and not, null when not asked.
  const text = transportText as string | null;
  const transport: FuseTransport = text?.startsWith('io_uring') ? 'io_uring' : 'dev';
  const transportDetail = text === null ? '' : text.replace(/^(io_uring|dev): ?/, '');
  return {
    mountPoint,
    optionString: `${optionString},max_write=${maxWrite},threads=${options.threads ?? 3}${readAhead > 0 ? `,read_ahead_kb=${readAhead}` : ''}${options.splice === false ? ',no_splice' : ''}${options.directIo ? ',direct_io' : ''},transport=${transport}`,
    transport,
    transportDetail,
    ended,
    sessionOpen: () => open,
    stats: () => finalStats ?? a.stats(session),
    publish: (node, first, entries, slot, zlibLengths) => {
      const view = viewOf.get(node.ino);
      return view !== undefined && open && publishers[view]!(first, entries, slot, zlibLengths);
    },
    destroy: () => {
      if (!open) return;
      open = false;
      a.destroy(session);
    },
  };
}

/**
 * The kernel reads ahead at most 128 KiB on a FUSE mount unless told otherwise (INIT's max_readahead
 * can only lower it): big sequential requests need the bdi's read_ahead_kb raised after mounting.
 * Root only; without it sequential reads still work, in 128 KiB requests.
 */
function raiseReadAhead(dev: number, kb: number, logger: Logger, debug: boolean): void {
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00);
  const file = `/sys/class/bdi/${major}:${minor}/read_ahead_kb`;
  try {
    fs.writeFileSync(file, `${kb}\n`);
  } catch (err) {
    if (debug) logger.log(`cannot raise ${file} to ${kb}: ${(err as Error).message}`);
  }
}
