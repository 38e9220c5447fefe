/**
 * npm run bench [-- --quick] [-- --rounds N] [-- --only full,zlib] [-- --skip memory] [-- --wait-quiet MIN]
 *
 * qcow-mount against qcowmount (libqcow), qemu-storage-daemon's FUSE export and a minimal fuse-native
 * raw passthrough (the Node ceiling), on the same images in the same run, with fio and dd; qcow-export
 * against qemu-img convert; daemon memory and mount time on a 2 TiB image with 500 snapshots.
 * Builds its images into bench-work/ (gitignored) when missing; mounts only under bench-work/mnt and
 * unmounts everything on exit, error or Ctrl-C. Writes bench/baseline.{md,json} (a --quick run writes
 * bench-work/quick.{md,json} instead, unless --out says otherwise). See scripts/bench/*.ts.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type ImageSet, DEFAULT_SIZES, IMAGES, type Sizes, buildImages, filesToWarm } from './bench/images.js';
import { type MountRequest, type Mounted, MOUNTS, PEERS, type PeerName, STATE, mountPeer } from './bench/peers.js';
import { runCryptBench } from './bench/crypt.js';
import { type BenchResults, type ScenarioResult, renderMarkdown, renderConsole } from './bench/report.js';
import { benchRemote, renderRemote } from './bench/remote.js';
import { benchVolume } from './bench/volume-diff.js';
import { benchGuestRam } from './bench/guest-ram.js';
import { ALL_SEQ_BYTES, DEFAULT_SEQ_BYTES, type RunOptions, WORKLOADS, type Workload } from './bench/workloads.js';
import {
  GiB,
  KiB,
  MiB,
  REPO,
  WORK,
  atCleanUp,
  cleanUpAll,
  countSwitches,
  cpuSeconds,
  dropCache,
  have,
  installCleanUpHandlers,
  loadAverage,
  log,
  machine,
  memOf,
  residentFraction,
  run,
  runOk,
  sleep,
  warm,
} from './bench/util.js';

interface Args {
  quick: boolean;
  rounds: number;
  only?: Set<string>;
  skip: Set<string>;
  out: string;
  seconds: number;
  seqBytes: number;
  waitQuietMinutes: number;
  /** Only these peers / workloads (for development runs). */
  peers?: Set<string>;
  workloads?: Set<string>;
}

const SECTIONS = ['full', 'snapshot', 'frag', 'chain', 'chain-snapshot', 'zlib', 'zstd', 'export', 'memory', 'volume', 'guest-ram', 'diagnostics', 'remote', 'crypt'] as const;

function parseArgs(argv: string[]): Args {
  const a: Args = { quick: false, rounds: 3, skip: new Set(), out: '', seconds: 3, seqBytes: DEFAULT_SEQ_BYTES, waitQuietMinutes: 0 };
  let roundsGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${k} needs a value`);
      return x;
    };
    if (k === '--quick') a.quick = true;
    else if (k === '--rounds') {
      a.rounds = Number(v());
      roundsGiven = true;
    } else if (k === '--only') a.only = new Set(v().split(','));
    else if (k === '--skip') for (const s of v().split(',')) a.skip.add(s);
    else if (k === '--out') a.out = v();
    else if (k === '--seconds') a.seconds = Number(v());
    else if (k === '--seq-mib') a.seqBytes = Number(v()) * MiB;
    else if (k === '--wait-quiet') a.waitQuietMinutes = Number(v());
    else if (k === '--peers') a.peers = new Set(v().split(','));
    else if (k === '--workloads') a.workloads = new Set(v().split(','));
    else if (k === '--help' || k === '-h') {
      process.stdout.write(
        `npm run bench -- [--quick] [--rounds N] [--seconds S] [--seq-mib N] [--only ${SECTIONS.join(',')}] [--skip ...] [--out PATH-WITHOUT-EXTENSION] [--wait-quiet MINUTES] [--peers ours,ours-dio,ours-uring,compat,qcowmount,qsd,passthrough] [--workloads seq-1m,seq-128k,dd-1m,rand-4k-1,rand-4k-4,rand-64k]\n`,
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${k} (see --help)`);
  }
  if (a.quick) {
    if (!roundsGiven) a.rounds = 1;
    a.seconds = Math.min(a.seconds, 2);
    a.seqBytes = 1 * GiB;
  }
  if (!Number.isInteger(a.rounds) || a.rounds < 1) throw new Error('--rounds needs a whole number >= 1');
  for (const s of [...(a.only ?? []), ...a.skip]) if (!(SECTIONS as readonly string[]).includes(s)) throw new Error(`unknown section ${s} (known: ${SECTIONS.join(', ')})`);
  // Only a full default run is the baseline of record; partial and quick runs go to bench-work/.
  const partial = a.quick || a.only || a.skip.size > 0 || a.peers || a.workloads;
  a.out ||= partial ? path.join(WORK, 'quick') : path.join(REPO, 'bench', 'baseline');
  return a;
}

