/**
 * The benchmark's images, built with qemu-img / qemu-io / QEMU (QMP) into bench-work/images when missing
 * (never committed). Each image is built under a temporary name and renamed once complete, with a stamp
 * naming the recipe version, so an interrupted build is redone and an outdated one rebuilt.
 */
import { createCipheriv } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { prng } from '../../test/support/prng.js';
import { startQmp } from './qmp.js';
import { GiB, KiB, MiB, TiB, WORK, have, log, run, runOk } from './util.js';

export const IMAGES = path.join(WORK, 'images');
const RECIPE_VERSION = '1';
const CLUSTER = 64 * KiB;

// ---------------------------------------------------------------------------------------------
// Data

/** Pseudo-random bytes (AES-128-CTR keystream: fast, deterministic, incompressible). */
function writeRandomRaw(file: string, size: number, seed: number): void {
  const key = Buffer.alloc(16);
  key.writeUInt32BE(seed, 0);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(8 * MiB);
  const fd = fs.openSync(file, 'w');
  try {
    for (let done = 0; done < size; ) {
      const n = Math.min(zeros.length, size - done);
      const block = cipher.update(zeros.subarray(0, n));
      fs.writeSync(fd, block, 0, block.length, done);
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
}


/**
 * Text-like data that compresses as logs and source do (zlib ~3-4x), not one byte repeated: syslog-ish
 * lines from a pseudo-word vocabulary with numbers, addresses and times. A 4 MiB block of text is made
 * once and laid down rotated by a different amount each time (a compressed cluster sees only its own
 * 64 KiB, so the repetition does not help the codec).
 */
function writeTextRaw(file: string, size: number, seed: number): void {
  const rnd = prng(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)]!;
  const syll = ['ka', 'to', 'ri', 'men', 'sol', 'ver', 'ex', 'tra', 'on', 'lin', 'dat', 'pro', 'cess', 'sys', 'net', 'boot', 'fs', 'io', 'mod', 'ule'];
  const words = Array.from({ length: 3000 }, () => Array.from({ length: 1 + Math.floor(rnd() * 3) }, () => pick(syll)).join(''));
  const hosts = Array.from({ length: 20 }, (_, i) => `node-${i + 1}`);
  const daemons = ['sshd', 'kernel', 'systemd', 'cron', 'nginx', 'postgres', 'dockerd', 'NetworkManager'];
  let text = '';
  let t = 1_700_000_000_000;
  while (text.length < 4 * MiB) {
    t += Math.floor(rnd() * 5000);
    const n = 4 + Math.floor(rnd() * 14);
    const msg = Array.from({ length: n }, () => (rnd() < 0.15 ? String(Math.floor(rnd() * 100000)) : pick(words))).join(' ');
    text += `${new Date(t).toISOString()} ${pick(hosts)} ${pick(daemons)}[${1000 + Math.floor(rnd() * 30000)}]: ${msg} from 10.${Math.floor(rnd() * 256)}.${Math.floor(rnd() * 256)}.${Math.floor(rnd() * 256)}\n`;
  }
  const block = Buffer.from(text.slice(0, 4 * MiB), 'latin1');
  const fd = fs.openSync(file, 'w');
  try {
    for (let done = 0, i = 0; done < size; i++) {
      const n = Math.min(block.length, size - done);
      const k = Math.floor(rnd() * block.length);
      const rotated = Buffer.concat([block.subarray(k), block.subarray(0, k)]);
      fs.writeSync(fd, rotated, 0, n, done);
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
}

function shuffled(n: number, seed: number): number[] {
  const rnd = prng(seed);
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** Writes the given guest clusters, in the given order, with qemu-io (commands on stdin). */
async function qemuIoWrites(image: string, clusters: number[], patternBase: number, cwd: string): Promise<void> {
  const cmds = clusters.map((c, i) => `write -q -P ${((i + patternBase) % 255) + 1} ${c * CLUSTER} ${CLUSTER}`).join('\n');
  const r = await run('qemu-io', ['-f', 'qcow2', image], { input: `${cmds}\nquit\n`, cwd });
  if (r.code !== 0 || /error|failed/i.test(r.stdout.replace(/qemu-io> /g, ''))) throw new Error(`qemu-io on ${image} failed: ${(r.stderr + r.stdout).slice(-400)}`);
}

// ---------------------------------------------------------------------------------------------
// Recipes

export interface ImageSet {
  /** 4 GiB, 64 KiB clusters, fully allocated with pseudo-random data, host order = guest order. */
  full: string;
  /** `qemu-img convert -O raw full.qcow2`: what the passthrough serves. */
  fullRaw: string;
  /** 2 GiB, 64 KiB clusters written in shuffled order: host order != guest order. */
  frag: string;
  /** 1 GiB: random data, 1/4 of the clusters rewritten (shuffled), snapshot s1, 1/4 more rewritten. */
  snap: string;
  /** A copy of snap.qcow2 reverted to s1 (qemu-img snapshot -a): how the peers read the snapshot. */
  snapS1: string;
  /** chain.qcow2 over chain-base.qcow2 (1 GiB random): 1/4 rewritten, snapshot s1, 1/8 more. */
  chain: string;
  chainS1: string;
  /** 1 GiB of text-like data, every cluster compressed: zlib and zstd. */
  zlib: string;
  zstd: string;
  /** Memory and mount-time images: 1 GiB and 2 TiB, sparse, with 1 and 500 snapshots. */
  mem: { name: string; file: string; size: number; snapshots: number }[];
}

export interface Sizes {
  full: number;
  frag: number;
  snap: number;
  chain: number;
  compressed: number;
}

export const DEFAULT_SIZES: Sizes = { full: 4 * GiB, frag: 2 * GiB, snap: 1 * GiB, chain: 1 * GiB, compressed: 1 * GiB };

function stampOf(file: string): string {
  return `${file}.built`;
}
function isBuilt(file: string, recipe: string): boolean {
  try {
    return fs.existsSync(file) && fs.readFileSync(stampOf(file), 'utf8') === recipe;
  } catch {
    return false;
  }
}
function markBuilt(file: string, recipe: string): void {
  fs.writeFileSync(stampOf(file), recipe);
}

/** Builds `outputs` with `build` (given temporary names) unless already built with the same recipe. */
async function recipe(outputs: string[], key: string, build: (tmp: string[]) => Promise<void>): Promise<void> {
  const id = `${RECIPE_VERSION}:${key}`;
  if (outputs.every((f) => isBuilt(f, id))) return;
  const t0 = Date.now();
  log(`building ${outputs.map((f) => path.basename(f)).join(', ')} (${key}) ...`);
  const tmp = outputs.map((f) => path.join(path.dirname(f), `.tmp-${path.basename(f)}`));
  for (const f of [...outputs, ...tmp]) fs.rmSync(f, { force: true });
  for (const f of outputs) fs.rmSync(stampOf(f), { force: true });
  try {
    await build(tmp);
    for (let i = 0; i < outputs.length; i++) fs.renameSync(tmp[i]!, outputs[i]!);
    for (const f of outputs) markBuilt(f, id);
  } finally {
    for (const f of tmp) fs.rmSync(f, { force: true });
  }
  log(`  built in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

const qimg = (args: string[], cwd = IMAGES) => runOk('qemu-img', args, { cwd });

export async function buildImages(sizes: Sizes): Promise<ImageSet> {
  fs.mkdirSync(IMAGES, { recursive: true });
  const p = (name: string) => path.join(IMAGES, name);
  const scratch = p('.scratch.raw');
  const set: ImageSet = {
    full: p('full.qcow2'),
    fullRaw: p('full.raw'),
    frag: p('frag.qcow2'),
    snap: p('snap.qcow2'),
    snapS1: p('snap-s1.qcow2'),
    chain: p('chain.qcow2'),
    chainS1: p('chain-s1.qcow2'),
    zlib: p('zlib.qcow2'),
    zstd: p('zstd.qcow2'),
    mem: [
      { name: '1 GiB, 1 snapshot', file: p('mem-1g-1.qcow2'), size: 1 * GiB, snapshots: 1 },
      { name: '1 GiB, 500 snapshots', file: p('mem-1g-500.qcow2'), size: 1 * GiB, snapshots: 500 },
      { name: '2 TiB, 1 snapshot', file: p('mem-2t-1.qcow2'), size: 2 * TiB, snapshots: 1 },
      { name: '2 TiB, 500 snapshots', file: p('mem-2t-500.qcow2'), size: 2 * TiB, snapshots: 500 },
    ],
  };

  await recipe([set.full, set.fullRaw], `full ${sizes.full} random c64k`, async ([qcow, raw]) => {
    writeRandomRaw(scratch, sizes.full, 1);
    try {
      await qimg(['convert', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${CLUSTER}`, scratch, qcow!]);
    } finally {
      fs.rmSync(scratch, { force: true });
    }
    // The passthrough serves exactly what QEMU makes of the image.
    await qimg(['convert', '-f', 'qcow2', '-O', 'raw', qcow!, raw!]);
  });

  await recipe([set.frag], `frag ${sizes.frag} shuffled c64k`, async ([qcow]) => {
    await qimg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CLUSTER}`, qcow!, String(sizes.frag)]);
    await qemuIoWrites(qcow!, shuffled(sizes.frag / CLUSTER, 2), 0, IMAGES);
  });

  await recipe([set.snap, set.snapS1], `snap ${sizes.snap}`, async ([qcow, s1]) => {
    writeRandomRaw(scratch, sizes.snap, 3);
    try {
      await qimg(['convert', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${CLUSTER}`, scratch, qcow!]);
    } finally {
      fs.rmSync(scratch, { force: true });
    }
    const n = sizes.snap / CLUSTER;
    const order = shuffled(n, 4);
    await qemuIoWrites(qcow!, order.slice(0, n / 4), 10, IMAGES);
    await qimg(['snapshot', '-c', 's1', qcow!]);
    await qemuIoWrites(qcow!, order.slice(n / 4, n / 2), 20, IMAGES);
    fs.copyFileSync(qcow!, s1!);
    await qimg(['snapshot', '-a', 's1', s1!]);
  });

  const chainBase = p('chain-base.qcow2');
  await recipe([chainBase, set.chain, set.chainS1], `chain ${sizes.chain}`, async ([base, top, s1]) => {
    writeRandomRaw(scratch, sizes.chain, 5);
    try {
      await qimg(['convert', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${CLUSTER}`, scratch, base!]);
    } finally {
      fs.rmSync(scratch, { force: true });
    }
    // The overlays name the base by its final (relative) name; it is renamed into place before use,
    // so build the overlays against a link with that name meanwhile.
    fs.rmSync(chainBase, { force: true });
    fs.linkSync(base!, chainBase);
    await qimg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CLUSTER}`, '-b', 'chain-base.qcow2', '-F', 'qcow2', top!]);
    const n = sizes.chain / CLUSTER;
    const order = shuffled(n, 6);
    await qemuIoWrites(top!, order.slice(0, n / 4), 30, IMAGES);
    await qimg(['snapshot', '-c', 's1', top!]);
    await qemuIoWrites(top!, order.slice(n / 4, n / 4 + n / 8), 40, IMAGES);
    fs.copyFileSync(top!, s1!);
    await qimg(['snapshot', '-a', 's1', s1!]);
    fs.rmSync(chainBase, { force: true });
  });

  for (const [file, type] of [
    [set.zlib, 'zlib'],
    [set.zstd, 'zstd'],
  ] as const) {
    await recipe([file], `${type} ${sizes.compressed} text c64k`, async ([qcow]) => {
      writeTextRaw(scratch, sizes.compressed, 7);
      try {
        await qimg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${CLUSTER},compression_type=${type}`, scratch, qcow!]);
      } finally {
        fs.rmSync(scratch, { force: true });
      }
    });
  }

  for (const m of set.mem) {
    await recipe([m.file], `mem ${m.size} ${m.snapshots} snapshots`, async ([qcow]) => {
      await qimg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${CLUSTER}`, qcow!, String(m.size)]);
      // A few scattered 1 MiB writes: some L2 tables, mostly sparse.
      const writes = Array.from({ length: 16 }, (_, i) => `write -q -P ${i + 1} ${Math.floor((m.size / 16) * i / MiB) * MiB + 3 * MiB} ${MiB}`);
      await runOk('qemu-io', ['-f', 'qcow2', qcow!], { input: `${writes.join('\n')}\nquit\n` });
      await takeSnapshots(qcow!, m.snapshots, m.size);
    });
  }
  return set;
}

