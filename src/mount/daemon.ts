import fs from 'node:fs';
import os from 'node:os';
import { ZSTD_POOL_MIN_THREADS } from '../disk/cluster-reader.js';
import { openImageSync } from '../image.js';
import type { OpenOptions, QcowImage, RemoteOpenOptions } from '../image.js';
import { EXIT, type ExitCode, errorMessage, exitCodeFor } from '../exit.js';
import { mountFuse } from './fuse-adapter.js';
import { ENABLE_URING_PARAMETER, type FuseTransport, type NativeMountOptions, type NativeStats, mountNative, nativeFuseAvailable, nativeFuseProblem } from './fuse3-native.js';
import { HostSlots, qcow2Mapper } from './native-maps.js';
import { type FuseStatfs, type Logger, createFuseOps } from './fuse-ops.js';
import { problemLine } from '../problems.js';
import type { MountOptions } from './options.js';
import { mountProblem } from './preflight.js';
import {
  FUSE_SUBTYPE,
  type MountEntry,
  ensureStateDir,
  findMount,
  fuseDeviceFds,
  pidFilePath,
  readMountInfo,
  removeOwnPidFile,
  unmountAsync,
  writePidFile,
} from './system.js';
import { type MountTree, buildMountTree, infoBytes } from './tree.js';
import type { ImageInfo } from '../info/describe.js';

export interface DaemonConfig {
  /** The image path (absolute). */
  image: string;
  /** The mount point as resolved (absolute). */
  mountPoint: string;
  options: MountOptions;
  /** How the image is opened (--data-file, --no-backing, ...). */
  openOptions?: OpenOptions;
  /** Log every FUSE request. */
  debug: boolean;
  /** Where the log goes, for the pid file (null: stderr of a foreground run). */
  logPath: string | null;
  /** For an image given by URL: headers and extra CA (never logged). */
  remote?: RemoteOpenOptions;
  /**
   * Passphrases for encrypted images, handed over in memory (never argv, environment or log); zeroed
   * once the image is open.
   */
  passphrases?: Uint8Array[];
}

export interface DaemonHooks {
  /** The mount answers requests. */
  ready(info: { pid: number; mountPoint: string }): void;
  /** Failed before ready: nothing is mounted and the caller should exit with `code`. */
  failed(message: string, code: ExitCode): void;
}

/**
 * Worker threads inflating compressed clusters ahead of sequential readers: one per core, at most 4
 * (on 2 cores, 1 thread gained nothing through FUSE and 2 gained 15-20% on zlib: the JS thread mostly
 * waits). None on the native back-end below 3 cores: its worker threads inflate zlib clusters in C,
 * and the pool takes zstd only from 3 threads (ZSTD_POOL_MIN_THREADS), so there the pool's
 * threads only cost memory (~90 MiB of RSS under the soak). QCOW_MOUNT_INFLATE_THREADS overrides (0: none).
 */
function inflateThreads(backend: 'native' | 'compat'): number {
  const set = process.env.QCOW_MOUNT_INFLATE_THREADS;
  if (set !== undefined && set !== '' && Number.isInteger(Number(set))) return Math.max(0, Number(set));
  const threads = Math.min(4, Math.max(1, os.availableParallelism()));
  return backend === 'native' && threads < ZSTD_POOL_MIN_THREADS ? 0 : threads;
}

/**
 * The FUSE back-end to mount with: `-o fuse=`, else $QCOW_MOUNT_FUSE, else native when the addon is
 * built (compat, with one warning line, when it is not). Asking for native without the addon fails.
 */
function fuseBackend(option: 'native' | 'compat' | undefined, logger: Logger): 'native' | 'compat' | { problem: string } {
  const env = process.env.QCOW_MOUNT_FUSE;
  const wanted = option ?? (env === 'native' || env === 'compat' ? env : undefined);
  if (wanted === 'compat') return 'compat';
  if (nativeFuseAvailable()) return 'native';
  if (wanted === 'native') return { problem: `-o fuse=native: ${nativeFuseProblem()}` };
  logger.log(`warning: ${nativeFuseProblem()}; using fuse-native (-o fuse=compat)`);
  return 'compat';
}

