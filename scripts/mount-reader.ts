/**
 * Reader processes for mounted files (the soak, the fuzzer through a mount): each is a child process
 * doing positional reads of mounted files and comparing every byte with QEMU's raw output where one
 * is given. Reads happen in other processes so that a read stuck in the kernel cannot stall the caller:
 * a reader that reports nothing for `stallMs` is killed and counted as stalled.
 */
import { spawn } from 'node:child_process';

export interface ReadTarget {
  /** The mounted file. */
  file: string;
  /** QEMU's bytes for it; without one, a read only has to return bytes or fail with an errno. */
  oracle?: string;
}

export interface ReaderPlan {
  targets: ReadTarget[];
  seed: number;
  /** Random reads until this time (ms since the epoch); else an optional sweep, then `randomReads` reads. */
  until?: number;
  /** Sweep: every file read whole in `chunk`-byte steps (64 reads sampled past `sweepLimit` bytes). */
  chunk?: number;
  sweepLimit?: number;
  randomReads?: number;
  /** Random reads: at most this many bytes (default 1 MiB). */
  maxLength?: number;
  /** Random reads stay inside [from, to) of each file (default: the whole file and 4 KiB past it). */
  window?: [number, number];
  /** O_DIRECT, 4 KiB-aligned reads: nothing is served from the page cache. */
  direct?: boolean;
  /** Print "ready" once the files are open, and wait for a line on stdin before reading. */
  barrier?: boolean;
}

export interface ReaderStats {
  reads: number;
  bytes: number;
  /** Bytes that differ from QEMU's (a short read counts the missing bytes). */
  wrongBytes: number;
  /** Failed reads (and opens) by errno code. */
  errors: Record<string, number>;
  /** The first few wrong reads and errors, with file, offset and length. */
  problems: string[];
  done: boolean;
}

/** The reader (CommonJS, run with node -e): prints a stats line at least every 250 ms while it reads. */
const READER = `
const fs = require('fs');
const plan = JSON.parse(process.argv[1]);
let seed = plan.seed >>> 0;
const rnd = () => { seed = (seed + 0x6d2b79f5) >>> 0; let t = seed; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
const stats = { reads: 0, bytes: 0, wrongBytes: 0, errors: {}, problems: [], done: false };
const problem = (p) => { if (stats.problems.length < 5) stats.problems.push(p); };
const fail = (what, e) => { const code = e.code || String(e); stats.errors[code] = (stats.errors[code] || 0) + 1; problem(what + ': ' + code); };
let last = 0;
const report = (force) => { if (force || Date.now() - last >= 250) { last = Date.now(); process.stdout.write(JSON.stringify(stats) + '\\n'); } };
const maxLength = plan.maxLength || (1 << 20);
const flags = fs.constants.O_RDONLY | (plan.direct ? fs.constants.O_DIRECT : 0);
const files = [];
for (const t of plan.targets) {
  try {
    const fd = fs.openSync(t.file, flags);
    const size = fs.fstatSync(fd).size;
    const fo = t.oracle ? fs.openSync(t.oracle, 'r') : undefined;
    const osize = fo === undefined ? undefined : fs.fstatSync(fo).size;
    if (osize !== undefined && osize !== size) { stats.wrongBytes += Math.abs(osize - size); problem(t.file + ' is ' + size + ' bytes, QEMU has ' + osize); }
    files.push({ name: t.file, fd, size, fo, osize });
  } catch (e) { fail('open ' + t.file, e); }
}
const a = Buffer.alloc(Math.max(maxLength, plan.chunk || 0) + 8192), b = Buffer.alloc(a.length);
const full = (fd, buf, len, pos) => { let n = 0; for (;;) { const k = fs.readSync(fd, buf, n, len - n, pos + n); if (k === 0 || (n += k) === len) return n; } };
function readOne(f, pos, len) {
  let n;
  try { n = full(f.fd, a, len, pos); } catch (e) { fail('read ' + f.name + ' at ' + pos + ' +' + len, e); report(false); return; }
  stats.reads++; stats.bytes += n;
  const want = Math.max(0, Math.min(len, f.size - pos));
  if (n !== want) { stats.wrongBytes += Math.abs(want - n); problem('read ' + f.name + ' at ' + pos + ' +' + len + ' returned ' + n + ' bytes, not ' + want); }
  if (f.fo !== undefined) {
    const m = full(f.fo, b, Math.min(n, Math.max(0, f.osize - pos)), pos);
    b.fill(0, m, n);
    if (a.compare(b, 0, n, 0, n) !== 0) {
      let first = -1;
      for (let i = 0; i < n; i++) if (a[i] !== b[i]) { stats.wrongBytes++; if (first < 0) first = pos + i; }
      problem(f.name + ' differs from QEMU at ' + first + ' (read at ' + pos + ' +' + len + ')');
    }
  }
  report(false);
}
const align = (x) => (plan.direct ? Math.floor(x / 4096) * 4096 : Math.floor(x));
function randomRead() {
  const f = files[Math.floor(rnd() * files.length)];
  const [from, to] = plan.window || [0, f.size + 4096];
  const pos = align(from + rnd() * Math.max(1, to - from));
  const len = plan.direct ? 4096 * (1 + Math.floor(rnd() * rnd() * (maxLength / 4096))) : 1 + Math.floor(rnd() * rnd() * maxLength);
  readOne(f, pos, len);
}
function run() {
  if (files.length > 0) {
    if (plan.until !== undefined) {
      while (Date.now() < plan.until) randomRead();
    } else if (plan.chunk) {
      const chunk = plan.chunk;
      const limit = plan.sweepLimit ?? (64 << 20);
      for (const f of files) {
        if (f.size <= limit) for (let p = 0; p < f.size; p += chunk) readOne(f, p, chunk);
        else for (let i = 0; i < 64; i++) readOne(f, align(i < 2 ? i * (f.size - chunk) : rnd() * (f.size - chunk)), chunk);
      }
    }
    if (plan.until === undefined) for (let i = 0; i < (plan.randomReads || 0); i++) randomRead();
  }
  stats.done = true;
  report(true);
  process.exit(0);
}
if (plan.barrier) { process.stdout.write('ready\\n'); process.stdin.once('data', run); } else run();
`;

