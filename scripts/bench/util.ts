/**
 * Benchmark plumbing: running commands, timing, the registry of mounts and processes the bench owns
 * (so that Ctrl-C, a crash or a failed step never leaves anything mounted or running), /proc readers.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const WORK = path.join(REPO, 'bench-work');

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

export function log(line: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to completion (asynchronously, so signals reach the bench meanwhile). */
export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string | Buffer; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    track(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    let timer: NodeJS.Timeout | undefined;
    if (opts.timeoutMs) timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        ms: Number(process.hrtime.bigint() - start) / 1e6,
      });
    });
    child.stdin!.on('error', () => undefined);
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

/** Like run(), but a non-zero exit is an error carrying the command's stderr. */
export async function runOk(cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code ?? r.signal}): ${r.stderr.trim().split('\n').slice(-5).join(' | ')}`);
  return r;
}

export function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// What the bench owns: children it started, and mounts it made. cleanUpAll() undoes everything.

const children = new Set<ChildProcess>();
const finalizers = new Set<() => void>();
const extraPids = new Set<number>();
const mounts = new Set<string>();

export function track(child: ChildProcess): void {
  children.add(child);
  child.on('exit', () => children.delete(child));
}
/** A daemon the bench started that is not its child (qcow-mount's and qcowmount's background daemons). */
export function trackPid(pid: number): void {
  extraPids.add(pid);
}
export function untrackPid(pid: number): void {
  extraPids.delete(pid);
}
export function trackMount(mountPoint: string): void {
  mounts.add(mountPoint);
}
export function untrackMount(mountPoint: string): void {
  mounts.delete(mountPoint);
}
/** Something else to undo at clean-up (synchronously), e.g. removing a scratch folder. */
export function atCleanUp(fn: () => void): () => void {
  finalizers.add(fn);
  return () => finalizers.delete(fn);
}

export function isMounted(mountPoint: string): boolean {
  // mountinfo names the real path: in a worktree, bench-work is a symlink (a dead mount cannot be
  // resolved itself, its parent can).
  let abs = path.resolve(mountPoint);
  try {
    abs = path.join(fs.realpathSync(path.dirname(abs)), path.basename(abs));
  } catch {
    // the parent is gone: compare as given
  }
  try {
    return fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some((l) => unescapeMountField(l.split(' ')[4] ?? '') === abs);
  } catch {
    return false;
  }
}

function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Unmounts (fusermount -u, then umount, then lazily). Returns true once nothing is mounted there. */
export function unmountSync(mountPoint: string): boolean {
  for (const [cmd, args] of [
    ['fusermount', ['-u', mountPoint]],
    ['fusermount3', ['-u', mountPoint]],
    ['umount', [mountPoint]],
    ['umount', ['-l', mountPoint]],
  ] as const) {
    if (!isMounted(mountPoint)) return true;
    if (have(cmd)) spawnSync(cmd, [...args], { stdio: 'ignore' });
  }
  return !isMounted(mountPoint);
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

/** Waits for a process to go, then SIGTERM, then SIGKILL. */
export async function stopPid(pid: number, graceMs = 3000): Promise<void> {
  const deadline = Date.now() + graceMs;
  while (pidAlive(pid) && Date.now() < deadline) await sleep(20);
  if (!pidAlive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const hard = Date.now() + 2000;
  while (pidAlive(pid) && Date.now() < hard) await sleep(20);
  if (pidAlive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

let cleaning = false;
/** Synchronous, so it also runs from 'exit' and signal handlers. */
export function cleanUpAll(): void {
  if (cleaning) return;
  cleaning = true;
  for (const m of [...mounts].reverse()) {
    if (!unmountSync(m)) process.stderr.write(`[bench] could not unmount ${m}\n`);
    mounts.delete(m);
  }
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null && c.pid) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  for (const pid of extraPids) {
    if (pidAlive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  extraPids.clear();
  for (const fn of finalizers) {
    try {
      fn();
    } catch {
      // best effort
    }
  }
  finalizers.clear();
  cleaning = false;
}

export function installCleanUpHandlers(): void {
  process.on('exit', cleanUpAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\n[bench] ${sig}: unmounting and stopping everything the bench started\n`);
      cleanUpAll();
      process.exit(130);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// /proc

export interface Mem {
  rssKiB: number;
  hwmKiB: number;
}

export function memOf(pid: number): Mem | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /VmRSS:\s+(\d+)/.exec(s);
    const hwm = /VmHWM:\s+(\d+)/.exec(s);
    if (!rss || !hwm) return undefined;
    return { rssKiB: Number(rss[1]), hwmKiB: Number(hwm[1]) };
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system, all threads) a process has used so far. */
export function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}
const CLOCK_TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** Starts `perf stat -e context-switches` on a process (all its threads); the returned function stops it and gives the count. */
export function countSwitches(pid: number): () => Promise<number> {
  const child = spawn('perf', ['stat', '-x', ',', '-e', 'context-switches', '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  track(child);
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  return () =>
    new Promise((resolve) => {
      if (child.exitCode !== null) return resolve(NaN);
      child.on('close', () => resolve(Number(/^(\d+),/m.exec(err)?.[1] ?? NaN)));
      child.kill('SIGINT');
    });
}

/** Pids whose argv holds `needle` as one argument, and whose executable's name is `exe` (basename). */
export function findPids(exe: string, needle: string): number[] {
  const found: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (path.basename(argv[0] ?? '') === exe && argv.includes(needle)) found.push(Number(d));
    } catch {
      // gone
    }
  }
  return found;
}

export function loadAverage(): [number, number, number] {
  const [a, b, c] = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').map(Number);
  return [a!, b!, c!];
}

export function machine(): Record<string, string> {
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  const memKiB = Number(/MemTotal:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  const first = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    return r.status === 0 ? (r.stdout || r.stderr).trim().split('\n')[0]! : 'unknown';
  };
  const dpkg = (pkg: string) => first('dpkg-query', ['-W', '-f=${Version}', pkg]);
  return {
    nproc: first('nproc', []),
    cpu,
    memory: `${(memKiB / 1024 / 1024).toFixed(1)} GiB`,
    kernel: first('uname', ['-r']),
    os: (/PRETTY_NAME="([^"]*)"/.exec(safeRead('/etc/os-release'))?.[1] ?? 'unknown'),
    node: process.version,
    qemu: first('qemu-img', ['--version']),
    qcowmount: `libqcow-utils ${dpkg('libqcow-utils')}`,
    fio: first('fio', ['--version']),
    libfuse2: dpkg('libfuse2'),
    fuse3: dpkg('fuse3'),
  };
}

function safeRead(p: string): string {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

/** Fraction (0..1) of a file's pages in the page cache, from fincore (util-linux). */
export async function residentFraction(file: string): Promise<number | undefined> {
  const r = await run('fincore', ['--bytes', '--noheadings', '--output', 'RES,SIZE', file]);
  if (r.code !== 0) return undefined;
  const [res, size] = r.stdout.trim().split(/\s+/).map(Number);
  return size ? res! / size : 1;
}

/** Drops a file's pages from the page cache (posix_fadvise DONTNEED through dd; works on FUSE files). */
export async function dropCache(file: string): Promise<void> {
  await run('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
}

/** Reads a file once (so its pages are in the page cache). */
export async function warm(file: string): Promise<void> {
  await runOk('dd', [`if=${file}`, 'of=/dev/null', 'bs=4M', 'status=none']);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
}