const wanted = (a: Args, s: string) => (!a.only || a.only.has(s)) && !a.skip.has(s);

// ---------------------------------------------------------------------------------------------
// Peers and tools

const APT_PACKAGES: Record<string, string> = {
  fio: 'fio',
  qcowmount: 'libqcow-utils',
  'qemu-storage-daemon': 'qemu-system-common',
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  fusermount3: 'fuse3',
  'qemu-system-x86_64': 'qemu-system-x86',
  fincore: 'util-linux',
};

async function ensureTools(): Promise<void> {
  const missing = Object.keys(APT_PACKAGES).filter((c) => !have(c));
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map((c) => APT_PACKAGES[c]!))];
  log(`missing ${missing.join(', ')}: apt-get install -y ${pkgs.join(' ')}`);
  if (!have('apt-get')) throw new Error(`install ${pkgs.join(' ')} (no apt-get here)`);
  const sudo = process.getuid?.() === 0 ? [] : ['sudo', '-n'];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const exec = (args: string[]) => (sudo.length ? run(sudo[0]!, [...sudo.slice(1), ...args], { env }) : run(args[0]!, args.slice(1), { env }));
  let r = await exec(['apt-get', 'install', '-y', ...pkgs]);
  if (r.code !== 0) {
    await exec(['apt-get', 'update']);
    r = await exec(['apt-get', 'install', '-y', ...pkgs]);
  }
  const still = missing.filter((c) => !have(c));
  // qemu-system-x86_64 only speeds up making 500 snapshots; everything else is needed.
  const needed = still.filter((c) => c !== 'qemu-system-x86_64');
  if (needed.length) throw new Error(`still missing after apt-get: ${needed.join(', ')} (${r.stderr.trim().split('\n').slice(-2).join(' | ')})`);
  if (!fs.existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing: FUSE is not available here');
}

// ---------------------------------------------------------------------------------------------
// Scenarios: one view, each peer's way of serving it, and the workloads to run.

interface Scenario {
  id: string;
  title: string;
  targets: Partial<Record<PeerName, MountRequest>>;
  workloads: Workload[];
  /** The raw bytes of the view, where we have them; else peers are checked against qsd (QEMU itself). */
  reference?: string;
}

/** Where the native back-end is also measured with -o direct_io (the views of the native goals). */
const DIRECT_IO_SCENARIOS = new Set(['full', 'snapshot']);

function scenarios(set: ImageSet): Scenario[] {
  // Every view qcow-mount serves is measured on both its back-ends: native (ours) and compat; and,
  // when asked for by --peers (it sets a kernel parameter), native over io_uring (ours-uring).
  return baseScenarios(set).map((sc) => {
    if (!sc.targets.ours) return sc;
    const dio = DIRECT_IO_SCENARIOS.has(sc.id) ? { 'ours-dio': { ...sc.targets.ours } } : {};
    return { ...sc, targets: { ...sc.targets, ...dio, compat: { ...sc.targets.ours }, 'ours-uring': { ...sc.targets.ours } } };
  });
}