/**
 * The native back-end's knobs, for measuring what each buys (bench/NOTES.md): QCOW_MOUNT_FUSE_THREADS,
 * QCOW_MOUNT_FUSE_MAX_WRITE_KB, QCOW_MOUNT_FUSE_READAHEAD_KB (0: the kernel's 128), QCOW_MOUNT_FUSE_SPLICE=0;
 * with -o fuse_uring: QCOW_MOUNT_FUSE_URING_ENTRIES (per queue), QCOW_MOUNT_FUSE_URING_PLACEMENT=pinned|floating.
 */
function nativeKnobs(): Pick<NativeMountOptions, 'threads' | 'maxWrite' | 'readAheadKb' | 'splice' | 'uringEntries' | 'uringPlacement' | 'uringSetup'> {
  const num = (name: string) => {
    const v = process.env[name];
    return v !== undefined && v !== '' && Number.isInteger(Number(v)) && Number(v) >= 0 ? Number(v) : undefined;
  };
  const kb = num('QCOW_MOUNT_FUSE_MAX_WRITE_KB');
  const placement = process.env.QCOW_MOUNT_FUSE_URING_PLACEMENT;
  const setup = process.env.QCOW_MOUNT_FUSE_URING_SETUP;
  return {
    threads: num('QCOW_MOUNT_FUSE_THREADS'),
    maxWrite: kb === undefined ? undefined : kb * 1024,
    readAheadKb: num('QCOW_MOUNT_FUSE_READAHEAD_KB'),
    splice: process.env.QCOW_MOUNT_FUSE_SPLICE !== '0',
    uringEntries: num('QCOW_MOUNT_FUSE_URING_ENTRIES'),
    uringPlacement: placement === 'pinned' || placement === 'floating' ? placement : undefined,
    uringSetup: setup === 'coop' || setup === 'defer' ? setup : undefined,
  };
}

/** How often the daemon checks that its mount and its FUSE session are still there. */
const WATCH_INTERVAL_MS = 250;

/**
 * libfuse and fusermount explain a refused mount on stderr (the log file, in the background): the last
 * such line says more than fuse-native's "fuse failed".
 */
