/**
 * The workloads: fio (psync, buffered) and dd, on one mounted file.
 *
 * What is measured is the FUSE path, not the page cache of the mounted file:
 * - Every fio job starts with `invalidate=1` (fio's default, spelt out): posix_fadvise(DONTNEED) on the
 *   file drops its cached pages, also on FUSE (checked: a second buffered pass over a qcow-mount file,
 *   which keeps its cache across opens with kernel_cache, runs at FUSE speed, not at page-cache speed).
 *   qcowmount and qsd lose a file's cache at every open anyway.
 * - No job reads a block twice: sequential jobs read the file once; random jobs use fio's random map
 *   (each block at most once per pass), and 4 random jobs each get their own quarter of the file
 *   (offset_increment), so no job finds a page another job brought in. A random 4 KiB read is thus one
 *   4 KiB FUSE request (checked with the passthrough's request counter).
 * - Buffered, not O_DIRECT: that is how files on these mounts are read (cp, dd, loop devices), and
 *   sequential reads get the kernel's readahead as users do. The image files under the mounts stay in
 *   the host page cache ("page cache warm"): they are read once before every round.
 */
import { GiB, KiB, MiB, run } from './util.js';

export type Metric = 'MB/s' | 'IOPS' | 's';

export interface Workload {
  id: string;
  title: string;
  metric: Metric;
  /** Runs once against `file` (of `size` bytes); returns the figure (higher is better for MB/s and IOPS). */
  run(file: string, size: number, opt: RunOptions): Promise<Result>;
}

export interface RunOptions {
  /** Seconds for time-limited (random) jobs. */
  seconds: number;
  /** Sequential reads stop after this many bytes (the whole file when larger). */
  seqBytes: number;
  /** Where sequential reads start (clipped so that seqBytes still fit; MiB aligned). */
  seqOffset?: number;
}

/** The sequential window [offset, offset + bytes) inside a file of `size` bytes. */
export function seqWindow(size: number, opt: RunOptions): { offset: number; bytes: number } {
  const bytes = Math.min(size, opt.seqBytes);
  const room = size - bytes;
  const offset = room > 0 ? Math.floor(((opt.seqOffset ?? 0) % (room + MiB)) / MiB) * MiB : 0;
  return { offset: Math.min(offset, room), bytes };
}

export interface Result {
  value: number;
  /** Median completion latency (µs), where fio reports it. */
  p50us?: number;
  p99us?: number;
  bytes: number;
}

interface FioRead {
  bw_bytes: number;
  iops: number;
  io_bytes: number;
  clat_ns?: { percentile?: Record<string, number> };
}

async function fio(args: string[]): Promise<FioRead> {
  const r = await run('fio', ['--output-format=json', '--readonly', '--ioengine=psync', '--direct=0', '--invalidate=1', '--group_reporting', ...args], { timeoutMs: 600_000 });
  if (r.code !== 0) throw new Error(`fio ${args.join(' ')} failed: ${r.stderr.trim() || r.stdout.slice(-300)}`);
  const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { read: FioRead; error: number }[] };
  const job = json.jobs[0]!;
  if (job.error) throw new Error(`fio job error ${job.error}`);
  return job.read;
}

function fromFio(read: FioRead, metric: Metric): Result {
  const pct = read.clat_ns?.percentile;
  return {
    value: metric === 'IOPS' ? read.iops : read.bw_bytes / 1e6,
    p50us: pct?.['50.000000'] !== undefined ? pct['50.000000'] / 1000 : undefined,
    p99us: pct?.['99.000000'] !== undefined ? pct['99.000000'] / 1000 : undefined,
    bytes: read.io_bytes,
  };
}

function seq(id: string, title: string, bs: number): Workload {
  return {
    id,
    title,
    metric: 'MB/s',
    async run(file, size, opt) {
      const { offset, bytes } = seqWindow(size, opt);
      return fromFio(await fio([`--name=${id}`, `--filename=${file}`, '--rw=read', `--bs=${bs}`, `--offset=${offset}`, `--size=${bytes}`]), 'MB/s');
    },
  };
}

function rand(id: string, title: string, bs: number, jobs: number, metric: Metric): Workload {
  return {
    id,
    title,
    metric,
    async run(file, size, opt) {
      const share = Math.floor(size / jobs / bs) * bs;
      const args = [`--name=${id}`, `--filename=${file}`, '--rw=randread', `--bs=${bs}`, `--numjobs=${jobs}`, `--size=${share}`, `--runtime=${opt.seconds}`, '--randrepeat=1', '--norandommap=0'];
      if (jobs > 1) args.push(`--offset_increment=${share}`);
      return fromFio(await fio(args), metric);
    },
  };
}

/** dd bs=1M of the whole file (or seqBytes), after dropping the file's cached pages (iflag=nocache). */
const dd: Workload = {
  id: 'dd-1m',
  title: 'dd bs=1M sequential',
  metric: 'MB/s',
  async run(file, size, opt) {
    const { offset, bytes: want } = seqWindow(size, opt);
    const count = Math.ceil(want / MiB);
    await run('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
    const r = await run('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M', `skip=${offset / MiB}`, `count=${count}`, 'status=none'], { timeoutMs: 600_000 });
    if (r.code !== 0) throw new Error(`dd ${file}: ${r.stderr.trim()}`);
    const bytes = Math.min(size - offset, count * MiB);
    return { value: bytes / 1e6 / (r.ms / 1000), bytes };
  },
};

export const WORKLOADS = {
  seq1m: seq('seq-1m', 'sequential 1 MiB reads', MiB),
  seq128k: seq('seq-128k', 'sequential 128 KiB reads', 128 * KiB),
  dd,
  rand4k1: rand('rand-4k-1', 'random 4 KiB, 1 reader', 4 * KiB, 1, 'IOPS'),
  rand4k4: rand('rand-4k-4', 'random 4 KiB, 4 readers', 4 * KiB, 4, 'IOPS'),
  rand64k: rand('rand-64k', 'random 64 KiB, 1 reader', 64 * KiB, 1, 'IOPS'),
} satisfies Record<string, Workload>;

export const ALL_SEQ_BYTES = 1024 * GiB;
/**
 * Sequential jobs read 1 GiB windows (a different one each round), not whole 4 GiB files: 4 GiB of a
 * mounted file in the page cache at once made the kernel reclaim memory during the read, and that
 * capped every peer alike at ~700 MB/s on a 23 GiB machine shared with other work.
 */
export const DEFAULT_SEQ_BYTES = 1 * GiB;
