/**
 * Helpers for the real-FUSE mount tests: run the built qcow-mount CLI, mount and unmount under a
 * private /tmp folder, compare mounted files with QEMU's bytes, and make sure nothing is left behind.
 */
import { execFileSync, spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../test/support/fixtures.js';

export const CLI = path.join(repoRoot, 'dist/cli/qcow-mount.js');

/** Builds dist/ (tsc, then the commands' bundles) when a source file is newer than the built CLI. */
export function ensureBuilt(): void {
  const built = fs.existsSync(CLI) ? fs.statSync(CLI).mtimeMs : 0;
  let newest = 0;
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) newest = Math.max(newest, fs.statSync(p).mtimeMs);
    }
  };
  walk(path.join(repoRoot, 'src'));
  if (newest <= built) return;
  try {
    execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: repoRoot, stdio: 'inherit' });
  } catch {
    // tsc still emits on type errors (elsewhere in a shared checkout, say); esbuild bundles regardless.
    console.warn('ensureBuilt: tsc reported errors; bundling the commands anyway');
  }
  execFileSync(process.execPath, ['scripts/bundle.mjs'], { cwd: repoRoot, stdio: 'inherit' });
}

/** A private scratch folder for one test file: mount points, state (pid files, logs), made images. */
export class Scratch {
  readonly root: string;
  readonly stateDir: string;
  private n = 0;

  constructor(tag: string) {
    this.root = fs.mkdtempSync(path.join('/tmp', `qcow-mount-test-${tag}-`));
    this.stateDir = path.join(this.root, 'state');
  }

  /** A new empty folder to mount on. */
  mountPoint(name = 'mnt'): string {
    const p = path.join(this.root, `${name}-${++this.n}`);
    fs.mkdirSync(p);
    return p;
  }

  path(name: string): string {
    return path.join(this.root, name);
  }

  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return { ...process.env, QCOW_MOUNT_STATE_DIR: this.stateDir, ...extra };
  }

  /** Runs the CLI and waits for it (a background mount returns once ready). */
  cli(args: string[], opts: { env?: NodeJS.ProcessEnv; timeout?: number; prefix?: string[]; nodeArgs?: string[]; input?: Buffer; asProgram?: boolean } = {}): SpawnSyncReturns<string> {
    // asProgram: run the file itself, as an installed command runs (its first line picks Node's options).
    if (opts.asProgram) return spawnSync(CLI, args, { env: opts.env ?? this.env(), encoding: 'utf8', timeout: opts.timeout ?? 90_000, input: opts.input });
    const node = [...(opts.nodeArgs ?? []), CLI, ...args];
    const cmd = opts.prefix ? opts.prefix[0]! : process.execPath;
    const argv = opts.prefix ? [...opts.prefix.slice(1), process.execPath, ...node] : node;
    return spawnSync(cmd, argv, { env: opts.env ?? this.env(), encoding: 'utf8', timeout: opts.timeout ?? 90_000, input: opts.input });
  }

  /** Mounts an image in the background; throws with the CLI's message when it fails. */
  mount(image: string, mnt: string, extra: string[] = []): void {
    const r = this.cli([...extra, image, mnt]);
    if (r.status !== 0) throw new Error(`qcow-mount ${image} ${mnt} failed (${r.status}): ${r.stderr}`);
  }

  unmount(mnt: string): SpawnSyncReturns<string> {
    return this.cli(['-u', mnt]);
  }

  /** Unmounts whatever is still mounted under the scratch folder and stops daemons started from it. */
  cleanUp(): string[] {
    const left: string[] = [];
    for (const m of mountsUnder(this.root).reverse()) {
      left.push(`mount ${m}`);
      spawnSync('umount', ['-l', m]);
    }
    for (const pid of daemonsFor(this.root)) {
      left.push(`daemon ${pid}`);
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    return left;
  }

  remove(): void {
    if (mountsUnder(this.root).length === 0) fs.rmSync(this.root, { recursive: true, force: true });
  }
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points (any file system type) at or below `root`, from /proc/self/mountinfo. */
export function mountsUnder(root: string): string[] {
  const out: string[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const mp = unescape(f[4]!);
    if (mp === root || mp.startsWith(`${root}/`)) out.push(mp);
  }
  return out;
}

export function mountInfoLine(mnt: string): string | undefined {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => unescape(l.split(' ')[4] ?? '') === mnt)
    .pop();
}

export function isMounted(mnt: string): boolean {
  return mountInfoLine(mnt) !== undefined;
}

