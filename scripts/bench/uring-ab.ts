/**
 * FUSE over io_uring, measured (issue 14): the bare servers of scripts/bench/minfuse.c (libfuse 3),
 * scripts/bench/minfuse-uring.c (no libfuse: classic /dev/fuse or io_uring) and
 * scripts/bench/minfuse-customio.c (libfuse 3.14 driven from io_uring rings) on one raw file, beside
 * qcow-mount (native back-end) and qcowmount on the qcow2 of the same bytes. All mounted side by side;
 * each round runs every workload on every configuration in turn (the order reversed every other round),
 * so a loaded machine's drift hits them alike.
 *
 *   flock /tmp/qcow-bench.lock npx tsx scripts/bench/uring-ab.ts --raw R.raw --qcow2 R.qcow2 [--rounds 5]
 *       [--seconds 3] [--configs libfuse2,dev2,dev3,uring,ours,qcowmount] [--json out.json]
 * Configurations: libfuseN (minfuse.c, N threads), devN (minfuse-uring --dev N), uring[K] (--uring, K
 * entries per queue), uringd[K] (--defer: DEFER_TASKRUN rings), uringnp[K] (--nopin), uringx[K]
 * (--pin-offset 1: each queue served from the other CPU), uring2t[K] (--dual: two threads per queue,
 * one on each CPU), uringa[K] (--adaptive: a queue's thread moves to the other CPU for big reads), custom[K]
 * (minfuse-customio), ours, qcowmount.
 *
 * Needs root. Sets /sys/module/fuse/parameters/enable_uring to Y for the run (the uring server can only
 * negotiate io_uring on a connection made while it is Y) and back to what it was afterwards, also on
 * failure or a signal. Per configuration and workload it prints the figure, the daemon's CPU time and
 * context switches (all its threads, /proc/PID/task/N/status) and the whole machine's context switches
 * (/proc/stat), per I/O for random reads (one 4 KiB read is one FUSE request) and per MiB for sequential.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { type Mounted, MOUNTS, STATE, mountPeer } from './peers.js';
import { holdUringEnabled } from './uring-param.js';
import { WORKLOADS, type Workload } from './workloads.js';
import { MiB, REPO, cpuSeconds, installCleanUpHandlers, isMounted, loadAverage, log, median, sleep, track, trackMount, unmountSync, untrackMount, warm } from './util.js';

const BIN = '/tmp/uring-ab-bin';

interface Server {
  label: string;
  file: string;
  pid: number;
  stop(): Promise<void>;
}

/** Builds the two bare servers into BIN (gcc; minfuse.c needs libfuse3-dev, minfuse-uring.c liburing-dev). */
function build(): void {
  fs.mkdirSync(BIN, { recursive: true });
  const fuse3 = spawnSync('pkg-config', ['--cflags', '--libs', 'fuse3'], { encoding: 'utf8' }).stdout.trim().split(/\s+/);
  const jobs: [string, string[]][] = [
    ['minfuse', ['-O2', '-o', `${BIN}/minfuse`, `${REPO}/scripts/bench/minfuse.c`, ...fuse3]],
    ['minfuse-uring', ['-O2', '-Wall', '-pthread', '-o', `${BIN}/minfuse-uring`, `${REPO}/scripts/bench/minfuse-uring.c`, '-luring']],
    ['minfuse-customio', ['-O2', '-pthread', '-o', `${BIN}/minfuse-customio`, `${REPO}/scripts/bench/minfuse-customio.c`, ...fuse3, '-luring']],
  ];
  for (const [name, args] of jobs) {
    const r = spawnSync('gcc', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`gcc ${name}: ${r.stderr}`);
  }
}

function bdiOf(mnt: string): string {
  const dev = fs.statSync(mnt).dev;
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00);
  return `/sys/class/bdi/${major}:${minor}/read_ahead_kb`;
}

