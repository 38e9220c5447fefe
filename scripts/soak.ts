/**
 * Soak test of a real mount, on either FUSE back-end: builds (or reuses) an image with internal
 * snapshots, compressed clusters and a backing chain with qemu-img/qemu-io, takes QEMU's raw output of
 * every view, mounts the image with `node dist/cli/qcow-mount.js`, and
 * 1. runs concurrent random readers (child processes doing positional reads of active.raw and the
 *    snapshot files; every other one with O_DIRECT) that compare every byte with QEMU's, while the
 *    caches are dropped under them (every 2 s the mounted files' pages, `dd iflag=nocache`, and the
 *    kernel's, `echo 3 > /proc/sys/vm/drop_caches`, as often as it completes), so that reads reach the
 *    daemon again (checked at the end: fincore, and a read that waits for a stopped daemon);
 * 2. races the first load of an L2 table: fresh mounts where all readers, released at once, read
 *    (O_DIRECT) inside the same not-yet-loaded L2 table of one view.
 * Wrong bytes and failed reads must be 0; no reader may stall, the daemon must live, and unmounting
 * must leave no mount or process behind. Reports the daemon's RSS over time too.
 *
 *   npm run soak -- [-o fuse=native|compat] [--minutes N] [--readers 16] [--drop-every SEC]
 *                   [--race-rounds N] [--work DIR] [--no-drop-caches]
 *
 * native-test/soak.test.ts runs a short one on each back-end in every test run.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Scratch, alive, daemonPid, isMounted } from '../native-test/mount-support.js';
import { runReaders, totals } from './mount-reader.js';

const here = fileURLToPath(import.meta.url);
const repoRoot = path.resolve(path.dirname(here), '..');
const CLI = path.join(repoRoot, 'dist/cli/qcow-mount.js');
const MiB = 1024 * 1024;

function args(): Record<string, string> {
  const out: Record<string, string> = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-o' && argv[i + 1] !== undefined) out.o = [out.o, argv[++i]!].filter(Boolean).join(',');
    if (!a.startsWith('--')) continue;
    if (a.includes('=')) {
      const [k, v] = a.slice(2).split('=', 2) as [string, string];
      out[k] = v;
    } else if (argv[i + 1] !== undefined && !argv[i + 1]!.startsWith('--')) out[a.slice(2)] = argv[++i]!;
    else out[a.slice(2)] = 'true';
  }
  return out;
}

function sh(cmd: string, argv: string[], cwd: string): void {
  execFileSync(cmd, argv, { cwd, stdio: ['ignore', 'ignore', 'inherit'] });
}

/** Compressible, non-repeating text. */
function text(length: number, seed: number): Buffer {
  const words = ['alpha', 'bravo', 'cluster', 'delta', 'echo', 'snapshot', 'golf', 'backing', 'india', 'zstd', 'kilo', 'lima'];
  const out = Buffer.alloc(length);
  let x = seed;
  let pos = 0;
  while (pos < length) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    pos += out.write(`${words[x % words.length]}${(x >>> 12) % 10000} `, pos);
  }
  return out;
}

interface SoakImage {
  image: string;
  /** Mounted file (relative to the mount point) -> QEMU's raw output. */
  views: Record<string, string>;
}

const RECIPE_VERSION = '1';

