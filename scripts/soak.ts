/**
 * Soak test of a real mount: builds (or reuses) an image with internal snapshots, compressed clusters and
 * a backing chain with qemu-img/qemu-io, takes QEMU's raw output of every view, mounts the image with
 * `node dist/cli/qcow-mount.js`, and runs concurrent random readers (child processes doing positional
 * reads of random ranges of active.raw and the snapshot files) that compare every byte with QEMU's.
 * Reports reads, bytes, wrong bytes and errors (both must be 0) and the daemon's RSS over time.
 *
 *   npm run soak -- [--minutes N] [--readers 16] [--work DIR] [--no-drop-caches]
 *
 * The kernel keeps the mounted files' pages (kernel_cache), so after a while the readers would only
 * test the page cache: as root the script drops clean caches every few seconds (`--no-drop-caches`
 * keeps them) so that reads keep reaching the daemon.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(import.meta.url);
const repoRoot = path.resolve(path.dirname(here), '..');
const CLI = path.join(repoRoot, 'dist/cli/qcow-mount.js');
const MiB = 1024 * 1024;

function args(): Record<string, string> {
  const out: Record<string, string> = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
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
function buildImage(work: string): SoakImage {
  const stampFile = path.join(work, 'stamp');
  const qemu = execFileSync('qemu-img', ['--version'], { encoding: 'utf8' }).split('\n')[0]!;
  const stamp = crypto.createHash('sha256').update(RECIPE_VERSION).update(qemu).digest('hex');
  const result: SoakImage = {
    image: path.join(work, 'top.qcow2'),
    views: { 'active.raw': path.join(work, 'active.raw'), 'snapshots/before.raw': path.join(work, 'before.raw'), 'snapshots/middle.raw': path.join(work, 'middle.raw') },
  };
  if (fs.existsSync(stampFile) && fs.readFileSync(stampFile, 'utf8') === stamp && Object.values(result.views).every((f) => fs.existsSync(f))) {
    console.log(`reusing the image in ${work}`);
    return result;
  }
  console.log(`building the image in ${work}`);
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

/** The reader: random positional reads of random files, compared with the oracle files. */
const READER = `
const fs = require('fs');
const [pairsJson, seedArg, untilArg] = process.argv.slice(1);
const pairs = JSON.parse(pairsJson).map(([m, o]) => ({ m, o, fm: fs.openSync(m, 'r'), fo: fs.openSync(o, 'r'), size: fs.statSync(o).size }));
let seed = Number(seedArg) >>> 0;
const rnd = () => { seed = (seed + 0x6d2b79f5) >>> 0; let t = seed; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
const until = Number(untilArg);
const a = Buffer.alloc(1 << 20), b = Buffer.alloc(1 << 20);
const stats = { reads: 0, bytes: 0, wrongBytes: 0, errors: 0, firstProblem: '' };
let last = Date.now();
while (Date.now() < until) {
  const p = pairs[Math.floor(rnd() * pairs.length)];
  const len = 1 + Math.floor(rnd() * rnd() * (1 << 20));
  const pos = Math.floor(rnd() * (p.size + 4096));
  let n;
  try {
    n = 0;
    for (;;) { const k = fs.readSync(p.fm, a, n, len - n, pos + n); if (k === 0) break; n += k; if (n === len) break; }
  } catch (e) {
    stats.errors++;
    if (!stats.firstProblem) stats.firstProblem = 'read ' + p.m + ' at ' + pos + ' (+' + len + '): ' + e.code;
    continue;
  }
  let m = 0;
  for (;;) { const k = fs.readSync(p.fo, b, m, len - m, pos + m); if (k === 0) break; m += k; if (m === len) break; }
  stats.reads++;
  stats.bytes += n;
  if (n !== m) { stats.wrongBytes += Math.abs(n - m); if (!stats.firstProblem) stats.firstProblem = p.m + ' at ' + pos + ': read ' + n + ' bytes, QEMU has ' + m; }
  const k = Math.min(n, m);
  if (a.compare(b, 0, k, 0, k) !== 0) {
    for (let i = 0; i < k; i++) if (a[i] !== b[i]) { stats.wrongBytes++; if (!stats.firstProblem) stats.firstProblem = p.m + ' differs at ' + (pos + i); }
  }
  if (Date.now() - last > 2000) { last = Date.now(); process.stdout.write(JSON.stringify(stats) + '\\n'); }
}
process.stdout.write(JSON.stringify(stats) + '\\n');
`;