/** Starts a bare server in the foreground on its own mount point; resolves once `f` answers. */
async function startBare(label: string, raw: string, argv: string[], exe: 'minfuse' | 'minfuse-uring' | 'minfuse-customio'): Promise<Server> {
  const isLibfuse = exe === 'minfuse';
  const mnt = path.join('/tmp/uring-ab-mnt', label);
  if (isMounted(mnt)) unmountSync(mnt);
  fs.mkdirSync(mnt, { recursive: true });
  const logFile = path.join(BIN, `${label}.log`);
  const out = fs.openSync(logFile, 'w');
  const child = spawn(`${BIN}/${exe}`, [raw, mnt, ...argv], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  track(child);
  trackMount(mnt);
  const file = path.join(mnt, 'f');
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${label} exited (${child.exitCode}): ${fs.readFileSync(logFile, 'utf8')}`);
    if (Date.now() > deadline) throw new Error(`${label} did not come up: ${fs.readFileSync(logFile, 'utf8')}`);
    if (isMounted(mnt) && (isLibfuse || fs.readFileSync(logFile, 'utf8').includes('ready'))) {
      try {
        if (fs.statSync(file).size > 0) break;
      } catch {
        // not yet
      }
    }
    await sleep(20);
  }
  // minfuse.c and minfuse-customio.c leave the kernel's 128 KiB readahead: raise it as qcow-mount and
  // minfuse-uring do.
  if (exe !== 'minfuse-uring') fs.writeFileSync(bdiOf(mnt), '1024\n');
  return {
    label,
    file,
    pid: child.pid!,
    async stop() {
      unmountSync(mnt);
      untrackMount(mnt);
      for (let i = 0; i < 100 && child.exitCode === null; i++) await sleep(20);
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}

/** Voluntary + involuntary context switches of all of a process's threads. */
function switchesOf(pid: number): number {
  let n = 0;
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const s = fs.readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
      n += Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(s)?.[1] ?? 0) + Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(s)?.[1] ?? 0);
    } catch {
      // thread gone
    }
  }
  return n;
}
function machineSwitches(): number {
  return Number(/^ctxt (\d+)/m.exec(fs.readFileSync('/proc/stat', 'utf8'))?.[1] ?? NaN);
}

interface Sample {
  value: number;
  /** Per I/O (random) or per MiB (sequential). */
  cpuUs: number;
  daemonCs: number;
  machineCs: number;
  /** fio's median completion latency (µs), random reads only. */
  p50us: number;
}

const fmt = (x: number, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : '-');

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let raw = '';
  let qcow2 = '';
  let rounds = 5;
  let seconds = 3;
  let jsonOut = '';
  let labels = ['libfuse2', 'dev2', 'dev3', 'uring', 'ours', 'qcowmount'];
  let workloadIds = ['rand-4k-1', 'rand-4k-4', 'seq-1m', 'dd-1m'];
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    if (k === '--raw') raw = argv[++i]!;
    else if (k === '--qcow2') qcow2 = argv[++i]!;
    else if (k === '--rounds') rounds = Number(argv[++i]);
    else if (k === '--seconds') seconds = Number(argv[++i]);
    else if (k === '--configs') labels = argv[++i]!.split(',');
    else if (k === '--workloads') workloadIds = argv[++i]!.split(',');
    else if (k === '--json') jsonOut = argv[++i]!;
    else throw new Error(`unknown argument ${k}`);
  }
  if (!raw) throw new Error('--raw FILE is required');
  if (!qcow2 && labels.some((l) => l === 'ours' || l === 'qcowmount')) throw new Error('--qcow2 is required for ours and qcowmount');
  const all = Object.values(WORKLOADS) as Workload[];
  const workloads = workloadIds.map((id) => all.find((w) => w.id === id) ?? (() => { throw new Error(`unknown workload ${id}`); })());

  installCleanUpHandlers();
  holdUringEnabled(); // for the whole run; put back at exit
  fs.mkdirSync(MOUNTS, { recursive: true });
  fs.mkdirSync(STATE, { recursive: true, mode: 0o700 });
  build();

  const servers: Server[] = [];
  for (const label of labels) {
    const m = /^(dev|uring|uringd|uringnp|uringx|uring2t|uringa|libfuse|custom)(\d*)$/.exec(label);
    if (label === 'ours' || label === 'qcowmount') {
      const mounted: Mounted = await mountPeer(label, { image: qcow2, tag: `uring-ab-${label}` });
      servers.push({ label, file: mounted.file, pid: mounted.pid, stop: () => mounted.stop() });
    } else if (m?.[1] === 'libfuse') servers.push(await startBare(label, raw, [m[2] || '2'], 'minfuse'));
    else if (m?.[1] === 'dev') servers.push(await startBare(label, raw, ['--dev', m[2] || '2'], 'minfuse-uring'));
    else if (m?.[1] === 'custom') servers.push(await startBare(label, raw, m[2] ? ['--entries', m[2]] : [], 'minfuse-customio'));
    else if (m?.[1]?.startsWith('uring')) {
      const extra = { uring: [], uringd: ['--defer'], uringnp: ['--nopin'], uringx: ['--pin-offset', '1'], uring2t: ['--dual'], uringa: ['--adaptive'] }[m[1] as 'uring' | 'uringd' | 'uringnp' | 'uringx' | 'uring2t' | 'uringa'];
      servers.push(await startBare(label, raw, ['--uring', ...extra, ...(m[2] ? ['--entries', m[2]] : [])], 'minfuse-uring'));
    }
    else throw new Error(`unknown configuration ${label}`);
  }
  log(`mounted: ${servers.map((s) => `${s.label}=${s.file} (pid ${s.pid})`).join(', ')}`);

  const results = new Map<string, Sample[]>();
  const loads: number[] = [];
  try {
    for (let r = 0; r < rounds; r++) {
      await warm(raw);
      if (qcow2) await warm(qcow2);
      loads.push(loadAverage()[0]);
      for (const w of workloads) {
        const order = r % 2 ? [...servers].reverse() : servers;
        for (const s of order) {
          const size = fs.statSync(s.file).size;
          const cpu0 = cpuSeconds(s.pid) ?? NaN;
          const cs0 = switchesOf(s.pid);
          const mcs0 = machineSwitches();
          const res = await w.run(s.file, size, { seconds, seqBytes: 1024 * MiB, seqOffset: r * 256 * MiB });
          const mcs = machineSwitches() - mcs0;
          const cs = switchesOf(s.pid) - cs0;
          const cpu = (cpuSeconds(s.pid) ?? NaN) - cpu0;
          const per = w.metric === 'IOPS' ? res.bytes / 4096 : res.bytes / MiB;
          const sample = { value: res.value, cpuUs: (cpu * 1e6) / per, daemonCs: cs / per, machineCs: mcs / per, p50us: res.p50us ?? NaN };
          const key = `${s.label}|${w.id}`;
          results.set(key, [...(results.get(key) ?? []), sample]);
          log(`round ${r + 1} ${w.id} ${s.label}: ${fmt(res.value, 0)} ${w.metric}, daemon ${fmt(sample.cpuUs, 1)} µs and ${fmt(sample.daemonCs, 2)} switches, machine ${fmt(sample.machineCs, 2)} switches per ${w.metric === 'IOPS' ? 'I/O' : 'MiB'}`);
        }
      }
    }
  } finally {
    for (const s of servers) await s.stop();
  }

  console.log(`\nload average at the start of each round: ${loads.map((l) => l.toFixed(2)).join(', ')}`);
  console.log(`| workload | ${labels.join(' | ')} |`);
  console.log(`|---|${labels.map(() => '---').join('|')}|`);
  for (const w of workloads) {
    const cells = labels.map((l) => {
      const xs = (results.get(`${l}|${w.id}`) ?? []).map((x) => x.value);
      return `${fmt(median(xs))} [${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))}]`;
    });
    console.log(`| ${w.id} (${w.metric}) | ${cells.join(' | ')} |`);
    const rows = [['daemon µs', (x: Sample) => x.cpuUs, 1], ['daemon switches', (x: Sample) => x.daemonCs, 2], ['machine switches', (x: Sample) => x.machineCs, 2]] as const;
    for (const [name, pick, d] of w.metric === 'IOPS' ? [...rows, ['p50 latency µs', (x: Sample) => x.p50us, 1] as const] : rows) {
      const per = name.startsWith('p50') ? '' : w.metric === 'IOPS' ? ' per I/O' : ' per MiB';
      console.log(`| ${name}${per} | ${labels.map((l) => fmt(median((results.get(`${l}|${w.id}`) ?? []).map(pick)), d)).join(' | ')} |`);
    }
  }
  // Per-round ratios against qcowmount and libfuse2, where present (medians of per-round ratios).
  for (const base of ['qcowmount', 'libfuse2']) {
    if (!labels.includes(base)) continue;
    console.log(`\nmedian of per-round ratios against ${base}:`);
    for (const w of workloads) {
      const b = (results.get(`${base}|${w.id}`) ?? []).map((x) => x.value);
      const parts = labels.filter((l) => l !== base).map((l) => {
        const xs = (results.get(`${l}|${w.id}`) ?? []).map((x, i) => x.value / b[i]!);
        return `${l} ${fmt(median(xs), 2)}x [${fmt(Math.min(...xs), 2)}-${fmt(Math.max(...xs), 2)}]`;
      });
      console.log(`  ${w.id}: ${parts.join(', ')}`);
    }
  }
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify({ labels, loads, results: Object.fromEntries(results) }, null, 1));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
