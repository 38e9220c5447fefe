/**
 * tsx scripts/bench/volume-diff.ts [--rounds N]      (also run by `npm run bench` as the "volume" section)
 *
 * 1. Partition files: sequential read of active.p1 through the mount vs the same byte range of active.raw
 *    (dd, 1 MiB blocks, page cache dropped before each read), 1 GiB of data clusters.
 * 2. Metadata diff: `qcow-diff` of a snapshot against the active disk of a 1 TiB image where every 4th
 *    L2 span changed after the snapshot (4096 L2 tables differ per side), vs `qemu-img compare` of the
 *    same two views (a reverted copy against the image): compare reads data and stops at the first
 *    mismatch, so it is also timed on a pair that differs only in the last cluster (it must read all
 *    the data before that).
 * Images go to bench-work/volume/ (kept between runs). Prints medians; returns them for the report.
 */
import fs from 'node:fs';
import path from 'node:path';
import { GiB, MiB, REPO, TiB, WORK, atCleanUp, dropCache, have, log, median, run, runOk } from './util.js';

const DIR = path.join(WORK, 'volume');
const MOUNT_CLI = path.join(REPO, 'dist/cli/qcow-mount.js');
const DIFF_CLI = path.join(REPO, 'dist/cli/qcow-diff.js');

export interface VolumeBenchResult {
  partitionReadMBps: number[];
  rawRangeReadMBps: number[];
  diffSeconds: number[];
  diffL2TablesRead: number;
  diffChangedBytes: number;
  compareFirstMismatchSeconds: number[];
  compareWholeSeconds: number[];
}

export async function partitionedImage(): Promise<string> {
  const image = path.join(DIR, 'partitioned.qcow2');
  if (fs.existsSync(image)) return image;
  const raw = path.join(DIR, 'partitioned.raw');
  fs.writeFileSync(raw, '');
  fs.truncateSync(raw, GiB + 4 * MiB);
  await runOk('sfdisk', ['-q', raw], { input: 'label: dos\nstart=2048, size=2097152, type=83\n' });
  await runOk('qemu-img', ['convert', '-O', 'qcow2', raw, `${image}.tmp`]);
  fs.rmSync(raw);
  // Random-looking data in every cluster of the partition (a pattern per MiB so nothing is all zeros).
  const cmds = Array.from({ length: 1024 }, (_, i) => `write -q -P ${(i % 250) + 1} ${MiB + i * MiB} ${MiB}`).join('\n');
  await runOk('qemu-io', ['-f', 'qcow2', `${image}.tmp`], { input: `${cmds}\nquit\n` });
  fs.renameSync(`${image}.tmp`, image);
  return image;
}

