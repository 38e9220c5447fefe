/**
 * The fuzzer through a real mount (`npm run fuzz -- --mount`): the mutants of scripts/fuzz.ts (same seed
 * images, same mutations, iteration I of seed S is always the same mutant) are mounted with qcow-mount on
 * each FUSE back-end, and every file of the tree is read whole (64 KiB steps; a sample of big ones) and in
 * random chunks, buffered and O_DIRECT, by reader processes. It asserts:
 * - qcow-mount either mounts or exits non-zero with one line, leaving nothing mounted or running;
 * - no read stalls (a reader silent for --stall seconds), the daemon never dies, a read returns bytes or
 *   EIO (no other errno), info.json parses;
 * - where QEMU still reads the mutant (qemu-img convert succeeds; for a snapshot, `qemu-img snapshot -a`
 *   on a copy, then convert), the bytes we serve of that view equal QEMU's;
 * - unmounting works, and leaves no mount or process behind.
 *
 *   npm run fuzz -- --mount [--fuse native|compat|both] [--seed S] [--iterations N] [--time-limit SEC]
 *   npm run fuzz -- --mount --fuse native --seed S --only I [--keep FILE]    # one mutant, verbosely
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Scratch, alive, daemonPid, ensureBuilt, isMounted } from '../native-test/mount-support.js';
import { type Mutant, Rng, type Seed, loadSeeds, mutate } from './fuzz.js';
import { makeHostile } from './make-hostile.js';
import { type ReadTarget, runReaders, totals } from './mount-reader.js';

export type Fuse = 'native' | 'compat';

export interface MountFuzzOptions {
  seed: number;
  /** Iterations [from, iterations) run (from: 0 unless re-running one). */
  iterations: number;
  from?: number;
  /** Each mutant is mounted once per back-end, in this order. */
  fuses: Fuse[];
  /** Stop starting new iterations after this many seconds. */
  timeLimitSec?: number;
  /** A reader that reports nothing for this long is stuck in a read. */
  stallSec?: number;
  hostileDir: string;
  log?: (line: string) => void;
}

export interface MountFinding {
  kind: 'wrong-bytes' | 'errno' | 'stall' | 'daemon-died' | 'reader-died' | 'mount-hang' | 'bad-refusal' | 'info-json' | 'unmount' | 'left-behind';
  seed: number;
  iteration: number;
  fuse: Fuse;
  seedImage: string;
  mutations: string[];
  detail: string;
}

export interface MountFuzzReport {
  seed: number;
  iterations: number;
  seconds: number;
  /** Per back-end: refused, mounted (every read gave bytes), mounted-eio (some reads gave EIO). */
  outcomes: Record<string, number>;
  reads: number;
  eio: number;
  /** Views whose every read was compared with QEMU's output, and the bytes compared. */
  viewsCompared: number;
  bytesCompared: number;
  findings: MountFinding[];
  stoppedBy: 'iterations' | 'time-limit';
}

/** Oracles bigger than this are not made (a mutated size can claim petabytes). */
const ORACLE_LIMIT = 256 * 1024 * 1024;
const QEMU_TIMEOUT = 30_000;

interface Oracles {
  /** Mounted file (relative) -> QEMU's raw output of that view. */
  byFile: Map<string, string>;
}