/** Takes `count` internal snapshots (s1..sN), with a small write after every 25th. */
async function takeSnapshots(image: string, count: number, size: number): Promise<void> {
  const writeAt = (i: number) => (Math.floor(((i * 7919) % 1000) / 1000 * (size / MiB)) * MiB) % (size - MiB);
  if (count <= 3 || !have('qemu-system-x86_64')) {
    if (count > 3) log('  (qemu-system-x86_64 missing: one qemu-img process per snapshot, slower)');
    for (let i = 1; i <= count; i++) {
      await qimg(['snapshot', '-c', `s${i}`, image]);
      if (i % 25 === 0) await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -q -P ${i % 250} ${writeAt(i)} 4096`, image]);
    }
    return;
  }
  const qmp = await startQmp(['-machine', 'none', '-drive', `file=${image},if=none,id=d0,format=qcow2,cache=unsafe`]);
  try {
    for (let i = 1; i <= count; i++) {
      await qmp.execute('blockdev-snapshot-internal-sync', { device: 'd0', name: `s${i}` });
      if (i % 25 === 0) await qmp.qemuIo('d0', `write -P ${i % 250} ${writeAt(i)} 4096`);
    }
  } finally {
    await qmp.quit();
  }
}

/** Image files (with backing files) whose page cache the workloads rely on. */
export function filesToWarm(set: ImageSet): string[] {
  return [set.full, set.fullRaw, set.frag, set.snap, set.snapS1, path.join(IMAGES, 'chain-base.qcow2'), set.chain, set.chainS1, set.zlib, set.zstd];
}
