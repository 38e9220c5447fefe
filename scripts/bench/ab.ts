/**
 * A/B runs for the speed work: several configurations mounted side by side, one workload run on each
 * in turn, many times over, so that a loaded machine's drift hits every configuration alike.
 *
 *   npx tsx scripts/bench/ab.ts [--image full|frag|snap|zlib|zstd] [--workload rand-4k-1] [--reps 6] [--seconds 3]
 *       LABEL=PEER[:KEY=VALUE,...] ...
 *
 * PEER is ours, qcowmount, qsd or passthrough. KEY=VALUE pairs go into the daemon's environment
 * (ours, passthrough), except CLI=PATH (ours: another build's dist/cli/qcow-mount.js) and
 * ARGS=-o,... (ours: extra qcow-mount arguments, comma-separated).
 * Example: npx tsx scripts/bench/ab.ts --workload rand-4k-4 new=ours old=ours:CLI=/tmp/dist-old/cli/qcow-mount.js pt=passthrough
 * Prints, per configuration: the workload's figure and the daemon's CPU time per I/O (or per MiB),
 * median and spread over the repetitions.
 */
import fs from 'node:fs';
import { buildImages, DEFAULT_SIZES } from './images.js';
import { type MountRequest, type Mounted, MOUNTS, type PeerName, STATE, mountPeer } from './peers.js';
import { WORKLOADS, type Workload } from './workloads.js';
import { KiB, MiB, cleanUpAll, countSwitches, cpuSeconds, installCleanUpHandlers, loadAverage, log, median, warm } from './util.js';

interface Config {
  label: string;
  peer: PeerName;
  req: MountRequest;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let image = 'full';
  let workloadIds = ['rand-4k-1'];
  let reps = 6;
  let seconds = 3;
  let seqMiB = 1024;
  let perf = false;
  const specs: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    if (k === '--image') image = argv[++i]!;
    else if (k === '--workload') workloadIds = argv[++i]!.split(',');
    else if (k === '--reps') reps = Number(argv[++i]);
    else if (k === '--seconds') seconds = Number(argv[++i]);
    else if (k === '--seq-mib') seqMiB = Number(argv[++i]);
    else if (k === '--perf') perf = true;
    else specs.push(k);
  }
  installCleanUpHandlers();
  fs.mkdirSync(MOUNTS, { recursive: true });
  fs.mkdirSync(STATE, { recursive: true, mode: 0o700 });
  const set = await buildImages(DEFAULT_SIZES);
  const qcow: Record<string, string> = { full: set.full, frag: set.frag, snap: set.snapS1, zlib: set.zlib, zstd: set.zstd, chain: set.chain };
  const raw: Record<string, string> = { full: set.fullRaw };
  if (!qcow[image]) throw new Error(`unknown image ${image}`);
  const all = Object.values(WORKLOADS) as Workload[];
  const workloads = workloadIds.map((id) => {
    const w = all.find((x) => x.id === id);
    if (!w) throw new Error(`unknown workload ${id} (known: ${all.map((x) => x.id).join(', ')})`);
    return w;
  });

  const configs: Config[] = specs.map((s, n) => {
    const eq = s.indexOf('=');
    const label = s.slice(0, eq);
    const [peer, rest] = [s.slice(eq + 1).split(':')[0]!, s.slice(eq + 1).split(':').slice(1).join(':')];
    const env: NodeJS.ProcessEnv = {};
    const req: MountRequest = { image: peer === 'passthrough' ? raw[image]! : qcow[image]!, tag: `ab${n}`, oursEnv: env };
    for (const kv of rest ? rest.split(/,(?=[A-Z_]+=)/) : []) {
      const [key, ...v] = kv.split('=');
      const value = v.join('=');
      if (key === 'CLI') req.oursCli = value;
      else if (key === 'ARGS') req.oursArgs = value.split(',');
      else env[key!] = value;
    }
    return { label, peer: peer as PeerName, req };
  });
  await warm(qcow[image]!);
  if (raw[image]) await warm(raw[image]!);

  const mounted: [Config, Mounted][] = [];
  try {
    for (const c of configs) mounted.push([c, await mountPeer(c.peer, c.req)]);
    const size = fs.statSync(mounted[0]![1].file).size;
    for (const w of workloads) {
      const values = new Map<string, number[]>();
      const cpu = new Map<string, number[]>();
      const switches = new Map<string, number[]>();
      for (let r = 0; r < reps; r++) {
        const order = r % 2 ? [...mounted].reverse() : mounted;
        for (const [c, m] of order) {
          const counter = perf ? countSwitches(m.pid) : undefined;
          const c0 = cpuSeconds(m.pid);
          const res = await w.run(m.file, size, { seconds, seqBytes: seqMiB * MiB });
          const c1 = cpuSeconds(m.pid);
          const units = w.metric === 'IOPS' ? res.bytes / (w.id.includes('64k') ? 64 * KiB : 4 * KiB) : res.bytes / MiB;
          if (counter) (switches.get(c.label) ?? switches.set(c.label, []).get(c.label)!).push((await counter()) / units);
          (values.get(c.label) ?? values.set(c.label, []).get(c.label)!).push(res.value);
          if (c0 !== undefined && c1 !== undefined) (cpu.get(c.label) ?? cpu.set(c.label, []).get(c.label)!).push(((c1 - c0) * 1e6) / units);
        }
        log(`${w.id} rep ${r + 1}/${reps} (load ${loadAverage()[0]})`);
      }
      process.stdout.write(`\n${w.id} (${w.metric}; CPU µs per ${w.metric === 'IOPS' ? 'I/O' : 'MiB'}), ${reps} reps of ${seconds} s, image ${image}\n`);
      for (const [c] of mounted) {
        const v = values.get(c.label) ?? [];
        const u = cpu.get(c.label) ?? [];
        const f = (xs: number[]) => `${median(xs).toFixed(0).padStart(7)} [${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)}]`;
        const sw = switches.get(c.label);
        const g = (xs: number[]) => `${median(xs).toFixed(2)} [${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}]`;
        process.stdout.write(`  ${c.label.padEnd(14)} ${f(v)}   cpu ${f(u)}${sw ? `   daemon context switches per ${w.metric === 'IOPS' ? 'I/O' : 'MiB'} ${g(sw)}` : ''}\n`);
      }
    }
  } finally {
    for (const [, m] of mounted) await m.stop();
  }
}

main().then(
  () => {
    cleanUpAll();
    process.exit(0);
  },
  (err: unknown) => {
    process.stderr.write(`ab: ${(err as Error).stack ?? String(err)}\n`);
    cleanUpAll();
    process.exit(1);
  },
);
