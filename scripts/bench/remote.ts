/**
 * Images read over HTTP: qcow-mount URL and qcow-export URL against QEMU's curl driver on the same URL
 * (qemu-storage-daemon with an http blockdev under a FUSE export; qemu-img convert from http://), served
 * by a private nginx, without and with added latency (20 ms each way, by default).
 *
 * Latency: `tc qdisc add dev lo root netem delay 20ms` where the kernel has sch_netem and the bench is
 * allowed to slow all of loopback (--netem); otherwise a delaying TCP proxy in front of nginx
 * (latency-proxy.ts), which slows this one server and nothing else on a shared machine.
 *
 * As a script: tsx scripts/bench/remote.ts [--rounds N] [--seconds S] [--latency 0,20] [--netem]
 *   [--variants NAME=DIST,...]   (other builds' dist/ folders, alternated with this one: an A/B of a change)
 *   [--export-only]              (qcow-export and qemu-img convert only, no mounts)
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startNginx } from '../../test/support/nginx.js';
import { startLatencyProxy } from './latency-proxy.js';
import { type Mounted, MOUNTS, mountPeer } from './peers.js';
import { IMAGES } from './images.js';
import { KiB, MiB, REPO, atCleanUp, have, log, median, memOf, run, runOk, sleep, trackMount, unmountSync, untrackMount, isMounted, warm } from './util.js';
import { WORKLOADS } from './workloads.js';

const IMAGE_NAME = 'remote-256m.qcow2';
const IMAGE_SIZE = 256 * MiB;
const EXPORT_TIMEOUT_MS = 150_000;
/**
 * QEMU 7.2's curl driver hangs for good when several requests are in flight (qemu-img convert's default
 * 8 coroutines; see bench/NOTES.md): a QEMU run that takes this long is a stall, not a slow run (a whole
 * export takes at most ~7 s here even at 20 ms with one coroutine).
 */
const QEMU_STALL_MS = 40_000;
const WORKLOAD_TIMEOUT_MS = 60_000;
/**
 * QEMU's curl driver gives up on a request after 5 s by default, and under load (this 2-core machine
 * is shared) a stalled transfer then hung qemu-img convert for good: QEMU gets 120 s.
 */
const QEMU_CURL_TIMEOUT_S = 120;

export interface RemoteBenchOptions {
  rounds: number;
  seconds: number;
  /** One-way delays to add, in ms (0 = none). */
  latencies: number[];
  netem: boolean;
  /** Cache size for qcow-mount (-o remote_cache_size). */
  cacheSize: string;
  /**
   * Other builds of ours, alternated with this one in every round (A/B of a change): name -> a saved
   * dist/ folder. Their medians are logged; the table shows this build's.
   */
  variants?: Record<string, string>;
  /** Only the exports (no mounts): a short run for a change to qcow-export. */
  exportOnly?: boolean;
}

export interface RemoteRow {
  workload: string;
  latencyMs: number;
  metric: string;
  /** Medians of the runs that finished (a stalled QEMU run is left out and counted in qemuStalls). */
  ours: number;
  oursRange: [number, number];
  qemu: number;
  qemuRange: [number, number];
  /** Which QEMU configuration `qemu` is: the faster median of those that finished. */
  qemuConfig: string;
  /** Other QEMU configurations measured for the same workload, and how each fared. */
  qemuOthers: string[];
  qemuStalls: number;
  qemuRuns: number;
  /** Peak resident memory of our daemon after the workload (KiB). */
  oursHwmKiB?: number;
}

/** Random incompressible data in a qcow2 made by qemu-img (64 KiB clusters, fully allocated). */
async function buildImage(): Promise<string> {
  fs.mkdirSync(IMAGES, { recursive: true });
  const image = path.join(IMAGES, IMAGE_NAME);
  if (fs.existsSync(image)) return image;
  const raw = `${image}.tmp.raw`;
  await runOk('sh', ['-c', `head -c ${IMAGE_SIZE} /dev/urandom > '${raw}'`]);
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, `${image}.tmp`]);
  fs.rmSync(raw);
  fs.renameSync(`${image}.tmp`, image);
  return image;
}