/** The image: a compressed qcow2 backing file, an overlay with two snapshots, compressed writes too. */
function buildImage(work: string, say: (line: string) => void): SoakImage {
  const stampFile = path.join(work, 'stamp');
  const qemu = execFileSync('qemu-img', ['--version'], { encoding: 'utf8' }).split('\n')[0]!;
  const stamp = crypto.createHash('sha256').update(RECIPE_VERSION).update(qemu).digest('hex');
  const result: SoakImage = {
    image: path.join(work, 'top.qcow2'),
    views: { 'active.raw': path.join(work, 'active.raw'), 'snapshots/before.raw': path.join(work, 'before.raw'), 'snapshots/middle.raw': path.join(work, 'middle.raw') },
  };
  if (fs.existsSync(stampFile) && fs.readFileSync(stampFile, 'utf8') === stamp && Object.values(result.views).every((f) => fs.existsSync(f))) {
    say(`reusing the image in ${work}`);
    return result;
  }
  say(`building the image in ${work}`);
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });
  // Backing file: 48 MiB, every cluster zlib-compressed, 64 KiB clusters.
  fs.writeFileSync(path.join(work, 'base.raw'), text(48 * MiB, 1));
  sh('qemu-img', ['convert', '-q', '-c', '-O', 'qcow2', '-o', 'cluster_size=65536', 'base.raw', 'base.qcow2'], work);
  fs.rmSync(path.join(work, 'base.raw'));
  // Overlay: 64 MiB (past the backing file's end reads zeros), 16 KiB clusters, backing named relatively.
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=16384', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', '64M'], work);
  const io = (...cmds: string[]) => sh('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), 'top.qcow2'], work);
  const writes = (tag: number) => {
    const cmds: string[] = [];
    for (let i = 0; i < 24; i++) {
      const off = ((i * 7919 + tag * 104729) % 4000) * 16384;
      cmds.push(`write -P 0x${((tag * 37 + i) % 255 + 1).toString(16)} ${off} ${16384 * (1 + (i % 5))}`);
    }
    return cmds;
  };
  io(...writes(1), 'write -z 5M 1M', 'write -c -P 0x5c 40M 64k', 'write -c -P 0x5d 60M 64k');
  sh('qemu-img', ['snapshot', '-c', 'before', 'top.qcow2'], work);
  io(...writes(2), 'discard 8M 2M', 'write -c -P 0x6c 41M 64k');
  sh('qemu-img', ['snapshot', '-c', 'middle', 'top.qcow2'], work);
  io(...writes(3), 'write -z 20M 3M', 'write -P 0x7e 63M 1M');
  sh('qemu-img', ['convert', '-O', 'raw', 'top.qcow2', 'active.raw'], work);
  for (const s of ['before', 'middle']) {
    fs.copyFileSync(path.join(work, 'top.qcow2'), path.join(work, `copy-${s}.qcow2`));
    sh('qemu-img', ['snapshot', '-a', s, `copy-${s}.qcow2`], work);
    sh('qemu-img', ['convert', '-O', 'raw', `copy-${s}.qcow2`, `${s}.raw`], work);
    fs.rmSync(path.join(work, `copy-${s}.qcow2`));
  }
  fs.writeFileSync(stampFile, stamp);
  return result;
}

export interface SoakOptions {
  /** Seconds of concurrent random reads. */
  seconds: number;
  readers: number;
  /** Back-end (-o fuse=); undefined: qcow-mount's default ($QCOW_MOUNT_FUSE, else native when built). */
  fuse?: 'native' | 'compat';
  /** Drop the kernel's caches (echo 3 > /proc/sys/vm/drop_caches) this often; 0: never. */
  dropEverySec: number;
  /** Fresh mounts whose readers all start at once on the same not-yet-loaded L2 table. */
  raceRounds: number;
  /** Where the image and QEMU's raw output are built (and reused). */
  work: string;
  log?: (line: string) => void;
}

export interface SoakReport {
  fuse: string;
  seconds: number;
  reads: number;
  bytes: number;
  wrongBytes: number;
  errors: number;
  /** `echo 3 > /proc/sys/vm/drop_caches` done during the readers' run. */
  drops: number;
  /** Mounted files whose page cache was dropped (dd iflag=nocache) during the run. */
  fileDrops: number;
  /** After a drop, a read of a mounted file reached the daemon again. */
  cacheCheck: string;
  raceRounds: number;
  raceReads: number;
  raceWrongBytes: number;
  raceErrors: number;
  /** Daemons that died or hung, readers that stalled, mounts or processes left behind. */
  failures: string[];
  problems: string[];
  rssMiB: { s: number; rssMiB: number }[];
}

function vmRssKiB(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Bytes of `file` in the page cache. */
function residentBytes(file: string): number {
  return Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' }).trim());
}

function readRange(file: string, position: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(length);
    let n = 0;
    while (n < length) {
      const k = fs.readSync(fd, b, n, length - n, position + n);
      if (k === 0) break;
      n += k;
    }
    return b.subarray(0, n);
  } finally {
    fs.closeSync(fd);
  }
}

/** The last MiB of the active disk is plain data of the top file. */
const PROBE: [number, number] = [63 * MiB, MiB];

