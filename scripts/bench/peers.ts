/**
 * Mounting the four file systems the bench compares, each serving one view as one file:
 * - ours: qcow-mount (dist/cli/qcow-mount.js, background mode) with its native back-end (-o fuse=native),
 *   file active.raw or snapshots/NAME.raw
 * - compat: the same with the fuse-native back-end (-o fuse=compat)
 * - ours-dio: the native back-end with -o direct_io (no page cache: one copy per byte, no readahead)
 * - ours-uring: ours with -o fuse_uring (FUSE over io_uring; enable_uring is set to Y while it is
 *   mounted, and put back); a mount that did not get io_uring is refused, not measured as such
 * - qcowmount: libqcow's FUSE mount (C, libfuse2), file qcow1 (the active disk only; no zstd, no backing)
 * - qsd: qemu-storage-daemon's FUSE export (C, libfuse3) of the image, on a regular file
 * - passthrough: scripts/bench/passthrough.mjs, a raw file through fuse-native (the Node ceiling)
 * Each returns the file to read, the daemon pid, the time the mount took, and a stop() that unmounts and
 * makes sure the daemon is gone.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { holdUringEnabled } from './uring-param.js';
import { REPO, WORK, findPids, isMounted, log, memOf, pidAlive, run, sleep, stopPid, track, trackMount, trackPid, unmountSync, untrackMount, untrackPid } from './util.js';

export type PeerName = 'ours' | 'ours-dio' | 'ours-uring' | 'compat' | 'qcowmount' | 'qsd' | 'passthrough';
export const PEERS: PeerName[] = ['ours', 'ours-dio', 'ours-uring', 'compat', 'qcowmount', 'qsd', 'passthrough'];

export interface Mounted {
  peer: PeerName;
  /** The file that holds the view. */
  file: string;
  pid: number;
  /** From starting the mount command until the file answers stat() with its size. */
  mountMs: number;
  stop(): Promise<void>;
  /** The passthrough only: FUSE read requests served so far. */
  requests?: () => Promise<RequestStats | undefined>;
}

export interface RequestStats {
  reads: number;
  bytes: number;
  sizes: Record<string, number>;
}

export const MOUNTS = path.join(WORK, 'mnt');
export const STATE = path.join(WORK, 'state');
const QCOW_MOUNT = path.join(REPO, 'dist/cli/qcow-mount.js');
const PASSTHROUGH = path.join(REPO, 'scripts/bench/passthrough.mjs');

export interface MountRequest {
  /** Image (qcow2) for ours, qcowmount and qsd; raw file for the passthrough. */
  image: string;
  /** For ours: the file inside the mount (default active.raw). */
  oursFile?: string;
  /** Unique tag for the mount point. */
  tag: string;
  /** Extra arguments for qcow-mount (-o ...). */
  oursArgs?: string[];
  /** Environment for qcow-mount's daemon and the passthrough (e.g. UV_THREADPOOL_SIZE). */
  oursEnv?: NodeJS.ProcessEnv;
  /** Another build's qcow-mount.js (A/B runs against a saved dist/). */
  oursCli?: string;
}

function freshDir(name: string): string {
  const p = path.join(MOUNTS, name);
  if (isMounted(p)) unmountSync(p);
  fs.mkdirSync(p, { recursive: true });
  return p;
}

/** Polls until `file` has `size` bytes (so the mount answers), or throws after `timeoutMs`. */
async function waitForFile(file: string, timeoutMs: number, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const st = fs.statSync(file);
      if (st.size > 0) return;
    } catch {
      // not yet
    }
    if (!alive()) throw new Error(`the daemon for ${file} exited before the mount answered`);
    if (Date.now() > deadline) throw new Error(`${file} did not appear within ${timeoutMs} ms`);
    await sleep(2);
  }
}

export async function mountPeer(peer: PeerName, req: MountRequest): Promise<Mounted> {
  switch (peer) {
    case 'ours':
      return mountOurs({ ...req, oursArgs: ['-o', 'fuse=native', ...(req.oursArgs ?? [])] }, 'ours');
    case 'ours-dio':
      return mountOurs({ ...req, tag: `${req.tag}-dio`, oursArgs: ['-o', 'fuse=native,direct_io', ...(req.oursArgs ?? [])] }, 'ours-dio');
    case 'ours-uring':
      return mountOursUring(req);
    case 'compat':
      return mountOurs({ ...req, tag: `${req.tag}-compat`, oursArgs: ['-o', 'fuse=compat', ...(req.oursArgs ?? [])] }, 'compat');
    case 'qcowmount':
      return mountQcowmount(req);
    case 'qsd':
      return mountQsd(req);
    case 'passthrough':
      return mountPassthrough(req);
  }
}