interface ReaderStats {
  reads: number;
  bytes: number;
  wrongBytes: number;
  errors: number;
  firstProblem: string;
}

function vmRssKiB(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function daemonPid(stateDir: string, mnt: string): number | undefined {
  for (const f of fs.existsSync(stateDir) ? fs.readdirSync(stateDir) : []) {
    if (!f.endsWith('.pid')) continue;
    try {
      const info = JSON.parse(fs.readFileSync(path.join(stateDir, f), 'utf8')) as { pid: number; mountPoint: string };
      if (info.mountPoint === mnt) return info.pid;
    } catch {
      // being written
    }
  }
  return undefined;
}

function isMounted(mnt: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === mnt);
}

/** Set once mounted: unmounts and stops the readers (also on errors and signals). */
let cleanUp: () => void = () => {};

async function main(): Promise<number> {
  const a = args();
  const minutes = Number(a.minutes ?? 1);
  const readers = Number(a.readers ?? 16);
  const work = path.resolve(a.work ?? path.join(repoRoot, '.tmp', 'soak'));
  const dropCaches = a['no-drop-caches'] === undefined && process.getuid?.() === 0;
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build (npm run soak does)`);

  const img = buildImage(path.join(work, 'image'));
  const run = fs.mkdtempSync(path.join('/tmp', 'qcow-soak-'));
  const mnt = path.join(run, 'mnt');
  const stateDir = path.join(run, 'state');
  const log = path.join(run, 'daemon.log');
  fs.mkdirSync(mnt);
  const env = { ...process.env, QCOW_MOUNT_STATE_DIR: stateDir };

  const children: ChildProcess[] = [];
  let unmounted = false;
  const unmount = () => {
    if (unmounted) return;
    unmounted = true;
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    const r = spawnSync(process.execPath, [CLI, '-u', mnt], { env, encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0 && isMounted(mnt)) spawnSync('umount', ['-l', mnt]);
  };
  cleanUp = unmount;
  const onSignal = () => {
    console.log('interrupted: unmounting');
    unmount();
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const mounted = spawnSync(process.execPath, [CLI, '--log', log, img.image, mnt], { env, encoding: 'utf8', timeout: 60_000 });
  if (mounted.status !== 0) throw new Error(`qcow-mount failed (${mounted.status}): ${mounted.stderr.trim()}`);
  const pid = daemonPid(stateDir, mnt);
  if (!pid) throw new Error('no daemon pid file');
  console.log(`mounted ${img.image} at ${mnt} (daemon ${pid}); ${readers} readers for ${minutes} min${dropCaches ? ', dropping the page cache every 5 s' : ''}`);

  const started = Date.now();
  const until = started + minutes * 60_000;
  const pairs = Object.entries(img.views).map(([rel, oracle]) => [path.join(mnt, rel), oracle]);
  for (const [m, o] of pairs) {
    if (fs.statSync(m!).size !== fs.statSync(o!).size) throw new Error(`${m} is ${fs.statSync(m!).size} bytes, QEMU's ${o} is ${fs.statSync(o!).size}`);
  }
  const latest: ReaderStats[] = Array.from({ length: readers }, () => ({ reads: 0, bytes: 0, wrongBytes: 0, errors: 0, firstProblem: '' }));
  const done = Array.from({ length: readers }, (_, i) =>
    new Promise<void>((resolve) => {
      const c = spawn(process.execPath, ['-e', READER, JSON.stringify(pairs), String(1000 + i), String(until)], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(c);
      let buf = '';
      c.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        const lines = buf.split('\n');
        buf = lines.pop()!;
        for (const l of lines) if (l.trim()) latest[i] = JSON.parse(l) as ReaderStats;
      });
      c.on('exit', (code) => {
        if (code !== 0) latest[i]!.errors++, (latest[i]!.firstProblem ||= `reader ${i} exited with ${code}`);
        resolve();
      });
    }),
  );

  const series: { s: number; rssMiB: number }[] = [];
  const sample = () => {
    const kib = vmRssKiB(pid);
    if (kib !== undefined) series.push({ s: Math.round((Date.now() - started) / 1000), rssMiB: Math.round((kib / 1024) * 10) / 10 });
  };
  sample();
  const sampler = setInterval(() => {
    sample();
    const t = latest.reduce((acc, s) => ({ reads: acc.reads + s.reads, bytes: acc.bytes + s.bytes, wrong: acc.wrong + s.wrongBytes, errors: acc.errors + s.errors }), { reads: 0, bytes: 0, wrong: 0, errors: 0 });
    const last = series[series.length - 1];
    console.log(`${last?.s ?? 0} s: ${t.reads} reads, ${(t.bytes / MiB).toFixed(0)} MiB, wrong bytes ${t.wrong}, errors ${t.errors}, daemon RSS ${last?.rssMiB ?? '?'} MiB`);
  }, 3000);
  // Dropping caches can take seconds under load: do it in a child, so the RSS sampler keeps its pace.
  let dropping: ChildProcess | undefined;
  let drops = 0;
  const dropper = dropCaches
    ? setInterval(() => {
        if (dropping) return;
        dropping = spawn('sh', ['-c', 'echo 1 > /proc/sys/vm/drop_caches'], { stdio: 'ignore' });
        children.push(dropping);
        dropping.on('exit', (code) => {
          if (code === 0) drops++;
          dropping = undefined;
        });
      }, 5000)
    : undefined;
  await Promise.all(done);
  clearInterval(sampler);
  if (dropper) clearInterval(dropper);
  sample();
  const daemonAlive = vmRssKiB(pid) !== undefined;
  unmount();

  const total = latest.reduce((acc, s) => ({ reads: acc.reads + s.reads, bytes: acc.bytes + s.bytes, wrong: acc.wrong + s.wrongBytes, errors: acc.errors + s.errors }), { reads: 0, bytes: 0, wrong: 0, errors: 0 });
  const problems = latest.map((s) => s.firstProblem).filter(Boolean);
  // Flat: after the first third (warm-up: caches filling), the RSS does not keep climbing.
  const rss = series.map((p) => p.rssMiB);
  const warm = rss.slice(Math.floor(rss.length / 3));
  const half = Math.floor(warm.length / 2);
  const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / Math.max(1, xs.length);
  const growth = mean(warm.slice(half)) - mean(warm.slice(0, half));
  const flat = growth < Math.max(16, 0.1 * mean(warm.slice(0, half)));
  const logLines = fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').filter((l) => /EIO|error/i.test(l)) : [];

  console.log('');
  console.log(`soak: ${minutes} min, ${readers} readers, ${Object.keys(img.views).join(', ')}${dropCaches ? `, page cache dropped ${drops} times` : ''}`);
  console.log(`reads ${total.reads}, bytes ${(total.bytes / MiB).toFixed(0)} MiB (${(total.bytes / MiB / ((Date.now() - started) / 1000)).toFixed(0)} MiB/s), wrong bytes ${total.wrong}, errors ${total.errors}`);
  console.log(`daemon RSS (s: MiB): ${series.map((p) => `${p.s}: ${p.rssMiB}`).join(', ')}`);
  console.log(`daemon RSS min ${Math.min(...rss)} MiB, max ${Math.max(...rss)} MiB; after warm-up ${flat ? 'flat' : 'NOT flat'} (second half minus first half: ${growth.toFixed(1)} MiB)`);
  if (!daemonAlive) console.log('the daemon died during the run');
  for (const p of problems.slice(0, 5)) console.log(`problem: ${p}`);
  for (const l of logLines.slice(0, 5)) console.log(`daemon log: ${l}`);
  fs.rmSync(run, { recursive: true, force: true });
  return total.wrong > 0 || total.errors > 0 || !daemonAlive || total.reads === 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    cleanUp();
    console.error(`soak: ${(err as Error).message}`);
    process.exit(1);
  },
);