/** Opens the file, says "open", then reads the probe range for each line on stdin and prints its sha256. */
const PROBE_READER = `
const fs = require('fs'); const crypto = require('crypto');
const [file, pos, len] = process.argv.slice(1); const fd = fs.openSync(file, 'r'); const b = Buffer.alloc(Number(len));
process.stdout.write('open\\n');
process.stdin.on('data', () => { let n = 0; while (n < b.length) { const k = fs.readSync(fd, b, n, b.length - n, Number(pos) + n); if (k === 0) break; n += k; }
  process.stdout.write(crypto.createHash('sha256').update(b.subarray(0, n)).digest('hex') + '\\n'); });
`;

/**
 * Whether reads reach the daemon after `echo 3 > drop_caches`: with the daemon stopped (SIGSTOP), a
 * cached read of a mounted file still completes; after the drop (fincore: no page left) the same read
 * waits until the daemon runs again, then returns QEMU's bytes.
 */
async function checkCacheDrop(mnt: string, pid: number, oracle: string): Promise<string> {
  const file = path.join(mnt, 'active.raw');
  const want = crypto.createHash('sha256').update(readRange(oracle, ...PROBE)).digest('hex');
  readRange(file, ...PROBE);
  const reader = spawn(process.execPath, ['-e', PROBE_READER, file, String(PROBE[0]), String(PROBE[1])], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let buf = '';
  reader.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop()!;
    lines.push(...parts);
  });
  const nextLine = async (ms: number): Promise<string | undefined> => {
    const deadline = Date.now() + ms;
    while (lines.length === 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    return lines.shift();
  };
  let stopped = false;
  const stop = (yes: boolean) => {
    process.kill(pid, yes ? 'SIGSTOP' : 'SIGCONT');
    stopped = yes;
  };
  try {
    if ((await nextLine(10_000)) !== 'open') return 'cache check: the probe reader did not open the file';
    const resident = residentBytes(file);
    stop(true);
    reader.stdin.write('r\n');
    const cached = await nextLine(5000);
    stop(false);
    if (cached !== want) return `cache check: with the daemon stopped, a cached read ${cached === undefined ? 'did not complete' : 'gave wrong bytes'} (${resident} bytes were cached)`;
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    const afterDrop = residentBytes(file);
    stop(true);
    reader.stdin.write('r\n');
    const early = await nextLine(1000);
    stop(false);
    const late = early ?? (await nextLine(10_000));
    if (early !== undefined || afterDrop !== 0) return `cache check: after the drop ${afterDrop} bytes stayed cached and a read ${early === undefined ? 'waited' : 'did not wait'} for the stopped daemon`;
    if (late !== want) return `cache check: after the drop the read ${late === undefined ? 'did not complete' : "differs from QEMU's"}`;
    return `ok (${resident >> 10} KiB cached: read with the daemon stopped; after the drop 0 cached, the read waited for the daemon and gave QEMU's bytes)`;
  } finally {
    if (stopped) stop(false);
    reader.kill('SIGKILL');
  }
}