async function mountOursUring(req: MountRequest): Promise<Mounted> {
  const release = holdUringEnabled();
  let m: Mounted;
  try {
    m = await mountOurs({ ...req, tag: `${req.tag}-uring`, oursArgs: ['-o', 'fuse=native,fuse_uring', ...(req.oursArgs ?? [])] }, 'ours-uring');
  } catch (err) {
    release();
    throw err;
  }
  const mnt = m.file.slice(0, m.file.length - (req.oursFile ?? 'active.raw').length - 1);
  const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { fuseTransport?: string };
  if (info.fuseTransport !== 'io_uring') {
    await m.stop();
    release();
    throw new Error(`-o fuse_uring got ${info.fuseTransport ?? 'no transport'}, not io_uring`);
  }
  return {
    ...m,
    async stop() {
      await m.stop();
      release();
    },
  };
}

async function mountOurs(req: MountRequest, peer: 'ours' | 'ours-dio' | 'ours-uring' | 'compat'): Promise<Mounted> {
  const mnt = freshDir(`${peer}-${req.tag}`);
  const env = { ...process.env, ...req.oursEnv, QCOW_MOUNT_STATE_DIR: STATE };
  trackMount(mnt);
  const t0 = process.hrtime.bigint();
  const cli = req.oursCli ?? QCOW_MOUNT;
  const r = await run(cli, [...(req.oursArgs ?? []), req.image, mnt], { env, timeoutMs: 120_000 });
  if (r.code !== 0) {
    unmountSync(mnt);
    untrackMount(mnt);
    throw new Error(`qcow-mount ${req.image} failed (${r.code}): ${r.stderr.trim()}`);
  }
  const file = path.join(mnt, req.oursFile ?? 'active.raw');
  const pid = ourDaemonPid(mnt);
  if (pid) trackPid(pid);
  await waitForFile(file, 10_000, () => true);
  const mountMs = Number(process.hrtime.bigint() - t0) / 1e6;
  return {
    peer,
    file,
    pid: pid ?? 0,
    mountMs,
    async stop() {
      const u = await run(cli, ['-u', mnt], { env, timeoutMs: 60_000 });
      if (u.code !== 0) log(`qcow-mount -u ${mnt}: ${u.stderr.trim()}`);
      unmountSync(mnt);
      untrackMount(mnt);
      if (pid) {
        await stopPid(pid);
        untrackPid(pid);
      }
    },
  };
}

function ourDaemonPid(mnt: string): number | undefined {
  // The daemon's pid file: STATE/<key>.pid, JSON with its pid and mount point (its real path: in a
  // worktree, bench-work is a symbolic link).
  const real = fs.realpathSync(mnt);
  for (const f of fs.readdirSync(STATE)) {
    if (!f.endsWith('.pid')) continue;
    try {
      const j = JSON.parse(fs.readFileSync(path.join(STATE, f), 'utf8')) as { pid: number; mountPoint: string };
      if ((j.mountPoint === mnt || j.mountPoint === real) && pidAlive(j.pid)) return j.pid;
    } catch {
      // another daemon's file being rewritten
    }
  }
  return undefined;
}

