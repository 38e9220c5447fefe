#!/usr/bin/env node
/**
 * The Node ceiling for the benchmark: a minimal fuse-native file system that serves ONE raw file
 * (`MOUNTPOINT/disk.raw`) with fs.readSync straight into fuse-native's buffer, no qcow2 logic at all.
 *
 * It mounts through qcow-mount's own adapter (dist/mount/fuse-adapter.js: mountFuse), so it gets
 * exactly the fuse-native and kernel options qcow-mount uses (no per-request timeout, kernel_cache,
 * attr/entry timeouts, max_read, ro ...) and, if qcow-mount changes them, follows.
 *
 *   node scripts/bench/passthrough.mjs RAWFILE MOUNTPOINT [STATSFILE]
 *
 * Prints "ready" on stdout once the kernel's INIT is answered. SIGUSR2 writes request statistics
 * (count of reads, bytes, sizes seen) as JSON to STATSFILE. SIGINT/SIGTERM unmount and exit; so does
 * an unmount from outside (fusermount -u), noticed within 200 ms.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
// BENCH_PT_DIST: another build's dist/ (A/B runs); BENCH_PT_READ=async: fs.read through the thread pool.
const dist = path.resolve(process.env.BENCH_PT_DIST || path.join(here, '../../dist'));
const { mountFuse } = await import(pathToFileURL(path.join(dist, 'mount/fuse-adapter.js')).href);
const asyncReads = process.env.BENCH_PT_READ === 'async';

const [rawPath, mnt, statsFile] = process.argv.slice(2);
if (!rawPath || !mnt) {
  process.stderr.write('usage: passthrough.mjs RAWFILE MOUNTPOINT [STATSFILE]\n');
  process.exit(1);
}
const fd = fs.openSync(rawPath, 'r');
const st = fs.fstatSync(fd);
const FILE = '/disk.raw';
const uid = process.getuid();
const gid = process.getgid();
const now = new Date();
const stat = (mode, size) => ({ mode, uid, gid, size, nlink: mode & fs.constants.S_IFDIR ? 2 : 1, ino: 0, blksize: 131072, blocks: Math.ceil(size / 512), atime: now, mtime: now, ctime: now });
const dirStat = stat(fs.constants.S_IFDIR | 0o555, 4096);
const fileStat = stat(fs.constants.S_IFREG | 0o444, st.size);

const stats = { seq: 0, reads: 0, bytes: 0, sizes: {} };
const ENOENT = -2;

const ops = {
  getattr(p, cb) {
    if (p === '/') return cb(0, dirStat);
    if (p === FILE) return cb(0, fileStat);
    cb(ENOENT);
  },
  readdir(p, cb) {
    if (p !== '/') return cb(ENOENT);
    cb(0, ['.', '..', 'disk.raw'], [dirStat, dirStat, fileStat]);
  },
  open(p, _flags, cb) {
    if (p !== FILE) return cb(ENOENT);
    cb(0, 1);
  },
  read(_p, _fd, buf, len, pos, cb) {
    stats.reads++;
    stats.sizes[len] = (stats.sizes[len] ?? 0) + 1;
    const n = Math.max(0, Math.min(len, st.size - pos));
    if (asyncReads) return readAsync(buf, n, pos, 0, cb);
    let done = 0;
    while (done < n) {
      const got = fs.readSync(fd, buf, done, n - done, pos + done);
      if (got === 0) break;
      done += got;
    }
    stats.bytes += done;
    cb(done);
  },
  release(_p, _fd, cb) {
    cb(0);
  },
  statfs(_p, cb) {
    cb(0, { bsize: 4096, frsize: 4096, blocks: Math.ceil(st.size / 4096), bfree: 0, bavail: 0, files: 2, ffree: 0, favail: 0, fsid: 0, flag: 1, namemax: 255 });
  },
};

function readAsync(buf, n, pos, done, cb) {
  if (done >= n) {
    stats.bytes += done;
    return cb(done);
  }
  fs.read(fd, buf, done, n - done, pos + done, (err, got) => {
    if (err) return cb(-5);
    if (got === 0) {
      stats.bytes += done;
      return cb(done);
    }
    readAsync(buf, n, pos, done + got, cb);
  });
}

const writeStats = () => {
  stats.seq++;
  if (statsFile) {
    fs.writeFileSync(`${statsFile}.tmp`, JSON.stringify(stats));
    fs.renameSync(`${statsFile}.tmp`, statsFile);
  }
};
process.on('SIGUSR2', writeStats);

let stopping = false;
const stop = (code) => {
  if (stopping) process.exit(code);
  stopping = true;
  try {
    execFileSync('fusermount', ['-u', mnt], { stdio: 'ignore' });
  } catch {
    try {
      execFileSync('umount', ['-l', mnt], { stdio: 'ignore' });
    } catch {
      // gone already
    }
  }
  writeStats();
  process.exit(code);
};
process.on('SIGINT', () => stop(0));
process.on('SIGTERM', () => stop(0));

const resolved = path.resolve(mnt);
await mountFuse(resolved, ops, { allowOther: false, fsname: 'bench-passthrough' });
process.stdout.write('ready\n');

// Unmounted from outside: the mount leaves /proc/self/mountinfo; exit then.
setInterval(() => {
  const mounted = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === resolved);
  if (!mounted) {
    writeStats();
    process.exit(0);
  }
}, 200);