/** Live qcow-mount processes (not zombies) whose command line mentions `needle`. */
export function daemonsFor(needle: string): number[] {
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8');
      if (!cmd.includes('qcow-mount.js') || !cmd.includes(needle)) continue;
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
      if (state !== 'Z' && state !== 'X') pids.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

export function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The daemon's pid, from the pid file the CLI's state folder holds for `mnt`. */
export function daemonPid(scratch: Scratch, mnt: string): number | undefined {
  const files = fs.existsSync(scratch.stateDir) ? fs.readdirSync(scratch.stateDir).filter((f) => f.endsWith('.pid')) : [];
  for (const f of files) {
    try {
      const info = JSON.parse(fs.readFileSync(path.join(scratch.stateDir, f), 'utf8')) as { pid: number; mountPoint: string };
      if (info.mountPoint === mnt) return info.pid;
    } catch {
      // being written
    }
  }
  return undefined;
}

export function pidFileFor(scratch: Scratch, mnt: string): string | undefined {
  const files = fs.existsSync(scratch.stateDir) ? fs.readdirSync(scratch.stateDir).filter((f) => f.endsWith('.pid')) : [];
  for (const f of files) {
    try {
      const info = JSON.parse(fs.readFileSync(path.join(scratch.stateDir, f), 'utf8')) as { mountPoint: string };
      if (info.mountPoint === mnt) return path.join(scratch.stateDir, f);
    } catch {
      // being written
    }
  }
  return undefined;
}

function readFull(fd: number, buf: Buffer, length: number, position: number): number {
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

const CHUNK = 4 * 1024 * 1024;

/**
 * Compares `length` bytes at `position` of two files, chunk by chunk (never the whole file in memory).
 * Bytes missing from `expectedFile` (a sparse oracle cut short) count as zeros. Returns the first
 * differing offset, or -1.
 */
export function compareRange(actualFile: string, expectedFile: string, position: number, length: number): number {
  const a = fs.openSync(actualFile, 'r');
  const e = fs.openSync(expectedFile, 'r');
  const ba = Buffer.allocUnsafe(CHUNK);
  const be = Buffer.allocUnsafe(CHUNK);
  try {
    for (let off = 0; off < length; off += CHUNK) {
      const n = Math.min(CHUNK, length - off);
      const got = readFull(a, ba, n, position + off);
      if (got !== n) return position + off + got;
      const had = readFull(e, be, n, position + off);
      be.fill(0, had, n);
      const cmp = ba.subarray(0, n).compare(be.subarray(0, n));
      if (cmp !== 0) {
        for (let i = 0; i < n; i++) if (ba[i] !== be[i]) return position + off + i;
      }
    }
    return -1;
  } finally {
    fs.closeSync(a);
    fs.closeSync(e);
  }
}

export { prng } from '../test/support/prng.js';

/** Reads `count` random ranges (seeded) of a file; prints [offset, asked, got, sha256] for each. */
const RANDOM_READER = `
  const fs = require('fs'); const crypto = require('crypto');
  const [file, seedText, countText, maxText] = process.argv.slice(1);
  let a = Number(seedText) >>> 0;
  const rnd = () => { a = (a + 0x6d2b79f5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const fd = fs.openSync(file, 'r'); const size = fs.fstatSync(fd).size;
  const buf = Buffer.alloc(Number(maxText)); const out = [];
  for (let i = 0; i < Number(countText); i++) {
    const len = 1 + Math.floor(rnd() * Number(maxText));
    const off = Math.floor(rnd() * Math.max(1, size - len + 4096)); // sometimes runs past the end
    let done = 0;
    for (;;) { const n = fs.readSync(fd, buf, done, len - done, off + done); if (n === 0) break; done += n; if (done === len) break; }
    out.push([off, len, done, crypto.createHash('sha256').update(buf.subarray(0, done)).digest('hex')]);
  }
  process.stdout.write(JSON.stringify(out));
`;

/** `count` random reads of up to `max` bytes of `file` by another process (one reader of many at once). */
export function readRandomRanges(file: string, seed: number, count: number, max: number): Promise<[offset: number, asked: number, got: number, sha256: string][]> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ['-e', RANDOM_READER, file, String(seed), String(count), String(max)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as [number, number, number, string][]) : reject(new Error(`reader ${file}: ${err}`))));
  });
}

/** sha256 of [off, off + len) of an oracle file of `size` bytes, clipped there (a sparse oracle cut short reads as zeros). */
export function oracleRangeHash(oracle: string, size: number, off: number, len: number): string {
  const n = Math.max(0, Math.min(len, size - off));
  const buf = Buffer.alloc(n);
  const fd = fs.openSync(oracle, 'r');
  try {
    for (let done = 0; done < n; ) {
      const r = fs.readSync(fd, buf, done, n - done, off + done);
      if (r === 0) break;
      done += r;
    }
  } finally {
    fs.closeSync(fd);
  }
  return createHash('sha256').update(buf).digest('hex');
}
