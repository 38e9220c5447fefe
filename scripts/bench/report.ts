/** The bench's results: the JSON shape, the goals of issue 4, and the Markdown / console tables. */
import type { VolumeBenchResult } from './volume-diff.js';
import type { PeerName } from './peers.js';
import type { Metric } from './workloads.js';
import { median } from './util.js';

export interface WorkloadResult {
  title: string;
  metric: Metric;
  /** One figure per round, per peer. */
  values: Partial<Record<PeerName, number[]>>;
  /** Daemon CPU time (user + system, all threads) per MiB (sequential) or per I/O (random), in µs. */
  cpuUs: Partial<Record<PeerName, number[]>>;
  /** The passthrough's FUSE read requests per I/O and their mean size (last round). */
  requests?: { readsPerIo: number; avgKiB: number };
}

export interface ScenarioResult {
  title: string;
  /** Peers that could not serve the view (cannot mount it, or serve other bytes than QEMU). */
  excluded: Partial<Record<PeerName, string>>;
  mountMs: Partial<Record<PeerName, number[]>>;
  /** Daemon RSS after the scenario's workloads. */
  rssKiB: Partial<Record<PeerName, number[]>>;
  workloads: Record<string, WorkloadResult>;
}

export interface ExportResult {
  title: string;
  seconds: Record<string, number[]>;
}

export interface MemoryResult {
  file: string;
  size: number;
  snapshots: number;
  imageBytes: number;
  peers: Partial<Record<PeerName, { mountMs: number[]; rssMountedKiB: number[]; rssAfterReadsKiB: number[]; filesRead: number[] }>>;
}

export interface BenchResults {
  date: string;
  command: string;
  commit: string;
  machine: Record<string, string>;
  settings: Record<string, unknown>;
  load: { when: string; avg: [number, number, number] }[];
  /** Fraction of each image file in the page cache after warming, per round. */
  residency: Record<string, number[]>;
  /** The same at the end of each round: did the workloads push the images out? */
  residencyAfter: Record<string, number[]>;
  scenarios: Record<string, ScenarioResult>;
  exports: Record<string, ExportResult>;
  memory: Record<string, MemoryResult>;
  /** Partition files vs the same range of active.raw; the metadata diff vs qemu-img compare (scripts/bench/volume-diff.ts). */
  volume?: VolumeBenchResult;
  /** Guest RAM from a VM state: sequential reads of .ram against .vmstate, through the library (medians). */
  guestRam?: { vmStateBytes: number; ramBytes: number; indexSeconds: number; indexBytes: number; vmstateMBs: number; ramMBs: number };
  /** One pass with perf stat on each daemon: context switches and CPU per FUSE request (4 KiB or 128 KiB). */
  diagnostics: Record<string, { title: string; metric: Metric; peers: Partial<Record<PeerName, { value: number; switchesPerRequest: number; cpuUsPerRequest: number }>> }>;
  durationSeconds: number;
}

const PEER_TITLE: Record<PeerName, string> = {
  ours: 'qcow-mount (native)',
  'ours-dio': 'qcow-mount (native, -o direct_io)',
  'ours-uring': 'qcow-mount (native, -o fuse_uring)',
  compat: 'qcow-mount (compat: fuse-native)',
  qcowmount: 'qcowmount',
  qsd: 'qemu-storage-daemon',
  passthrough: 'fuse-native passthrough',
};
const OTHERS: PeerName[] = ['ours-dio', 'ours-uring', 'compat', 'qcowmount', 'qsd', 'passthrough'];
/** qcow-mount in its opt-in modes: also compared with qcowmount directly. */
const VARIANTS: PeerName[] = ['ours-dio', 'ours-uring'];

/** Median over rounds of base/peer (base: ours), paired round by round (same round, same conditions). */
export function ratio(values: Partial<Record<PeerName, number[]>>, peer: PeerName, base: PeerName = 'ours'): { med: number; min: number; max: number } | undefined {
  const a = values[base];
  const b = values[peer];
  if (!a || !b) return undefined;
  const n = Math.min(a.length, b.length);
  if (n === 0) return undefined;
  const rs = Array.from({ length: n }, (_, i) => a[i]! / b[i]!);
  return { med: median(rs), min: Math.min(...rs), max: Math.max(...rs) };
}