function libfuseComplaint(logPath: string | null): string | undefined {
  if (!logPath) return undefined;
  try {
    const fd = fs.openSync(logPath, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const tail = Buffer.alloc(Math.min(size, 4096));
      fs.readSync(fd, tail, 0, tail.length, size - tail.length);
      const lines = tail.toString('utf8').split('\n').filter((l) => /^(fuse|fusermount3?): /.test(l));
      return lines.pop()?.trim();
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
}

export function stderrLogger(): Logger {
  return {
    log(line: string) {
      process.stderr.write(`${new Date().toISOString()} qcow-mount[${process.pid}]: ${line}\n`);
    },
  };
}

/**
 * Serves an image at a mount point until it is unmounted (by qcow-mount -u, fusermount -u, umount) or
 * the process gets SIGINT, SIGTERM or SIGHUP; then exits the process. Used both in the foreground and
 * by the background child.
 */
export async function runDaemon(config: DaemonConfig, hooks: DaemonHooks, logger: Logger = stderrLogger()): Promise<void> {
  // Chosen first: the inflate pool's size depends on it. A problem with it is reported after the image's.
  const backend = fuseBackend(config.options.fuse, logger);
  let image: QcowImage;
  try {
    image = openImageSync(config.image, {
      ...config.openOptions,
      l2CacheBytes: config.options.l2CacheBytes,
      clusterCacheBytes: config.options.clusterCacheBytes,
      inflateThreads: inflateThreads(typeof backend === 'string' ? backend : 'compat'),
      remote: { ...config.remote, cacheSize: config.options.remoteCacheBytes },
      passphrases: config.passphrases,
    });
  } catch (err) {
    for (const p of config.passphrases ?? []) p.fill(0);
    hooks.failed(errorMessage(err), exitCodeFor(err, EXIT.IMAGE));
    return;
  }
  for (const p of config.passphrases ?? []) p.fill(0);
  if (image.locked.length > 0) {
    image.close();
    hooks.failed(`${image.locked[0]}: is encrypted; give its passphrase with -k FILE`, EXIT.IMAGE);
    return;
  }
  const problem = mountProblem(config.mountPoint, config.options);
  if (problem) {
    image.close();
    hooks.failed(problem, EXIT.MOUNT);
    return;
  }

  for (const p of image.problems) logger.log(`warning: ${problemLine(image.path, p)}`);
  if (image.heldForWriting) logger.log(`warning: ${image.path}: a running QEMU holds the image for writing; serving it anyway (--force-share): the view may be inconsistent and goes stale as the VM writes`);
  const tree = buildMountTree(image, { memory: { maxRamBelow4g: config.options.ramBelow4g }, log: (line) => logger.log(line) });
  const uid = config.options.uid ?? process.getuid?.() ?? 0;
  const gid = config.options.gid ?? process.getgid?.() ?? 0;
  const ops = createFuseOps(tree, { uid, gid, debug: config.debug, logger, remote: image.remote !== undefined });
  const fdsBefore = new Set(fuseDeviceFds());

  if (typeof backend !== 'string') {
    image.close();
    hooks.failed(backend.problem, EXIT.MOUNT);
    return;
  }
  if (backend === 'compat' && config.options.directIo) {
    image.close();
    hooks.failed('-o direct_io needs the native FUSE back-end (fuse-native cannot open files for direct I/O)', EXIT.MOUNT);
    return;
  }
  let optionString: string;
  let transport: FuseTransport = 'dev';
  let nativeOpen: (() => boolean) | undefined;
  let nativeEnded: Promise<void> | undefined;
  let nativeStats: (() => NativeStats) | undefined;
  try {
    if (backend === 'native') {
      const slots = new HostSlots();
      let statfs: FuseStatfs | undefined;
      ops.statfs('/', (_code, value) => (statfs = value));
      const mounted = await mountNative(config.mountPoint, tree, {
        allowOther: config.options.allowOther,
        fsname: image.path,
        uid,
        gid,
        debug: config.debug,
        fuseUring: config.options.fuseUring === true,
        logger,
        hostFds: slots.fds,
        mapperFor: (node) => qcow2Mapper(node, slots),
        ...nativeKnobs(),
        directIo: config.options.directIo === true,
        read: ops.read.bind(ops),
        statfs: statfs!,
      });
      optionString = `${mounted.optionString} (native)`;
      transport = mounted.transport;
      if (config.options.fuseUring) {
        if (transport === 'dev') logger.log(`warning: -o fuse_uring: ${uringAbsence(mounted.transportDetail)}; serving over /dev/fuse`);
        else if (config.debug) logger.log(`FUSE over io_uring: ${mounted.transportDetail}`);
      }
      nativeOpen = mounted.sessionOpen;
      nativeEnded = mounted.ended;
      nativeStats = mounted.stats;
    } else {
      ({ optionString } = await mountFuse(config.mountPoint, ops, { allowOther: config.options.allowOther, fsname: image.path }));
      optionString += ' (compat)';
      if (config.options.fuseUring) logger.log('warning: -o fuse_uring needs the native back-end (-o fuse=native); serving over /dev/fuse');
    }
  } catch (err) {
    // A mount that half-happened (kernel mounted, INIT never came) must not stay behind.
    const stale = findMount(config.mountPoint);
    if (stale && stale.fsType.endsWith(FUSE_SUBTYPE)) {
      await unmountAsync(config.mountPoint, true);
    }
    image.close();
    const why = libfuseComplaint(config.logPath) ?? errorMessage(err);
    hooks.failed(`${config.mountPoint}: mount failed: ${why}`, EXIT.MOUNT);
    return;
  }

  setInfoField(tree, { fuseTransport: transport });
  const entry: MountEntry | undefined = findMount(config.mountPoint);
  const sessionFds = fuseDeviceFds().filter((fd) => !fdsBefore.has(fd));
  let pidFile: string | undefined;
  try {
    pidFile = pidFilePath(config.mountPoint, ensureStateDir());
    writePidFile(pidFile, { mountPoint: config.mountPoint, image: image.path, log: config.logPath, started: new Date().toISOString() });
  } catch (err) {
    logger.log(`warning: cannot write the pid file (${errorMessage(err)}); qcow-mount -u will still unmount, but cannot wait for this daemon`);
    pidFile = undefined;
  }

  logger.log(
    `serving ${image.path} at ${config.mountPoint}: ${tree.files().length} files (${image.snapshots.length} snapshots); ` +
      `owner ${uid}:${gid}; fuse options ${optionString}; pid ${process.pid}${pidFile ? `, pid file ${pidFile}` : ''}`,
  );

  let stopping = false;
  let detachedLogged = false;
  const finish = (code: number, why: string): never => {
    const n = nativeStats?.();
    const served = n
      ? `; ${n.nativeReads} reads served natively, ${n.jsReads} through JS, ${n.pipedReads} native replies of many segments through a pipe${transport === 'io_uring' ? `, ${n.ringRequests} requests through io_uring` : ''}`
      : '';
    logger.log(`${why}; exiting (${ops.failedReads()} failed reads${served})`);
    if (image.remote) {
      const r = image.remote.stats();
      logger.log(`remote ${image.remote.url}: ${r.requests} requests, ${r.bytesFetched} bytes fetched, ${r.retries} retries, ${r.failures} failures; cache ${r.hits} hits, ${r.misses} misses, ${r.readAhead} blocks read ahead, ${r.cacheBytes} of ${r.cacheLimit} bytes`);
    }
    if (pidFile) removeOwnPidFile(pidFile);
    try {
      image.close();
    } catch {
      // exiting anyway
    }
    process.exit(code);
  };

  const mountedNow = () => {
    const now = findMount(config.mountPoint, readMountInfo());
    return now !== undefined && (entry === undefined || now.id === entry.id);
  };
  const sessionOpen = () => {
    if (nativeOpen) return nativeOpen();
    if (sessionFds.length === 0) return mountedNow();
    const open = new Set(fuseDeviceFds());
    return sessionFds.some((fd) => open.has(fd));
  };

  const stop = async (why: string) => {
    if (stopping) {
      logger.log(`${why} again: exiting now`);
      finish(0, 'stopped');
    }
    stopping = true;
    logger.log(`${why}: unmounting ${config.mountPoint}`);
    if (mountedNow()) {
      let result = await unmountAsync(config.mountPoint, false);
      if (!result.ok && mountedNow()) {
        logger.log(`unmount: ${result.message}${result.busy ? ' (busy: detaching lazily)' : ''}`);
        result = await unmountAsync(config.mountPoint, true);
        if (!result.ok && mountedNow()) logger.log(`lazy unmount failed too: ${result.message}`);
      }
    }
    // Give the FUSE thread a moment to see the session end, then go: exiting closes /dev/fuse anyway.
    // The native back-end says when it has; the compat one is polled.
    const deadline = Date.now() + 2000;
    if (nativeEnded) await Promise.race([nativeEnded, new Promise((r) => setTimeout(r, 2000).unref())]);
    else while (sessionOpen() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    finish(0, 'unmounted');
  };

  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => void stop(`got ${sig}`));

  process.on('uncaughtException', (err) => {
    logger.log(`internal error: ${err.stack ?? err.message}`);
    void unmountAsync(config.mountPoint, true).finally(() => finish(EXIT.INTERNAL, 'internal error'));
  });

  // Unmounted from outside (fusermount -u, umount): the kernel ends the session and libfuse closes its
  // /dev/fuse descriptor. A lazy unmount detaches the mount first and ends the session when the last
  // open file is closed; the daemon keeps serving those files until then.
  const noticeChange = watchImageFile(image, tree, logger);
  const watch = setInterval(() => {
    if (stopping) return;
    noticeChange();
    if (!sessionOpen()) {
      clearInterval(watch);
      finish(0, `${config.mountPoint} was unmounted`);
    }
    if (!detachedLogged && !mountedNow()) {
      detachedLogged = true;
      logger.log(`${config.mountPoint} was detached (lazy unmount?); serving files still open until they are closed`);
    }
  }, WATCH_INTERVAL_MS);
  // The native back-end tells at once when the kernel ended the session: exit then, not at the next tick
  // (qcow-mount -u waits for this process; fusermount -u went from ~250 ms to exit to a few).
  void nativeEnded?.then(() => {
    if (stopping) return;
    clearInterval(watch);
    finish(0, `${config.mountPoint} was unmounted`);
  });

  hooks.ready({ pid: process.pid, mountPoint: config.mountPoint });
}

/** Why -o fuse_uring got /dev/fuse: the module parameter's state, else what the addon said. */
function uringAbsence(detail: string): string {
  let value: string;
  try {
    value = fs.readFileSync(ENABLE_URING_PARAMETER, 'utf8').trim();
  } catch {
    return `this kernel has no FUSE over io_uring (${ENABLE_URING_PARAMETER} is absent)`;
  }
  if (value !== 'Y') return `${ENABLE_URING_PARAMETER} is ${value} (root can set it to Y before mounting)`;
  return detail || 'the kernel did not offer FUSE over io_uring';
}

/**
 * Adds fields to info.json in place (same size: they take spaces kept at its end), for what is only
 * known once mounted. Before anyone reads it, so no page of it is cached yet.
 */
function setInfoField(tree: MountTree, fields: Partial<ImageInfo>): void {
  const info = tree.lookup('/info.json');
  if (!info || info.kind !== 'bytes') return;
  // The description as served, plus the fields (not described again: that may index VM states).
  const served = JSON.parse(info.bytes.toString('utf8')) as ImageInfo;
  const bytes = infoBytes({ ...served, ...fields }, info.size);
  // In place: the native back-end serves the buffer it was given at mount.
  if (bytes.length === info.bytes.length) bytes.copy(info.bytes);
  else {
    info.bytes = bytes;
    info.size = bytes.length;
  }
}

/**
 * Notices once when the image file changes while mounted (size or mtime: a VM still writing to it, a
 * copy still running): logs it and sets info.json's `imageChanged`. The views keep serving what they
 * map, which may now be stale or inconsistent. (The kernel keeps pages of info.json it has already
 * read: a reader that read it before the change may see the old bytes; its size stays the same, the
 * change record taking spaces kept at its end.)
 */
function watchImageFile(image: QcowImage, tree: MountTree, logger: Logger): () => void {
  let noticed = false;
  return () => {
    if (noticed) return;
    let st: fs.Stats;
    try {
      st = fs.statSync(image.path);
    } catch {
      return;
    }
    if (st.size === image.fileSize && st.mtime.getTime() === image.mtime.getTime()) return;
    noticed = true;
    const now = new Date();
    logger.log(
      `warning: ${image.path} changed while mounted (size ${image.fileSize} -> ${st.size}, mtime ${image.mtime.toISOString()} -> ${st.mtime.toISOString()}): ` +
        'what is served may be stale or inconsistent; unmount and mount again for a fresh view',
    );
    setInfoField(tree, { imageChanged: { noticed: now.toISOString(), fileSize: st.size, fileMtime: st.mtime.toISOString() } });
  };
}