export interface ReadersResult {
  stats: ReaderStats[];
  /** Readers killed because they reported nothing for `stallMs` (a read that never came back). */
  stalled: number[];
  /** Readers that ended without their final stats line (crashed). */
  died: number[];
}

const empty = (): ReaderStats => ({ reads: 0, bytes: 0, wrongBytes: 0, errors: {}, problems: [], done: false });

/**
 * Runs one reader per plan and waits for all. With `barrier` plans, every reader opens its files first,
 * then all are released at once (to race one another).
 */
export function runReaders(plans: ReaderPlan[], options: { stallMs?: number; onProgress?: (stats: ReaderStats[]) => void } = {}): Promise<ReadersResult> {
  const stallMs = options.stallMs ?? 20_000;
  const latest = plans.map(empty);
  const result: ReadersResult = { stats: latest, stalled: [], died: [] };
  const children = plans.map((plan) => spawn(process.execPath, ['-e', READER, JSON.stringify(plan)], { stdio: ['pipe', 'pipe', 'pipe'] }));
  let ready = 0;
  const release = () => {
    if (++ready === plans.filter((p) => p.barrier).length) for (const [i, c] of children.entries()) if (plans[i]!.barrier) c.stdin.write('go\n');
  };
  return new Promise((resolve) => {
    let left = children.length;
    for (const [i, c] of children.entries()) {
      let buf = '';
      let stderr = '';
      let watchdog: NodeJS.Timeout;
      const arm = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => {
          result.stalled.push(i);
          c.kill('SIGKILL');
        }, stallMs);
      };
      arm();
      c.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
      c.stdout.on('data', (d: Buffer) => {
        arm();
        buf += d.toString();
        const lines = buf.split('\n');
        buf = lines.pop()!;
        for (const l of lines) {
          if (l === 'ready') release();
          else if (l.trim()) latest[i] = JSON.parse(l) as ReaderStats;
        }
        options.onProgress?.(latest);
      });
      c.on('close', () => {
        clearTimeout(watchdog);
        c.stdin.destroy();
        if (!latest[i]!.done && !result.stalled.includes(i)) {
          result.died.push(i);
          latest[i]!.problems.push(`reader ${i} died: ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
        }
        if (--left === 0) resolve(result);
      });
    }
  });
}

/** All readers' counts added up. */
export function totals(stats: ReaderStats[]): { reads: number; bytes: number; wrongBytes: number; errors: number; problems: string[] } {
  return stats.reduce(
    (t, s) => ({
      reads: t.reads + s.reads,
      bytes: t.bytes + s.bytes,
      wrongBytes: t.wrongBytes + s.wrongBytes,
      errors: t.errors + Object.values(s.errors).reduce((x, y) => x + y, 0),
      problems: [...t.problems, ...s.problems],
    }),
    { reads: 0, bytes: 0, wrongBytes: 0, errors: 0, problems: [] as string[] },
  );
}