function fmtNum(x: number, metric: Metric | 'ms' | 'MiB' | 'µs'): string {
  if (!Number.isFinite(x)) return '–';
  if (metric === 'µs') return `${x.toFixed(0)} µs`;
  if (metric === 'IOPS') return x >= 10000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0);
  if (metric === 'MB/s') return x >= 1000 ? `${(x / 1000).toFixed(2)} GB/s` : `${x.toFixed(0)} MB/s`;
  if (metric === 's') return `${x.toFixed(2)} s`;
  if (metric === 'ms') return `${x.toFixed(0)} ms`;
  return `${x.toFixed(0)} MiB`;
}

function cell(xs: number[] | undefined, metric: Metric | 'ms' | 'MiB' | 'µs'): string {
  if (!xs || xs.length === 0) return 'n/a';
  const m = fmtNum(median(xs), metric);
  if (xs.length === 1) return m;
  return `${m} (${fmtNum(Math.min(...xs), metric)}–${fmtNum(Math.max(...xs), metric)})`;
}

function ratioCell(r: ReturnType<typeof ratio>): string {
  if (!r) return 'n/a';
  return r.min === r.max ? `${r.med.toFixed(2)}x` : `**${r.med.toFixed(2)}x** (${r.min.toFixed(2)}–${r.max.toFixed(2)})`;
}

interface Goal {
  goal: string;
  measured: string;
  target: number;
  value: number | undefined;
  /** "As close as the design allows": reported, not a pass/fail line. */
  soft?: boolean;
}