export async function diffImage(): Promise<{ image: string; reverted: string; lastOnly: string; lastOnlyBase: string }> {
  const image = path.join(DIR, 'diff-1t.qcow2');
  const reverted = path.join(DIR, 'diff-1t-s1.qcow2');
  const lastOnly = path.join(DIR, 'diff-1t-last.qcow2');
  const lastOnlyBase = path.join(DIR, 'diff-1t-last-base.qcow2');
  if (fs.existsSync(lastOnlyBase)) return { image, reverted, lastOnly, lastOnlyBase };
  const tmp = `${image}.tmp`;
  await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', tmp, `${TiB}`]);
  const span = 512 * MiB; // guest bytes per L2 table at 64 KiB clusters
  const writes = (offsetInSpan: number, pattern: number) =>
    Array.from({ length: TiB / span / 4 }, (_, i) => `write -q -P ${pattern} ${i * 4 * span + offsetInSpan} 64k`).join('\n');
  await runOk('qemu-io', ['-f', 'qcow2', tmp], { input: `${writes(0, 1)}\nquit\n`, timeoutMs: 600_000 });
  await runOk('qemu-img', ['snapshot', '-c', 's1', tmp]);
  await runOk('qemu-io', ['-f', 'qcow2', tmp], { input: `${writes(64 * 1024 * 3, 2)}\nquit\n`, timeoutMs: 600_000 });
  fs.renameSync(tmp, image);
  fs.copyFileSync(image, reverted);
  await runOk('qemu-img', ['snapshot', '-a', 's1', reverted]);
  // A pair equal but for the last cluster: qemu-img compare has to read all the data before it.
  fs.copyFileSync(reverted, lastOnlyBase);
  fs.copyFileSync(reverted, lastOnly);
  await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 9 ${TiB - 65536} 64k`, lastOnly]);
  return { image, reverted, lastOnly, lastOnlyBase };
}

async function ddSeconds(file: string, skipMiB: number, countMiB: number): Promise<number> {
  await dropCache(file);
  const r = await runOk('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M', `skip=${skipMiB}`, `count=${countMiB}`, 'status=none']);
  return r.ms / 1000;
}

export async function benchVolume(rounds = 5): Promise<VolumeBenchResult> {
  fs.mkdirSync(DIR, { recursive: true });
  for (const tool of ['qemu-img', 'qemu-io', 'sfdisk', 'dd']) if (!have(tool)) throw new Error(`volume bench needs ${tool}`);
  const result: VolumeBenchResult = {
    partitionReadMBps: [],
    rawRangeReadMBps: [],
    diffSeconds: [],
    diffL2TablesRead: 0,
    diffChangedBytes: 0,
    compareFirstMismatchSeconds: [],
    compareWholeSeconds: [],
  };

  log('volume: building images (first run only)');
  const partitioned = await partitionedImage();
  const mnt = path.join(DIR, 'mnt');
  fs.mkdirSync(mnt, { recursive: true });
  await runOk(process.execPath, [MOUNT_CLI, partitioned, mnt]);
  const undo = atCleanUp(() => void run(process.execPath, [MOUNT_CLI, '-u', mnt]));
  try {
    for (let r = 0; r < rounds; r++) {
      // Alternate the order so neither always runs second.
      const order = r % 2 ? (['raw', 'part'] as const) : (['part', 'raw'] as const);
      for (const which of order) {
        const s = which === 'part' ? await ddSeconds(path.join(mnt, 'active.p1'), 0, 1024) : await ddSeconds(path.join(mnt, 'active.raw'), 1, 1024);
        (which === 'part' ? result.partitionReadMBps : result.rawRangeReadMBps).push(1024 / s);
      }
    }
  } finally {
    await runOk(process.execPath, [MOUNT_CLI, '-u', mnt]);
    undo();
  }
  log(`volume: active.p1 ${median(result.partitionReadMBps).toFixed(0)} MiB/s, same range of active.raw ${median(result.rawRangeReadMBps).toFixed(0)} MiB/s (medians of ${rounds})`);

  const d = await diffImage();
  for (let r = 0; r < rounds; r++) {
    const out = await runOk(process.execPath, [DIFF_CLI, d.image, 's1', 'active', '--json', '--stats']);
    result.diffSeconds.push(out.ms / 1000);
    const json = JSON.parse(out.stdout) as { changedBytes: number; stats?: { l2TablesRead: number } };
    result.diffChangedBytes = json.changedBytes;
    result.diffL2TablesRead = json.stats?.l2TablesRead ?? -1;
    const cmp = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', d.reverted, d.image]);
    if (cmp.code !== 1) throw new Error(`qemu-img compare: expected a mismatch (exit 1), got ${cmp.code}: ${cmp.stderr}`);
    result.compareFirstMismatchSeconds.push(cmp.ms / 1000);
    const whole = await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', d.lastOnlyBase, d.lastOnly]);
    if (whole.code !== 1) throw new Error(`qemu-img compare: expected a mismatch (exit 1), got ${whole.code}: ${whole.stderr}`);
    result.compareWholeSeconds.push(whole.ms / 1000);
  }
  log(
    `volume: qcow-diff s1..active of 1 TiB: ${median(result.diffSeconds).toFixed(2)} s (${result.diffL2TablesRead} L2 tables read, ${result.diffChangedBytes} bytes listed); ` +
      `qemu-img compare: ${median(result.compareFirstMismatchSeconds).toFixed(2)} s to its first mismatch, ${median(result.compareWholeSeconds).toFixed(2)} s where only the last cluster differs`,
  );
  return result;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const i = process.argv.indexOf('--rounds');
  benchVolume(i > 0 ? Number(process.argv[i + 1]) : 5)
    .then((r) => console.log(JSON.stringify(r, null, 2)))
    .catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
}