function baseScenarios(set: ImageSet): Scenario[] {
  const W = WORKLOADS;
  return [
    {
      id: 'full',
      title: `active.raw of a ${fmtSize(fs.statSync(set.fullRaw).size)} fully allocated image, 64 KiB clusters, host order = guest order`,
      targets: {
        ours: { image: set.full, tag: 'full' },
        qcowmount: { image: set.full, tag: 'full' },
        qsd: { image: set.full, tag: 'full' },
        passthrough: { image: set.fullRaw, tag: 'full' },
      },
      workloads: [W.seq1m, W.seq128k, W.dd, W.rand4k1, W.rand4k4, W.rand64k],
      reference: set.fullRaw,
    },
    {
      id: 'snapshot',
      title: 'an internal snapshot (snapshots/s1.raw) of a 1 GiB image, 1/4 of it rewritten before the snapshot (peers: a copy reverted to s1)',
      targets: {
        ours: { image: set.snap, tag: 'snap', oursFile: 'snapshots/s1.raw' },
        qcowmount: { image: set.snapS1, tag: 'snap' },
        qsd: { image: set.snapS1, tag: 'snap' },
      },
      workloads: [W.seq1m, W.rand4k1],
    },
    {
      id: 'frag',
      title: 'active.raw of a 2 GiB image whose 64 KiB clusters were written in shuffled order (host order != guest order)',
      targets: {
        ours: { image: set.frag, tag: 'frag' },
        qcowmount: { image: set.frag, tag: 'frag' },
        qsd: { image: set.frag, tag: 'frag' },
      },
      workloads: [W.seq1m, W.rand4k1],
    },
    {
      id: 'chain',
      title: 'active.raw of a 1 GiB overlay over a backing file (3/8 of the clusters in the overlay)',
      targets: {
        ours: { image: set.chain, tag: 'chain' },
        qcowmount: { image: set.chain, tag: 'chain' },
        qsd: { image: set.chain, tag: 'chain' },
      },
      workloads: [W.seq1m],
    },
    {
      id: 'chain-snapshot',
      title: 'snapshots/s1.raw of that overlay (peers: a copy reverted to s1, same backing file)',
      targets: {
        ours: { image: set.chain, tag: 'chainsnap', oursFile: 'snapshots/s1.raw' },
        qcowmount: { image: set.chainS1, tag: 'chainsnap' },
        qsd: { image: set.chainS1, tag: 'chainsnap' },
      },
      workloads: [W.seq1m],
    },
    {
      id: 'zlib',
      title: 'active.raw of a 1 GiB zlib-compressed image of text-like data, 64 KiB clusters',
      targets: {
        ours: { image: set.zlib, tag: 'zlib' },
        qcowmount: { image: set.zlib, tag: 'zlib' },
        qsd: { image: set.zlib, tag: 'zlib' },
      },
      workloads: [W.seq1m, W.rand4k1],
    },
    {
      id: 'zstd',
      title: 'active.raw of the same data, zstd-compressed',
      targets: {
        ours: { image: set.zstd, tag: 'zstd' },
        qcowmount: { image: set.zstd, tag: 'zstd' },
        qsd: { image: set.zstd, tag: 'zstd' },
      },
      workloads: [W.seq1m, W.rand4k1],
    },
  ];
}

function fmtSize(n: number): string {
  if (n >= GiB) return `${+(n / GiB).toFixed(2)} GiB`;
  return `${+(n / MiB).toFixed(1)} MiB`;
}