export function goals(r: BenchResults): Goal[] {
  const g: Goal[] = [];
  const wl = (sc: string, w: string) => r.scenarios[sc]?.workloads[w];
  const add = (goal: string, sc: string, w: string, peer: PeerName, target: number, soft = false, base: PeerName = 'ours') => {
    const x = wl(sc, w);
    const rr = x ? ratio(x.values, peer, base) : undefined;
    const why = r.scenarios[sc]?.excluded[peer] ?? r.scenarios[sc]?.excluded[base];
    g.push({ goal, measured: `${sc} / ${w}: ${base}/${peer}${why ? ` (${why})` : ''}`, target, value: rr?.med, soft });
  };
  for (const sc of ['full', 'snapshot']) {
    add(`Sequential read (${sc === 'full' ? 'active.raw' : 'a snapshot'}) >= 1.0x qcowmount`, sc, 'seq-1m', 'qcowmount', 1.0);
    add(`Sequential read (${sc === 'full' ? 'active.raw' : 'a snapshot'}) >= 1.5x qemu-storage-daemon`, sc, 'seq-1m', 'qsd', 1.5);
  }
  add('Random 4 KiB, 1 reader >= 1.0x qemu-storage-daemon', 'full', 'rand-4k-1', 'qsd', 1.0);
  add('Random 4 KiB, 4 readers >= 1.0x qemu-storage-daemon', 'full', 'rand-4k-4', 'qsd', 1.0);
  add('Random 4 KiB, 1 reader: as close to qcowmount as the design allows', 'full', 'rand-4k-1', 'qcowmount', 1.0, true);
  add('Random 4 KiB, 4 readers: as close to qcowmount as the design allows', 'full', 'rand-4k-4', 'qcowmount', 1.0, true);
  // The native back-end (issue 14): the data path in C.
  for (const sc of ['full', 'snapshot']) {
    add(`Native: sequential 1 MiB (${sc === 'full' ? 'active.raw' : 'a snapshot'}) >= 1.5x qcowmount`, sc, 'seq-1m', 'qcowmount', 1.5);
  }
  add('Native: dd 1 MiB (active.raw) >= 1.5x qcowmount', 'full', 'dd-1m', 'qcowmount', 1.5);
  add('Native: random 4 KiB, 1 reader >= 2x qcowmount', 'full', 'rand-4k-1', 'qcowmount', 2.0);
  add('Native: random 4 KiB, 4 readers >= 2x qcowmount', 'full', 'rand-4k-4', 'qcowmount', 2.0);
  add('Native: random 4 KiB, 1 reader >= 2x qcowmount (snapshot)', 'snapshot', 'rand-4k-1', 'qcowmount', 2.0);
  add('Native: fragmented sequential >= 1.2x qcowmount', 'frag', 'seq-1m', 'qcowmount', 1.2);
  // The same goals with -o direct_io (opt-in: no page cache, small reads each a round trip; README).
  if (wl('full', 'seq-1m')?.values['ours-dio']) {
    add('Native, -o direct_io: sequential 1 MiB (active.raw) >= 1.5x qcowmount', 'full', 'seq-1m', 'qcowmount', 1.5, false, 'ours-dio');
    add('Native, -o direct_io: sequential 1 MiB (a snapshot) >= 1.5x qcowmount', 'snapshot', 'seq-1m', 'qcowmount', 1.5, false, 'ours-dio');
    add('Native, -o direct_io: dd 1 MiB (active.raw) >= 1.5x qcowmount', 'full', 'dd-1m', 'qcowmount', 1.5, false, 'ours-dio');
    add('Native, -o direct_io: random 4 KiB, 1 reader >= 2x qcowmount', 'full', 'rand-4k-1', 'qcowmount', 2.0, false, 'ours-dio');
    add('Native, -o direct_io: random 4 KiB, 4 readers >= 2x qcowmount', 'full', 'rand-4k-4', 'qcowmount', 2.0, false, 'ours-dio');
  }
  // And with -o fuse_uring (opt-in: FUSE over io_uring, needs enable_uring; bench/NOTES.md).
  if (wl('full', 'seq-1m')?.values['ours-uring']) {
    add('Native, -o fuse_uring: sequential 1 MiB (active.raw) >= 1.5x qcowmount', 'full', 'seq-1m', 'qcowmount', 1.5, false, 'ours-uring');
    add('Native, -o fuse_uring: dd 1 MiB (active.raw) >= 1.5x qcowmount', 'full', 'dd-1m', 'qcowmount', 1.5, false, 'ours-uring');
    add('Native, -o fuse_uring: random 4 KiB, 1 reader >= 2x qcowmount', 'full', 'rand-4k-1', 'qcowmount', 2.0, false, 'ours-uring');
    add('Native, -o fuse_uring: random 4 KiB, 4 readers >= 2x qcowmount', 'full', 'rand-4k-4', 'qcowmount', 2.0, false, 'ours-uring');
  }
  add('Native: zlib sequential no slower than compat', 'zlib', 'seq-1m', 'compat', 0.95);
  add('Native: zstd sequential no slower than compat', 'zstd', 'seq-1m', 'compat', 0.95);
  add('zlib sequential >= 1.0x qcowmount', 'zlib', 'seq-1m', 'qcowmount', 1.0);
  add('zlib sequential >= 1.0x qemu-storage-daemon', 'zlib', 'seq-1m', 'qsd', 1.0);
  add('zstd sequential >= 1.0x qemu-storage-daemon', 'zstd', 'seq-1m', 'qsd', 1.0);
  for (const [id, e] of Object.entries(r.exports)) {
    const ours = e.seconds['qcow-export'];
    const theirs = e.seconds['qemu-img convert'];
    let v: number | undefined;
    if (ours && theirs) {
      const n = Math.min(ours.length, theirs.length);
      v = median(Array.from({ length: n }, (_, i) => theirs[i]! / ours[i]!));
    }
    g.push({ goal: `qcow-export >= 1.0x qemu-img convert -O raw (${id})`, measured: `${e.title}: qemu-img time / qcow-export time`, target: 1.0, value: v });
    const hashOurs = e.seconds['qcow-export --hash (/dev/null)'];
    const hashAlone = e.seconds['sha256sum (raw file)'];
    if (hashOurs && hashAlone) {
      const n = Math.min(hashOurs.length, hashAlone.length);
      const hv = median(Array.from({ length: n }, (_, i) => hashAlone[i]! / hashOurs[i]!));
      g.push({ goal: `qcow-export --hash (no write) >= 1.0x sha256sum of the raw file (${id})`, measured: `${e.title}: sha256sum time / qcow-export --hash time`, target: 1.0, value: hv });
    }
  }
  const full = r.scenarios.full;
  if (full) {
    for (const [id, w] of Object.entries(full.workloads)) {
      const rr = ratio(w.values, 'passthrough');
      g.push({ goal: `Within 80% of the fuse-native passthrough (${w.title})`, measured: `full / ${id}: ours/passthrough`, target: 0.8, value: rr?.med });
    }
  }
  const big = Object.values(r.memory).find((m) => m.size >= 2 ** 40 && m.snapshots >= 500);
  const small = Object.values(r.memory).find((m) => m.size < 2 ** 40 && m.snapshots === 1);
  if (big?.peers.ours) {
    const rss = median(big.peers.ours.rssAfterReadsKiB) / 1024;
    g.push({ goal: 'Daemon memory < 200 MiB, default caches, 2 TiB image with 500 snapshots', measured: `RSS after reading every file (MiB), as 200/RSS`, target: 1.0, value: 200 / rss });
    if (small?.peers.ours) {
      // The fastest of the mounts (3 per round): on a shared machine the median carries other work's noise.
      const t = Math.min(...big.peers.ours.mountMs) / Math.min(...small.peers.ours.mountMs);
      g.push({
        goal: 'Mount time does not grow with disk size or snapshot count (beyond reading the snapshot table)',
        measured: `fastest mount, 2 TiB/500 snapshots vs 1 GiB/1 snapshot (${Math.min(...big.peers.ours.mountMs).toFixed(0)} vs ${Math.min(...small.peers.ours.mountMs).toFixed(0)} ms), as 1/ratio (>= 0.8: within 25%)`,
        target: 0.8,
        value: 1 / t,
      });
    }
  }
  return g;
}