/** QEMU's raw output of the active disk and of each snapshot the mount lists, where QEMU reads them. */
function qemuOracles(mutant: string, format: string, info: InfoJson, workDir: string): Oracles {
  const byFile = new Map<string, string>();
  const convert = (from: string, to: string): boolean => spawnSync('qemu-img', ['convert', '-U', '-f', format, '-O', 'raw', from, to], { stdio: 'ignore', timeout: QEMU_TIMEOUT }).status === 0;
  if (info.virtualSize > ORACLE_LIMIT) return { byFile };
  const active = path.join(workDir, 'qemu-active.raw');
  if (convert(mutant, active)) byFile.set('active.raw', active);
  for (const [i, s] of (info.snapshots ?? []).slice(0, 4).entries()) {
    // An id QEMU cannot be given (a mutated one with NULs, say) leaves that view without an oracle.
    if (!s.files?.raw || (s.diskSize ?? 0) > ORACLE_LIMIT || !/^[\x21-\x7e]+$/.test(s.id)) continue;
    // A copy beside the mutant (relative backing and data file names still resolve); -a rewrites it.
    const copy = path.join(workDir, `qemu-snapshot-${i}.${format}`);
    const raw = path.join(workDir, `qemu-snapshot-${i}.raw`);
    fs.copyFileSync(mutant, copy);
    const applied = spawnSync('qemu-img', ['snapshot', '-f', format, '-a', s.id, copy], { stdio: 'ignore', timeout: QEMU_TIMEOUT }).status === 0;
    if (applied && convert(copy, raw)) byFile.set(s.files.raw, raw);
    fs.rmSync(copy, { force: true });
  }
  return { byFile };
}

interface InfoJson {
  virtualSize: number;
  snapshots?: { id: string; diskSize?: number; files?: { raw?: string | null } }[];
}

/** Regular files of the mounted tree (find, bounded in time: the daemon may be the thing that hangs). */
function listFiles(mnt: string, stallMs: number): { files: string[] } | { error: string } {
  const r = spawnSync('find', [mnt, '-type', 'f'], { encoding: 'utf8', timeout: stallMs });
  if (r.error || r.status !== 0) return { error: `find ${mnt}: ${r.error?.message ?? r.stderr.trim()}` };
  return { files: r.stdout.split('\n').filter(Boolean).sort() };
}

function readInfo(mnt: string, stallMs: number): InfoJson | string {
  const r = spawnSync('cat', [path.join(mnt, 'info.json')], { encoding: 'utf8', timeout: stallMs, maxBuffer: 64 << 20 });
  if (r.error || r.status !== 0) return `cat info.json: ${r.error?.message ?? r.stderr.trim()}`;
  try {
    const info = JSON.parse(r.stdout) as InfoJson;
    if (typeof info.virtualSize !== 'number') return 'info.json has no virtualSize';
    return info;
  } catch (err) {
    return `info.json does not parse: ${(err as Error).message}`;
  }
}

