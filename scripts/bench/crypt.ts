/**
 * The encrypted-view section of `npm run bench` (`--only crypt`): the same 512 MiB of random data as a
 * plain qcow2 and as a LUKS qcow2 (QEMU's default aes-256-xts-plain64), served by qcow-mount (plain and
 * LUKS with -k) and by qemu-storage-daemon's FUSE export of the LUKS image (with its secret object), read
 * with the same fio jobs, medians over rounds. The goal (issue 9): reads of the encrypted view within 2x
 * the time of the same view unencrypted. Writes OUT.md and OUT.json.
 * QCOW_BENCH_CRYPT_BASELINE=PATH/dist/cli/qcow-mount.js adds that build's LUKS mount as a fourth target
 * (before/after pairs in one run).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createCipheriv } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { IMAGES } from './images.js';
import { type Mounted, MOUNTS, mountPeer } from './peers.js';
import { type RunOptions, WORKLOADS, type Workload } from './workloads.js';
import { MiB, dropCache, isMounted, log, median, runOk, sleep, track, trackMount, unmountSync, untrackMount, warm } from './util.js';

const DIR = path.join(IMAGES, 'crypt');
const SIZE = 512 * MiB;
const RECIPE = '1';

interface CryptImages {
  plain: string;
  luks: string;
  key: string;
}

async function buildCryptImages(): Promise<CryptImages> {
  const set = { plain: path.join(DIR, 'plain.qcow2'), luks: path.join(DIR, 'luks.qcow2'), key: path.join(DIR, 'key') };
  const stamp = path.join(DIR, '.stamp');
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === RECIPE) return set;
  fs.rmSync(DIR, { recursive: true, force: true });
  fs.mkdirSync(DIR, { recursive: true });
  log('building the crypt images (512 MiB random data: plain qcow2 and LUKS aes-256-xts)');
  const raw = path.join(DIR, 'src.raw');
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 9), Buffer.alloc(16));
  const fd = fs.openSync(raw, 'w');
  const zeros = Buffer.alloc(8 * MiB);
  for (let at = 0; at < SIZE; at += zeros.length) fs.writeSync(fd, cipher.update(zeros), 0, zeros.length, at);
  fs.closeSync(fd);
  fs.writeFileSync(set.key, 'bench passphrase');
  await runOk('qemu-img', ['convert', '-O', 'qcow2', raw, set.plain]);
  for (let i = 0; ; i++) {
    try {
      // iter-time 10: PBKDF2 at mount is not what this measures.
      await runOk('qemu-img', ['convert', '--object', `secret,id=s0,file=${set.key}`, '-O', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', raw, set.luks]);
      break;
    } catch (err) {
      if (i >= 40) throw err; // "Unable to get accurate CPU usage": QEMU's PBKDF2 timing fails ~1 try in 3
    }
  }
  fs.rmSync(raw);
  fs.writeFileSync(stamp, RECIPE);
  return set;
}

/** qemu-storage-daemon exporting the LUKS image over FUSE, its key from the key file. */
async function mountQsdLuks(set: CryptImages): Promise<Mounted> {
  fs.mkdirSync(MOUNTS, { recursive: true });
  const file = path.join(MOUNTS, 'qsd-crypt.raw');
  if (isMounted(file)) unmountSync(file);
  fs.writeFileSync(file, '');
  trackMount(file);
  const t0 = process.hrtime.bigint();
  const child: ChildProcess = spawn(
    'qemu-storage-daemon',
    [
      '--object', `secret,id=s0,file=${set.key}`,
      '--blockdev', `driver=file,node-name=file,filename=${set.luks},read-only=on`,
      '--blockdev', 'driver=qcow2,node-name=qcow2,file=file,read-only=on,encrypt.format=luks,encrypt.key-secret=s0',
      '--export', `type=fuse,id=exp,node-name=qcow2,mountpoint=${file},writable=off`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  track(child);
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const deadline = Date.now() + 20_000;
  while (fs.statSync(file).size !== SIZE) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`qemu-storage-daemon (LUKS): ${stderr.trim() || 'not ready'}`);
    await sleep(20);
  }
  return {
    peer: 'qsd',
    file,
    pid: child.pid!,
    mountMs: Number(process.hrtime.bigint() - t0) / 1e6,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      const until = Date.now() + 5000;
      while (child.exitCode === null && child.signalCode === null && Date.now() < until) await sleep(20);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      unmountSync(file);
      untrackMount(file);
    },
  };
}