export function renderMarkdown(r: BenchResults): string {
  const L: string[] = [];
  L.push(`# qcow-mount benchmark — ${r.settings.quick ? 'quick run' : 'baseline of record'}`);
  L.push('');
  L.push(`Run ${r.date} with \`${r.command}\` on commit ${r.commit}; ${r.durationSeconds} s in all.`);
  L.push('');
  L.push('## Machine');
  L.push('');
  L.push('| | |');
  L.push('|---|---|');
  for (const [k, v] of Object.entries(r.machine)) L.push(`| ${k} | ${v} |`);
  L.push(`| load average (1/5/15 min) | ${r.load.map((l) => `${l.when}: ${l.avg.join(' ')}`).join('; ')} |`);
  L.push(`| settings | ${Object.entries(r.settings).map(([k, v]) => `${k}=${String(v)}`).join(', ')} |`);
  const after = Object.entries(r.residencyAfter ?? {}).map(([f, xs]) => `${f} ${(Math.min(...xs) * 100).toFixed(0)}%`);
  if (after.length) L.push(`| image files still in the page cache at the end of a round (min; each is read again right before every workload that uses it) | ${after.join(', ')} |`);
  L.push('');
  L.push('Figures are medians over rounds (min–max in brackets); ratios are ours/peer per round, then the median');
  L.push('(higher is better for us). MB/s = 10^6 bytes/s. The load averages include the bench\'s own fio and daemons (about 2).');
  L.push('');

  L.push('## Goals (issue 4)');
  L.push('');
  L.push('| goal | measured | median | target | met |');
  L.push('|---|---|---|---|---|');
  for (const g of goals(r)) {
    const v = g.value === undefined ? 'n/a' : `${g.value.toFixed(2)}x`;
    const met = g.value === undefined ? '–' : g.value >= g.target ? 'yes' : g.soft ? 'below (best effort)' : 'no';
    L.push(`| ${g.goal} | ${g.measured} | ${v} | ${g.target.toFixed(1)}x | ${met} |`);
  }
  L.push('');

  for (const [id, sc] of Object.entries(r.scenarios)) {
    L.push(`## ${id}: ${sc.title}`);
    L.push('');
    const peers = (['ours', ...OTHERS] as PeerName[]).filter((p) => Object.values(sc.workloads).some((w) => w.values[p]));
    const others = peers.filter((p) => p !== 'ours');
    // The opt-in modes (-o direct_io, -o fuse_uring) against qcowmount too, when both ran.
    const modes = VARIANTS.filter((v) => peers.includes(v) && peers.includes('qcowmount'));
    L.push(`| workload | ${peers.map((p) => PEER_TITLE[p]).join(' | ')} | ${others.map((p) => `ours/${p}`).join(' | ')}${modes.map((v) => ` | ${v}/qcowmount`).join('')} |`);
    L.push(`|---|${peers.map(() => '---').join('|')}|${others.map(() => '---').join('|')}${modes.map(() => '|---').join('')}|`);
    for (const w of Object.values(sc.workloads)) {
      const extra = modes.map((v) => ` | ${ratioCell(ratio(w.values, 'qcowmount', v))}`).join('');
      L.push(`| ${w.title} (${w.metric}) | ${peers.map((p) => cell(w.values[p], w.metric)).join(' | ')} | ${others.map((p) => ratioCell(ratio(w.values, p))).join(' | ')}${extra} |`);
    }
    for (const w of Object.values(sc.workloads)) {
      const unit = w.metric === 'IOPS' ? 'per I/O' : 'per MiB';
      L.push(`| daemon CPU ${unit}: ${w.title} | ${peers.map((p) => cell(w.cpuUs[p], 'µs')).join(' | ')} | |`);
    }
    L.push(`| mount time | ${peers.map((p) => cell(sc.mountMs[p], 'ms')).join(' | ')} | |`);
    L.push(`| daemon RSS after the run | ${peers.map((p) => cell(sc.rssKiB[p]?.map((k) => k / 1024), 'MiB')).join(' | ')} | |`);
    L.push('');
    for (const [p, why] of Object.entries(sc.excluded)) L.push(`- ${PEER_TITLE[p as PeerName]} left out: ${why}`);
    const req = Object.entries(sc.workloads).filter(([, w]) => w.requests);
    if (req.length) {
      L.push(`- FUSE read requests the passthrough saw: ${req.map(([id, w]) => `${id} ${w.requests!.readsPerIo.toFixed(2)} per I/O (mean ${w.requests!.avgKiB.toFixed(0)} KiB)`).join('; ')}`);
    }
    L.push('');
  }

  if (Object.keys(r.exports).length) {
    L.push('## qcow-export against qemu-img convert -O raw (output: a file on tmpfs for both)');
    L.push('');
    L.push('| view | qcow-export | qemu-img convert | speed ratio (qemu-img time / ours) |');
    L.push('|---|---|---|---|');
    for (const e of Object.values(r.exports)) {
      const a = e.seconds['qcow-export'];
      const b = e.seconds['qemu-img convert'];
      let rr = 'n/a';
      if (a && b) {
        const n = Math.min(a.length, b.length);
        const rs = Array.from({ length: n }, (_, i) => b[i]! / a[i]!);
        rr = `**${median(rs).toFixed(2)}x** (${Math.min(...rs).toFixed(2)}–${Math.max(...rs).toFixed(2)})`;
      }
      L.push(`| ${e.title} | ${cell(a, 's')} | ${cell(b, 's')} | ${rr} |`);
    }
    L.push('');
  }

  if (Object.values(r.exports).some((e) => e.seconds['qcow-export --hash (/dev/null)'])) {
    L.push('## Digest only: `qcow-export IMAGE /dev/null --hash sha256` against QEMU\'s raw output and sha256sum (page cache warm)');
    L.push('');
    L.push('| view | qcow-export --hash (no write) | qemu-img convert + sha256sum | sha256sum of the raw file alone |');
    L.push('|---|---|---|---|');
    for (const e of Object.values(r.exports)) {
      L.push(`| ${e.title} | ${cell(e.seconds['qcow-export --hash (/dev/null)'], 's')} | ${cell(e.seconds['qemu-img convert + sha256sum'], 's')} | ${cell(e.seconds['sha256sum (raw file)'], 's')} |`);
    }
    L.push('');
  }

  if (Object.keys(r.memory).length) {
    L.push('## Memory and mount time against disk size and snapshot count (default caches)');
    L.push('');
    L.push('RSS "after reads": after reading 64 KiB at 4 places of every file in the mount (for qcow-mount: active.raw and every snapshot).');
    L.push('');
    L.push('| image | file size | peer | mount time | RSS mounted | RSS after reads |');
    L.push('|---|---|---|---|---|---|');
    for (const [name, m] of Object.entries(r.memory)) {
      for (const [p, x] of Object.entries(m.peers)) {
        L.push(`| ${name} | ${(m.imageBytes / 2 ** 20).toFixed(1)} MiB | ${PEER_TITLE[p as PeerName]} | ${cell(x.mountMs, 'ms')} | ${cell(x.rssMountedKiB.map((k) => k / 1024), 'MiB')} | ${cell(x.rssAfterReadsKiB.map((k) => k / 1024), 'MiB')} (${x.filesRead[0]} files) |`);
      }
    }
    L.push('');
  }

  if (r.volume) {
    const v = r.volume;
    const med = median;
    L.push('## Partitions and the metadata diff');
    L.push('');
    L.push(`- Sequential read (dd, 1 MiB, page cache dropped) of active.p1: ${med(v.partitionReadMBps).toFixed(0)} MiB/s; the same 1 GiB range of active.raw: ${med(v.rawRangeReadMBps).toFixed(0)} MiB/s (medians of ${v.partitionReadMBps.length}).`);
    L.push(`- qcow-diff s1 active of a 1 TiB image (every 4th L2 span changed): ${med(v.diffSeconds).toFixed(2)} s including Node start-up, ${v.diffL2TablesRead} L2 tables read; qemu-img compare of the same views stops at its first mismatch after ${med(v.compareFirstMismatchSeconds).toFixed(2)} s, and needs ${med(v.compareWholeSeconds).toFixed(2)} s where only the last cluster differs (it reads the data).`);
    L.push('');
  }

  if (r.guestRam) {
    const g = r.guestRam;
    L.push('## Guest RAM from a VM state (.ram against .vmstate)');
    L.push('');
    L.push(`Sequential 1 MiB reads through the library, page cache warm, medians: .vmstate (${(g.vmStateBytes / 2 ** 20).toFixed(0)} MiB) ${g.vmstateMBs.toFixed(0)} MB/s, .ram (${(g.ramBytes / 2 ** 20).toFixed(0)} MiB) ${g.ramMBs.toFixed(0)} MB/s; indexing the VM state ${g.indexSeconds.toFixed(2)} s into ${g.indexBytes} bytes.`);
    L.push('');
  }

  if (Object.keys(r.diagnostics ?? {}).length) {
    L.push('## Where the time goes: daemon context switches and CPU per FUSE request');
    L.push('');
    L.push('One extra pass on the full image with `perf stat -e context-switches` attached to each daemon (all threads); perf');
    L.push('itself slows the daemons a little, so these figures are lower than the ones above. A request is 4 KiB (random) or');
    L.push('128 KiB (sequential: the kernel splits reads into 128 KiB requests).');
    L.push('');
    const peers = (['ours', ...OTHERS] as PeerName[]).filter((p) => Object.values(r.diagnostics).some((d) => d.peers[p]));
    L.push(`| workload | ${peers.map((p) => PEER_TITLE[p]).join(' | ')} |`);
    L.push(`|---|${peers.map(() => '---').join('|')}|`);
    for (const d of Object.values(r.diagnostics)) {
      L.push(`| ${d.title} | ${peers.map((p) => { const x = d.peers[p]; return x ? `${fmtNum(x.value, d.metric)}; ${x.switchesPerRequest.toFixed(2)} switches, ${x.cpuUsPerRequest.toFixed(0)} µs CPU` : 'n/a'; }).join(' | ')} |`);
    }
    L.push('');
  }

  L.push('## Method');
  L.push('');
  L.push('- Peers: qcow-mount (`dist/cli/qcow-mount.js IMAGE MNT` run as a program, as the installed command runs, background daemon), qcowmount (libqcow, C, libfuse 2), qemu-storage-daemon');
  L.push('  `--export type=fuse` (QEMU, C, libfuse 3), and `scripts/bench/passthrough.mjs`: one raw file (`qemu-img convert -O raw` output) served by');
  L.push('  fs.readSync through fuse-native with qcow-mount\'s own mount options (it mounts through dist/mount/fuse-adapter.js, so it also gets');
  L.push('  qcow-mount\'s direct read handler and adaptive polling): the Node ceiling.');
  L.push('- fio 3 `--ioengine=psync --direct=0 --invalidate=1`: buffered reads as users do them, with the mounted file\'s page cache dropped');
  L.push('  (posix_fadvise DONTNEED, which works on FUSE files) before each job; no block is read twice in a job (sequential: one pass;');
  L.push('  random: fio\'s random map; 4 readers each get their own quarter of the file), so each read is served by the daemon, not by');
  L.push('  the page cache of the mounted file. The image files themselves are read right before every workload (page cache warm;');
  L.push('  cheap when they are cached, and the machine is shared), and each mounted file\'s cache is dropped after its workload.');
  L.push('  Random jobs are time-limited (settings: randomSeconds); sequential jobs (fio and dd) read a 1 GiB window, a different');
  L.push('  one each round: 4 GiB of a mounted file in the page cache at once made the kernel reclaim memory during the read, which');
  L.push('  capped every peer alike (~700 MB/s) on this shared machine.');
  L.push('- dd: `dd iflag=nocache count=0` (drops the file\'s cache), then `dd bs=1M of=/dev/null`, timed.');
  L.push('- Every peer\'s bytes are checked against the raw file or against qemu-storage-daemon (QEMU) before timing; a peer that');
  L.push('  cannot mount a view or serves other bytes is left out of that view, with the reason.');
  L.push('- Snapshots: qcowmount and qemu-storage-daemon cannot open an internal snapshot read-only, so they read a copy of the image');
  L.push('  reverted to it with `qemu-img snapshot -a` (same clusters, same layout); qcow-mount reads snapshots/NAME.raw of the original.');
  L.push('- Peer order rotates every round.');
  L.push('');
  return `${L.join('\n')}\n`;
}