/** qemu-storage-daemon reading the image with QEMU's curl driver, exported over FUSE. */
async function mountQsdCurl(url: string, tag: string): Promise<Mounted> {
  fs.mkdirSync(MOUNTS, { recursive: true });
  // The real path: that is what /proc/mounts shows (in a worktree bench-work is a symbolic link).
  const file = path.join(fs.realpathSync(MOUNTS), `qsd-curl-${tag}.raw`);
  if (isMounted(file)) unmountSync(file);
  fs.writeFileSync(file, '');
  trackMount(file);
  const driver = url.startsWith('https:') ? 'https' : 'http';
  const child: ChildProcess = spawn(
    'qemu-storage-daemon',
    [
      '--blockdev',
      `driver=${driver},node-name=net,url=${url},read-only=on,timeout=${QEMU_CURL_TIMEOUT_S}`,
      '--blockdev',
      'driver=qcow2,node-name=qcow2,file=net,read-only=on',
      '--export',
      `type=fuse,id=exp,node-name=qcow2,mountpoint=${file},writable=off`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const unregister = atCleanUp(() => child.kill('SIGKILL'));
  const t0 = Date.now();
  for (;;) {
    if (fs.statSync(file).size > 0) break;
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon (curl): ${stderr.trim()}`);
    if (Date.now() - t0 > 60_000) throw new Error('qemu-storage-daemon (curl) did not export within 60 s');
    await sleep(20);
  }
  return {
    peer: 'qsd',
    file,
    pid: child.pid!,
    mountMs: Date.now() - t0,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      const deadline = Date.now() + 5000;
      while (child.exitCode === null && child.signalCode === null && Date.now() < deadline) await sleep(20);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      unmountSync(file);
      untrackMount(file);
      unregister();
    },
  };
}

async function addNetem(delayMs: number): Promise<() => Promise<void>> {
  await runOk('tc', ['qdisc', 'add', 'dev', 'lo', 'root', 'netem', 'delay', `${delayMs}ms`]);
  let restored = false;
  const restore = async () => {
    if (restored) return;
    restored = true;
    await run('tc', ['qdisc', 'del', 'dev', 'lo', 'root']);
  };
  atCleanUp(() => {
    if (!restored) spawn('tc', ['qdisc', 'del', 'dev', 'lo', 'root'], { stdio: 'ignore' });
  });
  return restore;
}

export async function benchRemote(opt: RemoteBenchOptions): Promise<RemoteRow[]> {
  for (const tool of ['nginx', 'qemu-storage-daemon', 'qemu-img', 'fio']) if (!have(tool)) throw new Error(`remote bench: ${tool} is missing`);
  const image = await buildImage();
  const nginx = await startNginx(IMAGES);
  atCleanUp(() => nginx.kill());
  const rows: RemoteRow[] = [];
  try {
    for (const latency of opt.latencies) {
      let base = nginx.url;
      let undo: (() => Promise<void>) | undefined;
      let proxy: Awaited<ReturnType<typeof startLatencyProxy>> | undefined;
      if (latency > 0 && opt.netem) undo = await addNetem(latency);
      else if (latency > 0) {
        proxy = await startLatencyProxy(nginx.port, latency);
        const p = proxy;
        atCleanUp(() => p.stop());
        base = `http://127.0.0.1:${proxy.port}`;
      }
      try {
        const url = `${base}/${IMAGE_NAME}`;
        // Under latency QEMU's curl driver is slow: sequential jobs read a smaller window.
        const seqBytes = latency > 0 ? 64 * MiB : IMAGE_SIZE;
        // Per workload: each peer's figures (undefined: a QEMU run that stalled) and our peak RSS.
        const figures = new Map<string, { by: Map<string, (number | undefined)[]>; hwm: number[] }>();
        const others = new Map<string, number[]>();
        const variantNames = new Set(Object.keys(opt.variants ?? {}));
        const note = (w: string, who: string, v: number | undefined, hwm?: number) => {
          if (variantNames.has(who)) {
            const key = `${latency} ms ${who} ${w}`;
            others.set(key, [...(others.get(key) ?? []), v ?? 0]);
            return;
          }
          const f = figures.get(w) ?? { by: new Map<string, (number | undefined)[]>(), hwm: [] as number[] };
          f.by.set(who, [...(f.by.get(who) ?? []), v]);
          if (hwm !== undefined) f.hwm.push(hwm);
          figures.set(w, f);
        };
        const variants = Object.keys(opt.variants ?? {});
        const cliOf = (who: string, name: string) => (opt.variants?.[who] ? path.join(opt.variants[who], 'cli', name) : path.join(REPO, 'dist/cli', name));
        for (let round = 0; round < opt.rounds; round++) {
          const order = ['ours', ...variants, 'qemu'];
          if (round % 2) order.reverse();
          for (const who of opt.exportOnly ? [] : order) {
            // The image in the host's page cache for both peers alike: nginx serves it from memory.
            await warm(image);
            const m =
              who !== 'qemu'
                ? await mountPeer('ours', { image: url, tag: `remote-${who}-${latency}-${round}`, oursArgs: ['-o', `remote_cache_size=${opt.cacheSize}`], oursCli: cliOf(who, 'qcow-mount.js') })
                : await mountQsdCurl(url, `${latency}-${round}`);
            try {
              for (const w of [WORKLOADS.seq1m, WORKLOADS.rand4k1]) {
                // A peer that stalls for good (QEMU 7.2's curl driver did, here) is killed, which ends
                // the FUSE connection and fio with it; the workload counts as 0.
                let stalled = false;
                const timer = setTimeout(() => {
                  stalled = true;
                  process.kill(m.pid, 'SIGKILL');
                }, WORKLOAD_TIMEOUT_MS);
                try {
                  const r = await w.run(m.file, IMAGE_SIZE, { seconds: opt.seconds, seqBytes, seqOffset: round * 64 * MiB });
                  note(w.id, who, r.value, who !== 'qemu' ? memOf(m.pid)?.hwmKiB : undefined);
                  log(`remote ${latency} ms ${who} ${w.id}: ${r.value.toFixed(1)} ${w.metric}`);
                } catch (err) {
                  if (!stalled) throw err;
                  note(w.id, who, undefined);
                  log(`remote ${latency} ms ${who} ${w.id}: stalled for ${WORKLOAD_TIMEOUT_MS / 1000} s, killed (counted as a stall, not a figure)`);
                  break;
                } finally {
                  clearTimeout(timer);
                }
              }
            } finally {
              await m.stop();
            }
          }
          // Export of the whole image. QEMU twice: qemu-img convert as it comes (8 coroutines) and with
          // -m 1 (one coroutine: its curl driver then never stalled here). The first export after a
          // mount stops runs slower, whoever it is (0 ms: ours 206-367 first, 441 third; qemu-img 266
          // first, 684-1053 second): each goes first in turn.
          const all = ['ours', ...variants, 'qemu', 'qemu-m1'];
          const exporters = all.map((_, i) => all[(i + round) % all.length]!);
          for (const who of exporters) {
            const out = path.join(MOUNTS, `remote-export-${who}.raw`);
            fs.rmSync(out, { force: true });
            // Dirty pages of the previous run's output slow the next writer (here by up to 0.7 s per
            // 256 MiB): flushed first, outside the timing, for every peer alike.
            await runOk('sync', []);
            await warm(image);
            const t0 = process.hrtime.bigint();
            const qemuJson = `json:${JSON.stringify({ file: { driver: url.startsWith('https:') ? 'https' : 'http', url, timeout: QEMU_CURL_TIMEOUT_S } })}`;
            const r = !who.startsWith('qemu')
              ? await run(cliOf(who, 'qcow-export.js'), ['-q', '-f', url, out], { timeoutMs: EXPORT_TIMEOUT_MS })
              : await run('qemu-img', ['convert', ...(who === 'qemu-m1' ? ['-m', '1'] : []), '-O', 'raw', qemuJson, out], { timeoutMs: QEMU_STALL_MS });
            const s = Number(process.hrtime.bigint() - t0) / 1e9;
            fs.rmSync(out, { force: true });
            if (r.code !== 0) {
              if (!who.startsWith('qemu') || !r.signal) throw new Error(`remote ${latency} ms ${who} export failed: ${r.stderr.trim()}`);
              log(`remote ${latency} ms ${who} export stalled (killed after ${QEMU_STALL_MS / 1000} s): counted as a stall, not a figure`);
              note('export', who, undefined);
              continue;
            }
            note('export', who, IMAGE_SIZE / 1e6 / s);
            log(`remote ${latency} ms ${who} export: ${(IMAGE_SIZE / 1e6 / s).toFixed(1)} MB/s`);
          }
        }
        for (const [key, values] of others) log(`remote ${key}: median ${median(values).toFixed(1)} [${Math.min(...values).toFixed(1)}-${Math.max(...values).toFixed(1)}]`);
        for (const [w, f] of figures) {
          const done = (who: string) => (f.by.get(who) ?? []).filter((v): v is number => v !== undefined);
          const ours = done('ours');
          // The QEMU configuration to compare with: the faster median of those that finished at all.
          const configs = [...f.by.keys()].filter((k) => k.startsWith('qemu'));
          const best = configs.filter((k) => done(k).length > 0).sort((a, b) => median(done(b)) - median(done(a)))[0];
          const describe = (k: string) => `${QEMU_CONFIG[k] ?? k}: ${done(k).length ? `${median(done(k)).toFixed(1)} [${Math.min(...done(k)).toFixed(1)}-${Math.max(...done(k)).toFixed(1)}]` : '-'}, stalled ${f.by.get(k)!.length - done(k).length} of ${f.by.get(k)!.length}`;
          const q = best ? done(best) : [0];
          rows.push({
            workload: w,
            latencyMs: latency,
            metric: w === 'rand-4k-1' ? 'IOPS' : 'MB/s',
            ours: median(ours),
            oursRange: [Math.min(...ours), Math.max(...ours)],
            qemu: median(q),
            qemuRange: [Math.min(...q), Math.max(...q)],
            qemuConfig: best ? (QEMU_CONFIG[best] ?? best) : 'every run stalled',
            qemuOthers: configs.map(describe),
            qemuStalls: configs.reduce((n, k) => n + f.by.get(k)!.length - done(k).length, 0),
            qemuRuns: configs.reduce((n, k) => n + f.by.get(k)!.length, 0),
            oursHwmKiB: f.hwm.length ? Math.max(...f.hwm) : undefined,
          });
          log(`remote ${latency} ms ${w}: ours ${median(ours).toFixed(1)} [${Math.min(...ours).toFixed(1)}-${Math.max(...ours).toFixed(1)}]; ${configs.map(describe).join('; ')}`);
        }
      } finally {
        proxy?.stop();
        await undo?.();
      }
    }
  } finally {
    await nginx.stop();
  }
  return rows;
}