type Target = 'ours plain' | 'ours LUKS' | 'qsd LUKS' | 'baseline LUKS';
const BASELINE = process.env.QCOW_BENCH_CRYPT_BASELINE;
const TARGETS: Target[] = ['ours plain', 'ours LUKS', 'qsd LUKS', ...(BASELINE ? (['baseline LUKS'] as const) : [])];
const none = (): Record<Target, number[]> => ({ 'ours plain': [], 'ours LUKS': [], 'qsd LUKS': [], 'baseline LUKS': [] });

export interface CryptBenchResult {
  workloads: Record<string, { title: string; metric: string; values: Record<Target, number[]> }>;
  mountMs: Record<Target, number[]>;
}

export async function runCryptBench(rounds: number, opt: RunOptions, out: string): Promise<CryptBenchResult> {
  const set = await buildCryptImages();
  const workloads: Workload[] = [WORKLOADS.seq1m, WORKLOADS.seq128k, WORKLOADS.rand4k1];
  const result: CryptBenchResult = { workloads: {}, mountMs: none() };
  for (const w of workloads) result.workloads[w.id] = { title: w.title, metric: w.metric, values: none() };
  for (let round = 0; round < rounds; round++) {
    // Peer order rotates each round, so that none always runs first on a cold machine.
    const order = TARGETS.map((_, i) => TARGETS[(i + round) % TARGETS.length]!);
    for (const target of order) {
      for (const f of [set.plain, set.luks]) await warm(f);
      const m =
        target === 'ours plain'
          ? await mountPeer('ours', { image: set.plain, tag: 'crypt-plain' })
          : target === 'ours LUKS'
            ? await mountPeer('ours', { image: set.luks, tag: 'crypt-luks', oursArgs: ['-k', set.key] })
            : target === 'baseline LUKS'
              ? await mountPeer('ours', { image: set.luks, tag: 'crypt-base', oursArgs: ['-k', set.key], oursCli: BASELINE })
              : await mountQsdLuks(set);
      result.mountMs[target].push(m.mountMs);
      try {
        for (const w of workloads) {
          await dropCache(m.file);
          const r = await w.run(m.file, SIZE, { ...opt, seqBytes: Math.min(opt.seqBytes, 256 * MiB), seqOffset: round * 64 * MiB });
          result.workloads[w.id]!.values[target].push(r.value);
          log(`crypt round ${round + 1} ${target} ${w.id}: ${r.value.toFixed(0)} ${w.metric}`);
        }
      } finally {
        await m.stop();
      }
    }
  }
  fs.writeFileSync(`${out}.json`, `${JSON.stringify(result, null, 2)}\n`);
  fs.writeFileSync(`${out}.md`, renderCrypt(result, rounds));
  process.stdout.write(renderCrypt(result, rounds));
  return result;
}

function renderCrypt(r: CryptBenchResult, rounds: number): string {
  const L = [
    `## Encrypted view (LUKS aes-256-xts-plain64, 512 MiB random data, 64 KiB clusters): medians of ${rounds} rounds`,
    '',
    `| workload | ours plain | ours LUKS | qsd LUKS |${BASELINE ? ' baseline LUKS |' : ''} LUKS time / plain time (goal <= 2) | ours LUKS / qsd LUKS |`,
    `|---|---|---|---|${BASELINE ? '---|' : ''}---|---|`,
  ];
  const cell = (xs: number[]) => `${median(xs).toFixed(0)} [${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)}]`;
  for (const w of Object.values(r.workloads)) {
    const plain = median(w.values['ours plain']);
    const luks = median(w.values['ours LUKS']);
    const qsd = median(w.values['qsd LUKS']);
    const base = BASELINE ? ` ${cell(w.values['baseline LUKS'])} |` : '';
    L.push(`| ${w.title} (${w.metric}) | ${cell(w.values['ours plain'])} | ${cell(w.values['ours LUKS'])} | ${cell(w.values['qsd LUKS'])} |${base} ${(plain / luks).toFixed(2)}x | ${(luks / qsd).toFixed(2)}x |`);
  }
  L.push('', `Mount time (ms, median): ours plain ${median(r.mountMs['ours plain']).toFixed(0)}, ours LUKS ${median(r.mountMs['ours LUKS']).toFixed(0)} (PBKDF2 with iter-time 10), qsd LUKS ${median(r.mountMs['qsd LUKS']).toFixed(0)}.`, '');
  return L.join('\n');
}