async function mountQcowmount(req: MountRequest): Promise<Mounted> {
  const mnt = freshDir(`qcowmount-${req.tag}`);
  trackMount(mnt);
  const t0 = process.hrtime.bigint();
  // qcowmount forks into the background and returns before the mount is ready.
  const r = await run('qcowmount', [req.image, mnt], { timeoutMs: 60_000 });
  if (r.code !== 0) {
    unmountSync(mnt);
    untrackMount(mnt);
    throw new Error(`qcowmount failed (${r.code}): ${(r.stderr + r.stdout).trim().split('\n').slice(-3).join(' | ')}`);
  }
  const file = path.join(mnt, 'qcow1');
  let pids = findPids('qcowmount', mnt);
  for (const p of pids) trackPid(p);
  await waitForFile(file, 20_000, () => {
    pids = findPids('qcowmount', mnt);
    return pids.length > 0;
  });
  const mountMs = Number(process.hrtime.bigint() - t0) / 1e6;
  pids = findPids('qcowmount', mnt);
  for (const p of pids) trackPid(p);
  return {
    peer: 'qcowmount',
    file,
    pid: pids[0] ?? 0,
    mountMs,
    async stop() {
      unmountSync(mnt);
      untrackMount(mnt);
      for (const p of pids) {
        await stopPid(p);
        untrackPid(p);
      }
    },
  };
}

async function mountQsd(req: MountRequest): Promise<Mounted> {
  fs.mkdirSync(MOUNTS, { recursive: true });
  const file = path.join(MOUNTS, `qsd-${req.tag}.raw`);
  if (isMounted(file)) unmountSync(file);
  fs.writeFileSync(file, ''); // the export's mount point must be an existing regular file
  trackMount(file);
  const t0 = process.hrtime.bigint();
  const child = spawn(
    'qemu-storage-daemon',
    [
      '--blockdev',
      `driver=file,node-name=file,filename=${req.image},read-only=on`,
      '--blockdev',
      'driver=qcow2,node-name=qcow2,file=file,read-only=on',
      '--export',
      `type=fuse,id=exp,node-name=qcow2,mountpoint=${file},writable=off`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  track(child);
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  try {
    await waitForFile(file, 20_000, () => child.exitCode === null && child.signalCode === null);
  } catch (err) {
    child.kill('SIGKILL');
    unmountSync(file);
    untrackMount(file);
    throw new Error(`qemu-storage-daemon: ${(err as Error).message}: ${stderr.trim()}`);
  }
  const mountMs = Number(process.hrtime.bigint() - t0) / 1e6;
  return {
    peer: 'qsd',
    file,
    pid: child.pid!,
    mountMs,
    async stop() {
      // SIGTERM makes QEMU shut its exports down (and unmount); unmount ourselves if it did not.
      if (child.exitCode === null) child.kill('SIGTERM');
      const deadline = Date.now() + 5000;
      while (child.exitCode === null && child.signalCode === null && Date.now() < deadline) await sleep(20);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      unmountSync(file);
      untrackMount(file);
    },
  };
}

async function mountPassthrough(req: MountRequest): Promise<Mounted> {
  const mnt = freshDir(`pt-${req.tag}`);
  trackMount(mnt);
  const statsFile = path.join(WORK, `pt-${req.tag}.stats.json`);
  const t0 = process.hrtime.bigint();
  const child = spawn(process.execPath, [PASSTHROUGH, req.image, mnt, statsFile], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...req.oursEnv } });
  track(child);
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const ready = await new Promise<boolean>((resolve) => {
    const rl = readline.createInterface({ input: child.stdout! });
    rl.on('line', (l) => {
      if (l.trim() === 'ready') resolve(true);
    });
    child.on('exit', () => resolve(false));
  });
  const file = path.join(mnt, 'disk.raw');
  if (!ready) {
    unmountSync(mnt);
    untrackMount(mnt);
    throw new Error(`passthrough failed: ${stderr.trim()}`);
  }
  await waitForFile(file, 10_000, () => child.exitCode === null);
  const mountMs = Number(process.hrtime.bigint() - t0) / 1e6;
  let seen = 0;
  return {
    peer: 'passthrough',
    file,
    pid: child.pid!,
    mountMs,
    async requests() {
      if (child.exitCode !== null) return undefined;
      child.kill('SIGUSR2');
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        try {
          const j = JSON.parse(fs.readFileSync(statsFile, 'utf8')) as RequestStats & { seq: number };
          if (j.seq > seen) {
            seen = j.seq;
            return { reads: j.reads, bytes: j.bytes, sizes: j.sizes };
          }
        } catch {
          // not written yet
        }
        await sleep(5);
      }
      return undefined;
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      const deadline = Date.now() + 5000;
      while (child.exitCode === null && child.signalCode === null && Date.now() < deadline) await sleep(20);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      unmountSync(mnt);
      untrackMount(mnt);
    },
  };
}

export { memOf };