export function renderConsole(r: BenchResults): string {
  const L: string[] = [''];
  for (const [id, sc] of Object.entries(r.scenarios)) {
    L.push(`== ${id}: ${sc.title}`);
    for (const w of Object.values(sc.workloads)) {
      const parts = (['ours', ...OTHERS] as PeerName[]).filter((p) => w.values[p]).map((p) => `${p} ${cell(w.values[p], w.metric)}`);
      const rs = OTHERS.map((p) => [p, ratio(w.values, p)] as const)
        .filter(([, x]) => x)
        .map(([p, x]) => `/${p} ${x!.med.toFixed(2)}x`);
      for (const v of VARIANTS) {
        const u = ratio(w.values, 'qcowmount', v);
        if (u) rs.push(`${v}/qcowmount ${u.med.toFixed(2)}x`);
      }
      L.push(`  ${w.title.padEnd(28)} ${parts.join('  ')}   ratios: ${rs.join(' ')}`);
      const cpu = (['ours', ...OTHERS] as PeerName[]).filter((p) => w.cpuUs[p]).map((p) => `${p} ${cell(w.cpuUs[p], 'µs')}`);
      if (cpu.length) L.push(`  ${''.padEnd(28)} daemon CPU ${w.metric === 'IOPS' ? 'per I/O' : 'per MiB'}: ${cpu.join('  ')}`);
    }
    for (const [p, why] of Object.entries(sc.excluded)) L.push(`  (${p} left out: ${why})`);
  }
  for (const [id, e] of Object.entries(r.exports)) {
    L.push(`== export ${id}: qcow-export ${cell(e.seconds['qcow-export'], 's')}, qemu-img convert ${cell(e.seconds['qemu-img convert'], 's')}`);
    if (e.seconds['qcow-export --hash (/dev/null)']) L.push(`== export ${id} digest: qcow-export --hash ${cell(e.seconds['qcow-export --hash (/dev/null)'], 's')}, qemu-img convert + sha256sum ${cell(e.seconds['qemu-img convert + sha256sum'], 's')}, sha256sum alone ${cell(e.seconds['sha256sum (raw file)'], 's')}`);
  }
  for (const [name, m] of Object.entries(r.memory)) {
    const parts = Object.entries(m.peers).map(([p, x]) => `${p}: mount ${cell(x.mountMs, 'ms')}, RSS ${cell(x.rssAfterReadsKiB.map((k) => k / 1024), 'MiB')}`);
    L.push(`== memory ${name}: ${parts.join('; ')}`);
  }
  if (r.guestRam) L.push(`== guest RAM: .vmstate ${r.guestRam.vmstateMBs.toFixed(0)} MB/s, .ram ${r.guestRam.ramMBs.toFixed(0)} MB/s, indexing ${r.guestRam.indexSeconds.toFixed(2)} s`);
  L.push('');
  L.push('Goals (issue 4):');
  for (const g of goals(r)) L.push(`  [${g.value === undefined ? ' ? ' : g.value >= g.target ? ' ok' : g.soft ? ' ~ ' : 'NO '}] ${g.goal}: ${g.value === undefined ? 'n/a' : `${g.value.toFixed(2)}x`} (${g.measured})`);
  L.push('');
  return L.join('\n');
}