/** One mutant on one back-end; findings are pushed, the outcome returned. */
async function mountOne(m: Mutant, format: string, fuse: Fuse, ctx: { seed: number; i: number; scratch: Scratch; workDir: string; mutant: string; stallMs: number; rng: Rng }, report: MountFuzzReport, log: (l: string) => void): Promise<string> {
  const { scratch, mutant, stallMs } = ctx;
  const find = (kind: MountFinding['kind'], detail: string) => {
    report.findings.push({ kind, seed: ctx.seed, iteration: ctx.i, fuse, seedImage: m.seed, mutations: m.mutations, detail });
    log(`${kind.toUpperCase()} seed ${ctx.seed} iteration ${ctx.i} fuse=${fuse} (${m.seed}: ${m.mutations.join('; ')}): ${detail}`);
  };
  const mnt = scratch.mountPoint(fuse);
  const logFile = scratch.path(`daemon-${ctx.i}-${fuse}.log`);
  const r = scratch.cli(['-o', `fuse=${fuse}`, '--log', logFile, mutant, mnt], { timeout: 30_000 });
  let outcome = 'refused';
  if (r.error || r.signal) {
    find('mount-hang', `qcow-mount did not return in 30 s (${r.error?.message ?? r.signal})`);
    outcome = 'mount-hang';
  } else if (r.status !== 0) {
    // One line says why (warnings about what it read before giving up may precede it).
    const lines = r.stderr.trim().split('\n').filter((l) => !l.startsWith('qcow-mount: warning: '));
    if (lines.length !== 1 || !lines[0]!.startsWith('qcow-mount: ') || isMounted(mnt)) find('bad-refusal', `exit ${r.status}, ${isMounted(mnt) ? 'mounted anyway, ' : ''}stderr ${JSON.stringify(r.stderr.trim().slice(0, 500))}`);
  } else {
    const pid = daemonPid(scratch, mnt);
    const info = readInfo(mnt, stallMs);
    const listed = listFiles(mnt, stallMs);
    if (typeof info === 'string') find('info-json', info);
    if ('error' in listed) find('stall', listed.error);
    else {
      const oracles = typeof info === 'string' ? new Map<string, string>() : qemuOracles(mutant, format, info, ctx.workDir).byFile;
      const targets: ReadTarget[] = listed.files.map((file) => ({ file, oracle: oracles.get(path.relative(mnt, file)) }));
      const base = ctx.rng.u32();
      const result = await runReaders(
        [
          { targets, seed: base, chunk: 64 * 1024, sweepLimit: 16 << 20, randomReads: 24, maxLength: 256 * 1024 },
          { targets, seed: base + 1, randomReads: 24, maxLength: 256 * 1024, direct: true },
        ],
        { stallMs },
      );
      const t = totals(result.stats);
      report.reads += t.reads;
      const codes: Record<string, number> = {};
      for (const s of result.stats) for (const [code, n] of Object.entries(s.errors)) codes[code] = (codes[code] ?? 0) + n;
      const eio = codes.EIO ?? 0;
      report.eio += eio;
      outcome = eio > 0 ? 'mounted-eio' : 'mounted';
      const others = Object.entries(codes).filter(([code]) => code !== 'EIO');
      if (others.length > 0) find('errno', `reads failed with ${others.map(([c, n]) => `${c} x${n}`).join(', ')}: ${t.problems.slice(0, 3).join(' | ')}`);
      if (t.wrongBytes > 0) find('wrong-bytes', `${t.wrongBytes} bytes differ from QEMU's: ${t.problems.filter((p) => !/: EIO$/.test(p)).slice(0, 3).join(' | ')}`);
      if (result.stalled.length > 0) find('stall', `a read did not return in ${stallMs / 1000} s: ${t.problems.slice(0, 2).join(' | ')}`);
      if (result.died.length > 0) find('reader-died', t.problems.filter((p) => p.includes('died')).join(' | '));
      if (t.wrongBytes === 0 && result.stalled.length === 0) {
        for (const target of targets) {
          if (!target.oracle) continue;
          report.viewsCompared++;
          report.bytesCompared += fs.statSync(target.oracle).size;
        }
      }
    }
    if (pid === undefined || !alive(pid)) find('daemon-died', `the daemon is gone; its log: ${fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' | ') : 'none'}`);
    const u = scratch.unmount(mnt);
    if (u.status !== 0) find('unmount', `qcow-mount -u exited ${u.status ?? u.signal}: ${u.stderr.trim().slice(0, 300)}`);
    const deadline = Date.now() + 10_000;
    while ((isMounted(mnt) || (pid !== undefined && alive(pid))) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  }
  const left = scratch.cleanUp();
  if (left.length > 0) find('left-behind', left.join(', '));
  return outcome;
}

export async function runMountFuzz(options: MountFuzzOptions): Promise<MountFuzzReport> {
  const log = options.log ?? (() => {});
  const stallMs = (options.stallSec ?? 15) * 1000;
  makeHostile(options.hostileDir);
  const scratch = new Scratch('fuzz-mount');
  const workDir = scratch.path('work');
  fs.mkdirSync(workDir);
  const seeds: Seed[] = loadSeeds(options.hostileDir, workDir);
  const report: MountFuzzReport = { seed: options.seed, iterations: 0, seconds: 0, outcomes: {}, reads: 0, eio: 0, viewsCompared: 0, bytesCompared: 0, findings: [], stoppedBy: 'iterations' };
  const started = Date.now();
  const stopAt = options.timeLimitSec ? started + options.timeLimitSec * 1000 : Infinity;
  let lastLog = Date.now();
  try {
    for (let i = options.from ?? 0; i < options.iterations; i++) {
      if (Date.now() >= stopAt) {
        report.stoppedBy = 'time-limit';
        break;
      }
      const rng = Rng.forIteration(options.seed, i);
      const m = mutate(rng, seeds);
      const mutant = path.join(workDir, 'mutant.qcow2');
      fs.writeFileSync(mutant, m.bytes);
      const format = m.seed.endsWith('.qcow') ? 'qcow' : 'qcow2';
      for (const fuse of options.fuses) {
        const outcome = await mountOne(m, format, fuse, { seed: options.seed, i, scratch, workDir, mutant, stallMs, rng }, report, log);
        report.outcomes[`${fuse} ${outcome}`] = (report.outcomes[`${fuse} ${outcome}`] ?? 0) + 1;
      }
      for (const f of fs.readdirSync(workDir)) if (f.startsWith('qemu-')) fs.rmSync(path.join(workDir, f), { force: true });
      report.iterations++;
      if (Date.now() - lastLog > 5000) {
        lastLog = Date.now();
        log(`${report.iterations} mutants, ${((Date.now() - started) / 1000).toFixed(0)} s, ${JSON.stringify(report.outcomes)}, ${report.reads} reads, ${report.viewsCompared} views compared with QEMU`);
      }
    }
  } finally {
    scratch.cleanUp();
    scratch.remove();
  }
  report.seconds = (Date.now() - started) / 1000;
  return report;
}

export function formatMountFuzz(r: MountFuzzReport): string {
  const lines = [
    `fuzz through a mount: seed ${r.seed}, ${r.iterations} mutants in ${r.seconds.toFixed(1)} s (stopped by ${r.stoppedBy})`,
    `outcomes: ${Object.entries(r.outcomes).sort().map(([k, v]) => `${k} ${v}`).join(', ')}`,
    `reads ${r.reads} (EIO ${r.eio}); ${r.viewsCompared} views equal to QEMU's output (${(r.bytesCompared / 2 ** 20).toFixed(0)} MiB)`,
    r.findings.length === 0 ? 'findings: none' : `findings: ${r.findings.length}`,
  ];
  for (const f of r.findings) {
    lines.push(`  ${f.kind.toUpperCase()} iteration ${f.iteration} fuse=${f.fuse} (${f.seedImage}: ${f.mutations.join('; ')}): ${f.detail.split('\n')[0]}`);
    lines.push(`    reproduce: npm run fuzz -- --mount --fuse ${f.fuse} --seed ${f.seed} --only ${f.iteration} --keep /tmp/mutant.qcow2`);
  }
  return lines.join('\n');
}

/** `npm run fuzz -- --mount ...` (called by scripts/fuzz.ts). */
export async function mountFuzzMain(args: Record<string, string>, hostileDir: string): Promise<number> {
  ensureBuilt();
  const which = args.fuse ?? 'both';
  if (!['native', 'compat', 'both'].includes(which)) throw new Error(`--fuse needs native, compat or both, got ${which}`);
  const fuses: Fuse[] = which === 'both' ? ['native', 'compat'] : [which as Fuse];
  const seed = Number(args.seed ?? 1);
  const only = args.only !== undefined ? Number(args.only) : undefined;
  if (only !== undefined && args.keep) {
    const scratch = new Scratch('fuzz-keep');
    const m = mutate(Rng.forIteration(seed, only), loadSeeds(hostileDir, scratch.path('')));
    fs.writeFileSync(args.keep, m.bytes);
    console.log(`seed ${seed} iteration ${only}: ${m.seed} with ${m.mutations.join('; ')}; mutant written to ${args.keep}`);
    scratch.remove();
  }
  const report = await runMountFuzz({
    seed,
    // --only I: just iteration I (the same mutant as in the campaign).
    iterations: only !== undefined ? only + 1 : Number(args.iterations ?? 200),
    from: only,
    fuses,
    timeLimitSec: args['time-limit'] ? Number(args['time-limit']) : undefined,
    stallSec: args.stall ? Number(args.stall) : undefined,
    hostileDir,
    log: (l) => console.log(l),
  });
  console.log(formatMountFuzz(report));
  return report.findings.length > 0 ? 1 : 0;
}