/** Unmounts (lazily when the CLI cannot) and waits for the daemon; what is left behind becomes a failure. */
async function unmountAll(scratch: Scratch, mnt: string, pid: number | undefined, failures: string[]): Promise<void> {
  const r = scratch.unmount(mnt);
  if (r.status !== 0) failures.push(`qcow-mount -u ${mnt} failed (${r.status}): ${r.stderr.trim()}`);
  const deadline = Date.now() + 15_000;
  while ((isMounted(mnt) || (pid !== undefined && alive(pid))) && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  for (const left of scratch.cleanUp()) failures.push(`left behind after unmounting: ${left}`);
}

function mountArgs(options: SoakOptions, log: string): string[] {
  return [...(options.fuse ? ['-o', `fuse=${options.fuse}`] : []), '--log', log];
}

export async function runSoak(options: SoakOptions): Promise<SoakReport> {
  const say = options.log ?? (() => {});
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build (npm run soak does)`);
  const img = buildImage(path.join(options.work, 'image'), say);
  const scratch = new Scratch('soak');
  const report: SoakReport = {
    fuse: options.fuse ?? process.env.QCOW_MOUNT_FUSE ?? 'default',
    seconds: options.seconds,
    reads: 0,
    bytes: 0,
    wrongBytes: 0,
    errors: 0,
    drops: 0,
    fileDrops: 0,
    cacheCheck: 'not run',
    raceRounds: 0,
    raceReads: 0,
    raceWrongBytes: 0,
    raceErrors: 0,
    failures: [],
    problems: [],
    rssMiB: [],
  };
  const onSignal = () => {
    scratch.cleanUp();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // 1. Readers over every view for `seconds`, the caches dropped under them.
    const mnt = scratch.mountPoint();
    scratch.mount(img.image, mnt, mountArgs(options, scratch.path('soak.log')));
    const pid = daemonPid(scratch, mnt);
    if (!pid) throw new Error('no daemon pid file');
    say(`mounted ${img.image} at ${mnt} (daemon ${pid}, fuse ${report.fuse}); ${options.readers} readers for ${options.seconds} s${options.dropEverySec ? `, caches dropped every ${options.dropEverySec} s` : ''}`);
    const targets = Object.entries(img.views).map(([rel, oracle]) => ({ file: path.join(mnt, rel), oracle }));
    const started = Date.now();
    const sample = () => {
      const kib = vmRssKiB(pid);
      if (kib !== undefined) report.rssMiB.push({ s: Math.round((Date.now() - started) / 1000), rssMiB: Math.round((kib / 1024) * 10) / 10 });
    };
    sample();
    let lastLog = Date.now();
    const readers = runReaders(
      // Every other reader uses O_DIRECT: its reads always reach the daemon, cache or no cache.
      Array.from({ length: options.readers }, (_, i) => ({ targets, seed: 1000 + i, until: started + options.seconds * 1000, direct: i % 2 === 1 })),
      {
        onProgress: (stats) => {
          if (Date.now() - lastLog < 3000) return;
          lastLog = Date.now();
          sample();
          const t = totals(stats);
          say(`${Math.round((Date.now() - started) / 1000)} s: ${t.reads} reads, ${(t.bytes / MiB).toFixed(0)} MiB, wrong bytes ${t.wrongBytes}, errors ${t.errors}, drops ${report.drops}, daemon RSS ${report.rssMiB.at(-1)?.rssMiB ?? '?'} MiB`);
        },
      },
    );
    // Each tick drops the mounted files' pages (dd iflag=nocache: POSIX_FADV_DONTNEED, instant) and,
    // unless the last one is still running, the kernel's caches (echo 3: seconds under load; in a child,
    // so the readers' reports keep flowing).
    let dropping: ChildProcess | undefined;
    let ddRunning = 0;
    const dropper = options.dropEverySec
      ? setInterval(() => {
          for (const t of targets) {
            ddRunning++;
            spawn('dd', [`if=${t.file}`, 'iflag=nocache', 'count=0', 'status=none'], { stdio: 'ignore' }).on('exit', (code) => {
              ddRunning--;
              if (code === 0) report.fileDrops++;
            });
          }
          if (dropping) return;
          dropping = spawn('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches'], { stdio: 'ignore' });
          dropping.on('exit', (code) => {
            if (code === 0) report.drops++;
            dropping = undefined;
          });
        }, options.dropEverySec * 1000)
      : undefined;
    const result = await readers;
    clearInterval(dropper);
    while (dropping || ddRunning > 0) await new Promise((res) => setTimeout(res, 50));
    sample();
    const t = totals(result.stats);
    Object.assign(report, { reads: t.reads, bytes: t.bytes, wrongBytes: t.wrongBytes, errors: t.errors });
    report.problems.push(...t.problems);
    for (const i of result.stalled) report.failures.push(`soak reader ${i} got no answer for 20 s`);
    for (const i of result.died) report.failures.push(`soak reader ${i} died`);
    if (!alive(pid)) report.failures.push('the daemon died during the soak');
    else if (options.dropEverySec) {
      report.cacheCheck = await checkCacheDrop(mnt, pid, img.views['active.raw']!);
      if (!report.cacheCheck.startsWith('ok')) report.failures.push(report.cacheCheck);
    }
    await unmountAll(scratch, mnt, pid, report.failures);

    // 2. Fresh mounts; all readers start at once inside the second L2 table (32-64 MiB: the partition
    //    probe at mount only reads the first sectors) of one view, O_DIRECT so each read reaches the daemon.
    const views = Object.entries(img.views);
    for (let round = 0; round < options.raceRounds; round++) {
      const [rel, oracle] = views[round % views.length]!;
      const m = scratch.mountPoint('race');
      scratch.mount(img.image, m, mountArgs(options, scratch.path(`race-${round}.log`)));
      const p = daemonPid(scratch, m);
      const r = await runReaders(
        Array.from({ length: options.readers }, (_, i) => ({
          targets: [{ file: path.join(m, rel), oracle }],
          seed: 5000 + round * 100 + i,
          window: [32 * MiB, 64 * MiB] as [number, number],
          maxLength: 256 * 1024,
          randomReads: 16,
          direct: true,
          barrier: true,
        })),
      );
      const rt = totals(r.stats);
      report.raceRounds++;
      report.raceReads += rt.reads;
      report.raceWrongBytes += rt.wrongBytes;
      report.raceErrors += rt.errors;
      report.problems.push(...rt.problems.map((x) => `race round ${round}: ${x}`));
      for (const i of r.stalled) report.failures.push(`race round ${round}: reader ${i} got no answer for 20 s`);
      for (const i of r.died) report.failures.push(`race round ${round}: reader ${i} died`);
      if (p === undefined || !alive(p)) report.failures.push(`race round ${round}: the daemon died`);
      await unmountAll(scratch, m, p, report.failures);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    for (const left of scratch.cleanUp()) report.failures.push(`left behind: ${left}`);
    scratch.remove();
  }
  return report;
}

/** Passes when no byte was wrong, no read failed, nothing died, stalled or was left behind. */
export function soakPassed(r: SoakReport): boolean {
  return r.wrongBytes === 0 && r.errors === 0 && r.reads > 0 && r.raceWrongBytes === 0 && r.raceErrors === 0 && r.failures.length === 0;
}

export function formatSoak(r: SoakReport): string {
  const rss = r.rssMiB.map((p) => p.rssMiB);
  // Flat: after the first third (warm-up: caches filling), the RSS does not keep climbing.
  const warm = rss.slice(Math.floor(rss.length / 3));
  const half = Math.floor(warm.length / 2);
  const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / Math.max(1, xs.length);
  const growth = mean(warm.slice(half)) - mean(warm.slice(0, half));
  const flat = growth < Math.max(16, 0.1 * mean(warm.slice(0, half)));
  return [
    `soak (fuse ${r.fuse}): ${r.seconds} s, reads ${r.reads}, ${(r.bytes / MiB).toFixed(0)} MiB, wrong bytes ${r.wrongBytes}, errors ${r.errors}, caches dropped ${r.drops} times (echo 3), mounted files' pages ${r.fileDrops} times`,
    `cache check: ${r.cacheCheck}`,
    `L2 race: ${r.raceRounds} fresh mounts, ${r.raceReads} reads, wrong bytes ${r.raceWrongBytes}, errors ${r.raceErrors}`,
    `daemon RSS (s: MiB): ${r.rssMiB.map((p) => `${p.s}: ${p.rssMiB}`).join(', ')}`,
    `daemon RSS min ${Math.min(...rss)} MiB, max ${Math.max(...rss)} MiB; after warm-up ${flat ? 'flat' : 'NOT flat'} (second half minus first half: ${growth.toFixed(1)} MiB)`,
    ...r.failures.map((f) => `FAILURE: ${f}`),
    ...r.problems.slice(0, 10).map((p) => `problem: ${p}`),
  ].join('\n');
}

async function main(): Promise<number> {
  const a = args();
  const fuse = a.fuse ?? /(?:^|,)fuse=(\w+)/.exec(a.o ?? '')?.[1];
  if (fuse !== undefined && fuse !== 'native' && fuse !== 'compat') throw new Error(`fuse must be native or compat, got ${fuse}`);
  const report = await runSoak({
    seconds: Number(a.minutes ?? 1) * 60,
    readers: Number(a.readers ?? 16),
    fuse,
    dropEverySec: a['no-drop-caches'] !== undefined || process.getuid?.() !== 0 ? 0 : Number(a['drop-every'] ?? 2),
    raceRounds: Number(a['race-rounds'] ?? 12),
    work: path.resolve(a.work ?? path.join(repoRoot, '.tmp', 'soak')),
    log: (l) => console.log(l),
  });
  console.log('');
  console.log(formatSoak(report));
  return soakPassed(report) ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === here) {
  main().then(
    (code) => process.exit(code),
    (err) => {
      console.error(`soak: ${(err as Error).message}`);
      process.exit(1);
    },
  );
}
