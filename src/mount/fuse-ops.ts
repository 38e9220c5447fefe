import fs from 'node:fs';
import { QcowError } from '../errors.js';
import { readWithoutWaiting } from '../io/remote-file.js';
import { ERRNO, describeFailure, errnoFor } from './errno.js';
import { FdTable } from './fd-table.js';
import type { FileNode, MountNode, MountTree } from './tree.js';

/** The stat fields fuse-native passes on (times as Dates or ms). */
export interface FuseStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: number;
  blksize: number;
  blocks: number;
  atime: Date;
  mtime: Date;
  ctime: Date;
}

export interface FuseStatfs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  fsid: number;
  flag: number;
  namemax: number;
}

type Cb = (code: number) => void;
type ValueCb<T> = (code: number, value?: T) => void;

/**
 * The FUSE operations in fuse-native's callback shapes, free of fuse-native itself so they can be
 * tested by calling them. Callbacks take 0 or a negative errno; read answers with the byte count.
 */
export interface FuseOps {
  getattr(path: string, cb: ValueCb<FuseStat>): void;
  readdir(path: string, cb: (code: number, names?: string[], stats?: FuseStat[]) => void): void;
  open(path: string, flags: number, cb: ValueCb<number>): void;
  read(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void;
  release(path: string, fd: number, cb: Cb): void;
  statfs(path: string, cb: ValueCb<FuseStatfs>): void;
  write(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void;
  truncate(path: string, size: number, cb: Cb): void;
  ftruncate(path: string, fd: number, size: number, cb: Cb): void;
  create(path: string, mode: number, cb: ValueCb<number>): void;
  mknod(path: string, mode: number, dev: number, cb: Cb): void;
  mkdir(path: string, mode: number, cb: Cb): void;
  rmdir(path: string, cb: Cb): void;
  unlink(path: string, cb: Cb): void;
  rename(src: string, dest: string, cb: Cb): void;
  link(src: string, dest: string, cb: Cb): void;
  symlink(target: string, path: string, cb: Cb): void;
  chmod(path: string, mode: number, cb: Cb): void;
  chown(path: string, uid: number, gid: number, cb: Cb): void;
  utimens(path: string, atime: number, mtime: number, cb: Cb): void;
  setxattr(path: string, name: string, value: Buffer, position: number, flags: number, cb: Cb): void;
  removexattr(path: string, name: string, cb: Cb): void;
}

export interface Logger {
  /** One line, no trailing newline. */
  log(line: string): void;
}

export interface OpsOptions {
  uid: number;
  gid: number;
  /** Log every request and its answer. */
  debug?: boolean;
  logger: Logger;
  /**
   * The image is remote: reads answer when their blocks arrive (readWithoutWaiting), not by blocking
   * the JS thread, so several are in flight at once. Both back-ends accept a later answer.
   */
  remote?: boolean;
}

const S_IFDIR = fs.constants.S_IFDIR;
const S_IFREG = fs.constants.S_IFREG;
const O_ACCMODE = 3;
const O_WRONLY_OR_RDWR_OR_TRUNC = fs.constants.O_TRUNC;
/** statvfs f_flag bits. */
const ST_RDONLY = 1;
const ST_NOSUID = 2;
/** st_blksize: the largest read the kernel sends, so `cp` and friends read in big steps. */
const BLKSIZE = 128 * 1024;

export interface MountOps extends FuseOps {
  readonly fds: FdTable;
  /** Reads failed with EIO since the mount started. */
  readonly failedReads: () => number;
}

/** Builds the operations that serve `tree`. */
export function createFuseOps(tree: MountTree, options: OpsOptions): MountOps {
  const { uid, gid, logger } = options;
  const fds = new FdTable();
  let failed = 0;
  // The kernel retries a failed read (often page by page); one bad region gets one log line, not one per retry.
  let lastFailure = '';
  let lastFailureAt = 0;

  const stats = new Map<MountNode, FuseStat>();
  for (const node of tree.nodes()) stats.set(node, statOf(node));

  function statOf(node: MountNode): FuseStat {
    const isDir = node.kind === 'dir';
    const size = isDir ? 4096 : node.size;
    const subdirs = isDir ? [...node.children.values()].filter((c) => c.kind === 'dir').length : 0;
    return {
      mode: isDir ? S_IFDIR | 0o555 : S_IFREG | 0o444,
      uid,
      gid,
      size,
      nlink: isDir ? 2 + subdirs : 1,
      ino: node.ino,
      blksize: BLKSIZE,
      blocks: Math.ceil(size / 512),
      atime: node.mtime,
      mtime: node.mtime,
      ctime: node.mtime,
    };
  }

  // statfs: the total of the files, in blocks small enough to count in 32 bits (fuse-native's limit).
  const totalBytes = tree.files().reduce((sum, f) => sum + f.size, 0);
  let frsize = 4096;
  while (Math.ceil(totalBytes / frsize) > 0xffff_ffff) frsize *= 2;
  const statfsAnswer: FuseStatfs = {
    bsize: BLKSIZE,
    frsize,
    blocks: Math.ceil(totalBytes / frsize),
    bfree: 0,
    bavail: 0,
    files: tree.nodes().length,
    ffree: 0,
    favail: 0,
    fsid: 0,
    flag: ST_RDONLY | ST_NOSUID,
    namemax: 255,
  };

  function readNode(node: FileNode, buf: Buffer, len: number, pos: number): number {
    if (pos >= node.size || len <= 0) return 0;
    const n = Math.min(len, node.size - pos);
    if (node.kind === 'bytes') return node.bytes.copy(buf, 0, pos, pos + n);
    // Synchronous on purpose: FUSE requests arrive on the JS thread one by one, and for page-cached
    // image data a direct pread beats a round trip through the thread pool.
    return node.disk.readSync(buf.length === n ? buf : buf.subarray(0, n), pos);
  }

  /** A failed read: counted, logged once per bad region, answered with its errno. */
  function failure(err: unknown, path: string, len: number, pos: number): number {
    failed++;
    const why = describeFailure(err);
    const now = Date.now();
    if (why !== lastFailure || now - lastFailureAt > 2000) logger.log(`EIO: read ${path} at offset ${pos} (+${len}): ${why}`);
    lastFailure = why;
    lastFailureAt = now;
    if (!(err instanceof QcowError) && err instanceof Error && err.stack) logger.log(err.stack);
    return errnoFor(err);
  }

  const erofs = (what: string) =>
    function (this: unknown, ...args: unknown[]): void {
      const cb = args[args.length - 1] as Cb;
      if (options.debug) logger.log(`${what} ${String(args[0])} -> EROFS`);
      cb(ERRNO.EROFS);
    };

  const ops: MountOps = {
    fds,
    failedReads: () => failed,

    getattr(path, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(ERRNO.ENOENT);
      cb(0, stats.get(node)!);
    },

    readdir(path, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(ERRNO.ENOENT);
      if (node.kind !== 'dir') return cb(ERRNO.ENOTDIR);
      const names = ['.', '..'];
      const st = [stats.get(node)!, stats.get(node)!];
      for (const [name, child] of node.children) {
        names.push(name);
        st.push(stats.get(child)!);
      }
      cb(0, names, st);
    },

    open(path, flags, cb) {
      const node = tree.lookup(path);
      if (!node) return cb(ERRNO.ENOENT);
      if ((flags & O_ACCMODE) !== fs.constants.O_RDONLY || (flags & O_WRONLY_OR_RDWR_OR_TRUNC) !== 0) return cb(ERRNO.EROFS);
      if (node.kind === 'dir') return cb(ERRNO.EISDIR);
      cb(0, fds.allocate(node));
    },

    read(path, fd, buf, len, pos, cb) {
      const node = fds.get(fd) ?? lookupFile(path);
      if (!node) return cb(ERRNO.EBADF);
      if (options.remote && node.kind !== 'bytes') {
        readWithoutWaiting(() => readNode(node, buf, len, pos)).then(cb, (err: unknown) => cb(failure(err, path, len, pos)));
        return;
      }
      try {
        cb(readNode(node, buf, len, pos));
      } catch (err) {
        cb(failure(err, path, len, pos));
      }
    },

    release(_path, fd, cb) {
      fds.release(fd);
      cb(0);
    },

    statfs(_path, cb) {
      cb(0, statfsAnswer);
    },

    write: erofs('write'),
    truncate: erofs('truncate'),
    ftruncate: erofs('ftruncate'),
    create: erofs('create'),
    mknod: erofs('mknod'),
    mkdir: erofs('mkdir'),
    rmdir: erofs('rmdir'),
    unlink: erofs('unlink'),
    rename: erofs('rename'),
    link: erofs('link'),
    symlink: erofs('symlink'),
    chmod: erofs('chmod'),
    chown: erofs('chown'),
    utimens: erofs('utimens'),
    setxattr: erofs('setxattr'),
    removexattr: erofs('removexattr'),
  };

  function lookupFile(path: string): FileNode | undefined {
    const node = tree.lookup(path);
    return node && node.kind !== 'dir' ? node : undefined;
  }

  return options.debug ? withRequestLog(ops, logger) : ops;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(ERRNO).map(([k, v]) => [v, k]));

function answer(code: unknown): string {
  if (typeof code !== 'number') return String(code);
  if (code < 0) return ERRNO_NAMES.get(code) ?? `errno ${-code}`;
  return String(code);
}

/** Wraps every operation so each request and its answer is logged (-d/--debug). */
function withRequestLog(ops: MountOps, logger: Logger): MountOps {
  const wrapped: Record<string, unknown> = { fds: ops.fds, failedReads: ops.failedReads };
  for (const [name, fn] of Object.entries(ops)) {
    if (name === 'fds' || name === 'failedReads' || typeof fn !== 'function') continue;
    if (name === 'write' || name.endsWith('xattr') || ['truncate', 'ftruncate', 'create', 'mknod', 'mkdir', 'rmdir', 'unlink', 'rename', 'link', 'symlink', 'chmod', 'chown', 'utimens'].includes(name)) {
      wrapped[name] = fn; // already logs EROFS itself
      continue;
    }
    wrapped[name] = (...args: unknown[]) => {
      const cb = args[args.length - 1] as (...a: unknown[]) => void;
      const start = process.hrtime.bigint();
      const shown = args.slice(0, -1).map((a) => (Buffer.isBuffer(a) ? `<buf ${a.length}>` : String(a)));
      (fn as (...a: unknown[]) => void)(...args.slice(0, -1), (...res: unknown[]) => {
        const us = Number(process.hrtime.bigint() - start) / 1000;
        const extra = name === 'open' && res[0] === 0 ? ` fh=${String(res[1])}` : '';
        logger.log(`${name}(${shown.join(', ')}) -> ${answer(res[0])}${extra} [${us.toFixed(0)} us]`);
        cb(...res);
      });
    };
  }
  return wrapped as unknown as MountOps;
}