/** Compares a few 64 KiB blocks (first, last, scattered) of each peer's file with the reference. */
function sameData(file: string, reference: string, size: number): string | undefined {
  const block = 64 * KiB;
  const blocks = Math.floor(size / block);
  const picks = [0, blocks - 1, ...Array.from({ length: 6 }, (_, i) => Math.floor(((i * 2654435761) % 1000003) / 1000003 * blocks))];
  const a = Buffer.alloc(block);
  const b = Buffer.alloc(block);
  const fa = fs.openSync(file, 'r');
  const fb = fs.openSync(reference, 'r');
  try {
    const sa = fs.fstatSync(fa).size;
    const sb = fs.fstatSync(fb).size;
    if (sa !== sb) return `size ${sa}, expected ${sb}`;
    for (const i of picks) {
      const na = fs.readSync(fa, a, 0, block, i * block);
      const nb = fs.readSync(fb, b, 0, block, i * block);
      if (na !== nb || !a.equals(b)) return `bytes at ${i * block} differ`;
    }
  } catch (err) {
    return (err as Error).message;
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
  return undefined;
}

function rotate<T>(xs: readonly T[], by: number): T[] {
  const k = ((by % xs.length) + xs.length) % xs.length;
  return [...xs.slice(k), ...xs.slice(0, k)];
}

/** The host files behind a view (with its backing file), to warm right before they are read. */
function targetFiles(t: MountRequest): string[] {
  return path.basename(t.image).startsWith('chain') ? [t.image, path.join(IMAGES, 'chain-base.qcow2')] : [t.image];
}
function scenarioFiles(sc: Scenario): string[] {
  return [...new Set(Object.values(sc.targets).flatMap(targetFiles))];
}

async function runScenario(sc: Scenario, round: number, opt: RunOptions, into: ScenarioResult): Promise<void> {
  // The page cache may have let some of the image go while earlier scenarios ran: read it again.
  for (const f of scenarioFiles(sc)) await warm(f);
  const peers = rotate(
    PEERS.filter((p) => sc.targets[p] && !into.excluded[p]),
    round,
  );
  const mounted = new Map<PeerName, Mounted>();
  try {
    for (const p of peers) {
      try {
        const m = await mountPeer(p, sc.targets[p]!);
        mounted.set(p, m);
        (into.mountMs[p] ??= []).push(m.mountMs);
      } catch (err) {
        const why = (err as Error).message.split('\n')[0]!.slice(0, 300);
        log(`  ${sc.id}: ${p} cannot serve this view: ${why}`);
        into.excluded[p] = `cannot mount: ${why}`;
      }
    }
    // Every peer must serve the view's bytes: a peer serving wrong data is left out (and says why).
    const ref = sc.reference ?? mounted.get('qsd')?.file;
    if (ref) {
      for (const [p, m] of mounted) {
        if (m.file === ref) continue;
        const size = fs.statSync(ref).size;
        const bad = sameData(m.file, ref, size);
        if (bad) {
          log(`  ${sc.id}: ${p} serves different data (${bad}): left out`);
          into.excluded[p] = `wrong data: ${bad}`;
          await m.stop();
          mounted.delete(p);
        }
      }
    }
    const size = fs.statSync([...mounted.values()][0]!.file).size;
    for (const w of sc.workloads) {
      const wr = (into.workloads[w.id] ??= { title: w.title, metric: w.metric, values: {}, cpuUs: {}, requests: undefined });
      for (const p of mounted.keys()) { // mounted in this round's (rotated) order
        const m = mounted.get(p)!;
        // The machine is shared: other work may have pushed some of the image out of the page cache
        // since the last workload. Reading it again costs ~0.6 s per 4 GiB when it is all there.
        for (const f of targetFiles(sc.targets[p]!)) await warm(f);
        const before = m.requests ? await m.requests() : undefined;
        const cpu0 = m.pid ? cpuSeconds(m.pid) : undefined;
        const r = await w.run(m.file, size, { ...opt, seqOffset: round * opt.seqBytes });
        const cpu1 = m.pid ? cpuSeconds(m.pid) : undefined;
        if (cpu0 !== undefined && cpu1 !== undefined) {
          // Daemon CPU per MiB served (sequential) or per I/O (random), in µs.
          const units = w.metric === 'IOPS' ? r.bytes / (w.id.includes('64k') ? 64 * KiB : 4 * KiB) : r.bytes / MiB;
          (wr.cpuUs[p] ??= []).push(((cpu1 - cpu0) * 1e6) / Math.max(1, units));
        }
        if (m.requests) {
          const after = before ? await m.requests() : undefined;
          if (!after) log(`  (no request statistics from the passthrough for ${w.id})`);
          if (before && after) {
            const reads = after.reads - before.reads;
            const ios = w.metric === 'IOPS' ? r.bytes / (w.id.includes('64k') ? 64 * KiB : 4 * KiB) : r.bytes / MiB;
            wr.requests = { readsPerIo: reads / ios, avgKiB: (after.bytes - before.bytes) / Math.max(1, reads) / KiB };
          }
        }
        // Let go of the mounted file's page cache now (not only when the next job starts), so the
        // image files stay in the page cache: a 4 GiB pass leaves 4 GiB of cached FUSE pages behind.
        await dropCache(m.file);
        (wr.values[p] ??= []).push(r.value);
        log(`  ${sc.id} ${w.id} ${p}: ${r.value.toFixed(w.metric === 'IOPS' ? 0 : 1)} ${w.metric}${r.p50us !== undefined ? ` (p50 ${r.p50us.toFixed(0)} µs)` : ''}`);
      }
    }
    for (const [p, m] of mounted) {
      const mem = m.pid ? memOf(m.pid) : undefined;
      if (mem) (into.rssKiB[p] ??= []).push(mem.rssKiB);
    }
  } finally {
    for (const m of mounted.values()) await m.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// qcow-export against qemu-img convert

interface ExportView {
  id: string;
  title: string;
  image: string;
  snapshot?: string;
}

async function runExports(set: ImageSet, rounds: number, results: BenchResults): Promise<void> {
  const views: ExportView[] = [
    { id: 'full', title: `active view of full.qcow2 (${fmtSize(fs.statSync(set.fullRaw).size)}, all data)`, image: set.full },
    { id: 'snapshot', title: 'snapshot s1 of snap.qcow2 (1 GiB)', image: set.snap, snapshot: 's1' },
    { id: 'frag', title: 'active view of frag.qcow2 (2 GiB, shuffled clusters)', image: set.frag },
    { id: 'zlib', title: 'active view of zlib.qcow2 (1 GiB, zlib)', image: set.zlib },
    { id: 'zstd', title: 'active view of zstd.qcow2 (1 GiB, zstd)', image: set.zstd },
  ];
  // Same destination for both: a file on tmpfs (RAM), so the figure is the tool, not a disk.
  const shm = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(shm, 'qcow-bench-export-'));
  const undo = atCleanUp(() => fs.rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'out.raw');
  const qcowExport = path.join(REPO, 'dist/cli/qcow-export.js');
  try {
    for (let round = 0; round < rounds; round++) {
      for (const v of views) {
        const tools: [string, () => Promise<number>][] = [
          [
            'qcow-export',
            async () => (await runOk(qcowExport, ['-q', ...(v.snapshot ? ['--snapshot', v.snapshot] : []), v.image, out], { timeoutMs: 600_000 })).ms,
          ],
          [
            'qemu-img convert',
            async () => (await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', ...(v.snapshot ? ['-l', `snapshot.name=${v.snapshot}`] : []), v.image, out], { timeoutMs: 600_000 })).ms,
          ],
        ];
        const er = (results.exports[v.id] ??= { title: v.title, seconds: {} });
        for (const [name, go] of rotate(tools, round)) {
          fs.rmSync(out, { force: true });
          await warm(v.image);
          const ms = await go();
          fs.rmSync(out, { force: true });
          (er.seconds[name] ??= []).push(ms / 1000);
          log(`  export ${v.id} ${name}: ${(ms / 1000).toFixed(2)} s`);
        }
        // The digest alone: ours reads the view (nothing written to /dev/null); QEMU's way is convert and
        // sha256sum; and sha256sum of QEMU's raw output alone (page cache warm), the floor of that way.
        const hashTools: [string, () => Promise<number>][] = [
          ['qcow-export --hash (/dev/null)', async () => (await runOk(qcowExport, ['-q', '--hash', 'sha256', ...(v.snapshot ? ['--snapshot', v.snapshot] : []), v.image, '/dev/null'], { timeoutMs: 600_000 })).ms],
          [
            'qemu-img convert + sha256sum',
            async () =>
              (await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', ...(v.snapshot ? ['-l', `snapshot.name=${v.snapshot}`] : []), v.image, out], { timeoutMs: 600_000 })).ms +
              (await runOk('sha256sum', [out], { timeoutMs: 600_000 })).ms,
          ],
        ];
        for (const [name, go] of rotate(hashTools, round)) {
          fs.rmSync(out, { force: true });
          await warm(v.image);
          const ms = await go();
          (er.seconds[name] ??= []).push(ms / 1000);
          log(`  export ${v.id} ${name}: ${(ms / 1000).toFixed(2)} s`);
          if (name === 'qemu-img convert + sha256sum') {
            // QEMU's output is in the page cache now: the hash alone.
            const alone = (await runOk('sha256sum', [out], { timeoutMs: 600_000 })).ms;
            (er.seconds['sha256sum (raw file)'] ??= []).push(alone / 1000);
            log(`  export ${v.id} sha256sum (raw file): ${(alone / 1000).toFixed(2)} s`);
          }
          fs.rmSync(out, { force: true });
        }
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    undo();
  }
}

// ---------------------------------------------------------------------------------------------
// Memory and mount time against disk size and snapshot count

async function runMemory(set: ImageSet, rounds: number, results: BenchResults): Promise<void> {
  for (const img of set.mem) {
    const mr = (results.memory[img.name] ??= { file: path.basename(img.file), size: img.size, snapshots: img.snapshots, imageBytes: fs.statSync(img.file).size, peers: {} });
    await warm(img.file);
    for (let round = 0; round < rounds; round++) {
      for (const p of rotate(['ours', 'qcowmount', 'qsd'] as PeerName[], round)) {
        const req = { image: img.file, tag: `mem-${path.basename(img.file, '.qcow2')}` };
        const pr = (mr.peers[p] ??= { mountMs: [], rssMountedKiB: [], rssAfterReadsKiB: [], filesRead: [] });
        let m: Mounted;
        try {
          // Mount time is short and noisy on a loaded machine: three mounts per round, the last one kept.
          for (let k = 0; k < 2; k++) {
            const t = await mountPeer(p, req);
            pr.mountMs.push(t.mountMs);
            await t.stop();
          }
          m = await mountPeer(p, req);
        } catch (err) {
          log(`  memory ${img.name} ${p}: ${(err as Error).message.split('\n')[0]}`);
          continue;
        }
        try {
          pr.mountMs.push(m.mountMs);
          pr.rssMountedKiB.push(memOf(m.pid)?.rssKiB ?? NaN);
          // Read 64 KiB at 4 places in every file of the mount (every snapshot for ours): the caches fill.
          const dir = path.dirname(m.file);
          const files = p === 'ours' ? [m.file, ...fs.readdirSync(path.join(dir, 'snapshots')).map((f) => path.join(dir, 'snapshots', f))] : [m.file];
          const buf = Buffer.alloc(64 * KiB);
          for (const f of files) {
            const fd = fs.openSync(f, 'r');
            try {
              const size = fs.fstatSync(fd).size;
              for (const at of [0, 0.3, 0.6, 0.99]) fs.readSync(fd, buf, 0, buf.length, Math.floor((size * at) / (64 * KiB)) * 64 * KiB);
            } finally {
              fs.closeSync(fd);
            }
          }
          pr.filesRead.push(files.length);
          pr.rssAfterReadsKiB.push(memOf(m.pid)?.rssKiB ?? NaN);
          log(`  memory ${img.name} ${p}: mount ${m.mountMs.toFixed(0)} ms, RSS ${pr.rssMountedKiB.at(-1)} KiB -> ${pr.rssAfterReadsKiB.at(-1)} KiB after reading ${files.length} files`);
        } finally {
          await m.stop();
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Where the time goes: one pass with `perf stat` counting each daemon's context switches

async function runDiagnostics(sc: Scenario, opt: RunOptions, results: BenchResults): Promise<void> {
  const mounted = new Map<PeerName, Mounted>();
  try {
    for (const p of PEERS) if (sc.targets[p] && !results.scenarios[sc.id]?.excluded[p]) mounted.set(p, await mountPeer(p, sc.targets[p]!));
    const size = fs.statSync([...mounted.values()][0]!.file).size;
    for (const w of [WORKLOADS.rand4k1, WORKLOADS.rand4k4, WORKLOADS.seq1m]) {
      for (const [p, m] of mounted) {
        const stop = countSwitches(m.pid);
        await sleep(200); // perf attaches to every thread
        const c0 = cpuSeconds(m.pid);
        const r = await w.run(m.file, size, { ...opt, seconds: Math.min(opt.seconds, 3), seqBytes: Math.min(opt.seqBytes, 2 * GiB) });
        const c1 = cpuSeconds(m.pid);
        const switches = await stop();
        const units = w.metric === 'IOPS' ? r.bytes / (4 * KiB) : r.bytes / (128 * KiB);
        const d = ((results.diagnostics[w.id] ??= { title: w.title, metric: w.metric, peers: {} }).peers[p] = {
          value: r.value,
          switchesPerRequest: switches / units,
          cpuUsPerRequest: c0 !== undefined && c1 !== undefined ? ((c1 - c0) * 1e6) / units : NaN,
        });
        log(`  diagnostics ${w.id} ${p}: ${r.value.toFixed(0)} ${w.metric}, ${d.switchesPerRequest.toFixed(2)} context switches and ${d.cpuUsPerRequest.toFixed(0)} µs CPU per request`);
      }
    }
  } finally {
    for (const m of mounted.values()) await m.stop();
  }
}

// ---------------------------------------------------------------------------------------------

async function waitQuiet(minutes: number): Promise<void> {
  if (minutes <= 0) return;
  const deadline = Date.now() + minutes * 60_000;
  for (;;) {
    const [one] = loadAverage();
    if (one < 1.5) return;
    if (Date.now() > deadline) {
      log(`load average still ${one.toFixed(2)} after ${minutes} min: running anyway (the results say so)`);
      return;
    }
    log(`load average ${one.toFixed(2)}: waiting for < 1.5 (up to ${Math.ceil((deadline - Date.now()) / 60_000)} more min)`);
    await sleep(60_000);
  }
}

function gitDescribe(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: REPO, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${head} + uncommitted changes in src/` : head;
  } catch {
    return 'unknown';
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  installCleanUpHandlers();
  const started = Date.now();
  await ensureTools();
  fs.mkdirSync(MOUNTS, { recursive: true });
  fs.mkdirSync(STATE, { recursive: true, mode: 0o700 });
  if (!fs.existsSync(path.join(REPO, 'dist/cli/qcow-mount.js'))) throw new Error('dist/ is missing: run `npm run build` (npm run bench does)');

  const sizes: Sizes = { ...DEFAULT_SIZES };
  const set = await buildImages(sizes);
  await waitQuiet(args.waitQuietMinutes);

  const opt: RunOptions = { seconds: args.seconds, seqBytes: args.seqBytes };
  const results: BenchResults = {
    date: new Date().toISOString(),
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`,
    commit: gitDescribe(),
    machine: machine(),
    settings: {
      rounds: args.rounds,
      randomSeconds: opt.seconds,
      sequentialWindow: opt.seqBytes >= ALL_SEQ_BYTES ? 'whole file' : `${fmtSize(opt.seqBytes)} per job, at offset round x ${fmtSize(opt.seqBytes)} (clipped)`,
      quick: args.quick,
    },
    load: [],
    residency: {},
    residencyAfter: {},
    scenarios: {},
    exports: {},
    memory: {},
    diagnostics: {},
    durationSeconds: 0,
  };
  results.load.push({ when: 'start', avg: loadAverage() });

  const all = scenarios(set).filter((s) => wanted(args, s.id));
  for (const sc of all) {
    if (args.peers) for (const p of PEERS) if (!args.peers.has(p)) delete sc.targets[p];
    if (!args.peers) delete sc.targets['ours-uring']; // opt-in: it flips /sys/module/fuse/parameters/enable_uring
    if (args.workloads) sc.workloads = sc.workloads.filter((w) => args.workloads!.has(w.id));
  }
  for (const sc of all) results.scenarios[sc.id] = { title: sc.title, excluded: {}, mountMs: {}, rssKiB: {}, workloads: {} };
  const images = [...filesToWarm(set)];
  for (let round = 0; round < args.rounds; round++) {
    if (all.length === 0) break;
    log(`round ${round + 1}/${args.rounds} (load ${loadAverage().join(' ')})`);
    // Images are read into the page cache right before each scenario and each workload (warm), not
    // all at once here: 12 GiB of images at once would only push each other out on a shared machine.
    for (const sc of all) await runScenario(sc, round, opt, results.scenarios[sc.id]!);
    for (const f of images) {
      const r = await residentFraction(f);
      if (r !== undefined) (results.residencyAfter[path.basename(f)] ??= []).push(r);
    }
    results.load.push({ when: `after round ${round + 1}`, avg: loadAverage() });
  }
  if (wanted(args, 'export')) {
    log('qcow-export against qemu-img convert');
    await runExports(set, args.rounds, results);
    results.load.push({ when: 'after exports', avg: loadAverage() });
  }
  if (wanted(args, 'memory')) {
    log('memory and mount time against disk size and snapshot count');
    await runMemory(set, args.rounds, results);
    results.load.push({ when: 'after memory', avg: loadAverage() });
  }
  if (wanted(args, 'volume')) {
    log('partition files and the metadata diff (scripts/bench/volume-diff.ts)');
    results.volume = await benchVolume(args.rounds);
    results.load.push({ when: 'after volume', avg: loadAverage() });
  }
  if (wanted(args, 'guest-ram')) {
    log('guest RAM from a VM state: sequential .ram against .vmstate');
    results.guestRam = await benchGuestRam(Math.max(3, args.rounds));
    results.load.push({ when: 'after guest-ram', avg: loadAverage() });
  }
  if (wanted(args, 'crypt')) {
    log('encrypted view: LUKS against the same view unencrypted and against qemu-storage-daemon');
    fs.mkdirSync(path.dirname(args.out), { recursive: true });
    await runCryptBench(args.rounds, opt, `${args.out}-crypt`);
    results.load.push({ when: 'after crypt', avg: loadAverage() });
  }
  const full = all.find((sc) => sc.id === 'full');
  if (wanted(args, 'diagnostics') && full && have('perf')) {
    log('where the time goes: context switches per request (perf stat)');
    await runDiagnostics(full, opt, results);
  }
  // Images read over HTTP (scripts/bench/remote.ts): against QEMU's curl driver, without and with latency.
  let remoteMd = '';
  if (wanted(args, 'remote')) {
    log('remote images: qcow-mount/qcow-export URL against QEMU\'s curl driver');
    const remoteOpt = { rounds: args.rounds, seconds: args.seconds, latencies: [0, 20], netem: false, cacheSize: '256M' };
    const rows = await benchRemote(remoteOpt);
    (results as BenchResults & { remote?: unknown }).remote = rows;
    remoteMd = `\n${renderRemote(rows, remoteOpt)}`;
    results.load.push({ when: 'after remote', avg: loadAverage() });
  }
  results.durationSeconds = Math.round((Date.now() - started) / 1000);

  fs.mkdirSync(path.dirname(args.out), { recursive: true });
  fs.writeFileSync(`${args.out}.json`, `${JSON.stringify(results, null, 2)}\n`);
  fs.writeFileSync(`${args.out}.md`, renderMarkdown(results) + remoteMd);
  process.stdout.write(renderConsole(results));
  log(`wrote ${path.relative(process.cwd(), args.out)}.md and .json in ${results.durationSeconds} s; images stay in ${path.relative(process.cwd(), IMAGES)}`);
}

main().then(
  () => {
    cleanUpAll();
    process.exit(0);
  },
  (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
    cleanUpAll();
    process.exit(1);
  },
);