/** The QEMU configurations, as the table names them. */
const QEMU_CONFIG: Record<string, string> = {
  qemu: 'QEMU curl (qsd / qemu-img convert)',
  'qemu-m1': 'qemu-img convert -m 1',
};

export function renderRemote(rows: RemoteRow[], opt: RemoteBenchOptions): string {
  const lines = [
    '## Remote images (HTTP): qcow-mount / qcow-export URL vs QEMU\'s curl driver',
    '',
    `Image: ${IMAGE_SIZE / MiB} MiB of random data in a qcow2 (64 KiB clusters) served by nginx on 127.0.0.1; latency added ${opt.netem ? 'with tc netem on lo' : 'by a delaying TCP proxy (each direction)'}; medians [min-max] of ${opt.rounds} rounds; qcow-mount -o remote_cache_size=${opt.cacheSize}. Peers: qemu-storage-daemon (http blockdev, FUSE export) for the mounted file; qemu-img convert -O raw, as it comes (8 coroutines) and with -m 1, for export. A QEMU run that stalled for good is left out of its median and counted; the ratio is against the faster QEMU configuration that finished.`,
    '',
    '| workload | added latency | ours | QEMU (configuration) | ratio | QEMU stalls | our peak RSS |',
    '|---|---|---|---|---|---|---|',
  ];
  const f = (v: number) => v.toFixed(1);
  for (const r of rows) {
    const hwm = r.oursHwmKiB !== undefined ? `${Math.round(r.oursHwmKiB / KiB)} MiB` : '';
    const ratio = r.qemu > 0 ? `${(r.ours / r.qemu).toFixed(2)}x` : 'QEMU stalled every run';
    lines.push(
      `| ${r.workload} | ${r.latencyMs} ms | ${f(r.ours)} [${f(r.oursRange[0])}-${f(r.oursRange[1])}] ${r.metric} | ${f(r.qemu)} [${f(r.qemuRange[0])}-${f(r.qemuRange[1])}] (${r.qemuConfig}) | ${ratio} | ${r.qemuStalls} of ${r.qemuRuns} | ${hwm} |`,
    );
  }
  lines.push('', ...rows.map((r) => `- ${r.workload}, ${r.latencyMs} ms: ${r.qemuOthers.join('; ')}`));
  return `${lines.join('\n')}\n`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const argv = process.argv.slice(2);
  const get = (k: string, d: string) => {
    const i = argv.indexOf(k);
    return i >= 0 ? argv[i + 1]! : d;
  };
  const opt: RemoteBenchOptions = {
    rounds: Number(get('--rounds', '3')),
    seconds: Number(get('--seconds', '5')),
    latencies: get('--latency', '0,20').split(',').map(Number),
    netem: argv.includes('--netem'),
    cacheSize: get('--cache', '256M'),
    exportOnly: argv.includes('--export-only'),
    variants: argv.includes('--variants') ? Object.fromEntries(get('--variants', '').split(',').map((v) => v.split('=') as [string, string])) : undefined,
  };
  const { installCleanUpHandlers, cleanUpAll } = await import('./util.js');
  installCleanUpHandlers();
  try {
    const rows = await benchRemote(opt);
    const md = renderRemote(rows, opt);
    process.stdout.write(md);
    const out = path.join(REPO, 'bench-work', 'remote.md');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, md);
  } finally {
    cleanUpAll();
  }
}
