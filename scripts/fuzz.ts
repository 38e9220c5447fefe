/**
 * Seeded fuzzer for the qcow2 reader: mutates the headers, header extensions, snapshot tables, L1 and
 * L2 tables of valid QEMU-made images (bit flips, boundary values and random u64s at known field
 * positions, truncation), then opens each mutant and reads every view (fully, or a bounded sample for
 * big claimed sizes) and lists extents. It asserts:
 * - no exception other than a one-line QcowError (EBADIMAGE, EUNSUPPORTED, EIO; ENOENT where a mutated
 *   backing or data file name names nothing);
 * - every iteration ends before a deadline (mutants run in a child process with a watchdog: a hang is
 *   killed and reported, and the campaign goes on);
 * - the child's RSS stays under a bound.
 *
 *   npm run fuzz -- [--seed S] [--iterations N] [--time-limit SEC] [--deadline SEC] [--rss-limit MIB]
 *   npm run fuzz -- --seed S --only I        # re-run one iteration in-process, with the stack
 *   npm run fuzz -- --mount [--fuse native|compat|both] ...   # the same mutants through qcow-mount
 *                                            # (scripts/fuzz-mount.ts)
 *
 * Iteration I of seed S is always the same mutant (its RNG is seeded by S and I alone).
 */
import { type ChildProcess, fork } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { QcowError, openImageSync, openVolume } from '../src/index.js';
import type { Disk, QcowImage } from '../src/index.js';
import { defaultHostileDir, makeHostile } from './make-hostile.js';

const here = fileURLToPath(import.meta.url);
const repoRoot = path.resolve(path.dirname(here), '..');

// ---------------------------------------------------------------------------------------------------
// Random numbers

/** A small, fast, seeded PRNG (mulberry32), one per iteration. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  static forIteration(seed: number, iteration: number): Rng {
    // Mix the two so neighbouring iterations do not share streams.
    let h = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(iteration + 1, 0xc2b2ae35);
    h ^= h >>> 16;
    h = Math.imul(h, 0x7feb352d);
    h ^= h >>> 15;
    return new Rng(h);
  }
  u32(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** 0 <= n < max */
  int(max: number): number {
    return max <= 0 ? 0 : Math.floor((this.u32() / 2 ** 32) * max);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
}

// ---------------------------------------------------------------------------------------------------
// Where the fields are

interface Field {
  name: string;
  at: number;
  size: 1 | 2 | 4 | 8;
}

interface Structure {
  name: string;
  at: number;
  length: number;
}

export interface Seed {
  name: string;
  bytes: Buffer;
  clusterSize: number;
  fields: Field[];
  /** 8-byte slots of L1 and L2 tables (active and snapshots). */
  slots: { at: number; kind: 'l1' | 'l2' }[];
  structures: Structure[];
  /** Compressed cluster data (the first bytes of each). */
  dataAreas: Structure[];
  /** Offsets where truncation is interesting. */
  cuts: number[];
}

const HEADER_FIELDS: Field[] = [
  { name: 'magic', at: 0, size: 4 },
  { name: 'version', at: 4, size: 4 },
  { name: 'backing_file_offset', at: 8, size: 8 },
  { name: 'backing_file_size', at: 16, size: 4 },
  { name: 'cluster_bits', at: 20, size: 4 },
  { name: 'size', at: 24, size: 8 },
  { name: 'crypt_method', at: 32, size: 4 },
  { name: 'l1_size', at: 36, size: 4 },
  { name: 'l1_table_offset', at: 40, size: 8 },
  { name: 'refcount_table_offset', at: 48, size: 8 },
  { name: 'refcount_table_clusters', at: 56, size: 4 },
  { name: 'nb_snapshots', at: 60, size: 4 },
  { name: 'snapshots_offset', at: 64, size: 8 },
];
const V3_FIELDS: Field[] = [
  { name: 'incompatible_features', at: 72, size: 8 },
  { name: 'compatible_features', at: 80, size: 8 },
  { name: 'autoclear_features', at: 88, size: 8 },
  { name: 'refcount_order', at: 96, size: 4 },
  { name: 'header_length', at: 100, size: 4 },
  { name: 'compression_type', at: 104, size: 1 },
];

const OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;

/** qcow version 1: a 48-byte header and an L1 table of plain offsets, L2 tables of 2^l2_bits entries. */
const V1_FIELDS: Field[] = [
  { name: 'v1 backing_file_offset', at: 8, size: 8 },
  { name: 'v1 backing_file_size', at: 16, size: 4 },
  { name: 'v1 size', at: 24, size: 8 },
  { name: 'v1 cluster_bits', at: 32, size: 1 },
  { name: 'v1 l2_bits', at: 33, size: 1 },
  { name: 'v1 crypt_method', at: 36, size: 4 },
  { name: 'v1 l1_table_offset', at: 40, size: 8 },
];

function describeV1Seed(name: string, bytes: Buffer): Seed {
  const clusterSize = 2 ** bytes[32]!;
  const l2Bytes = 8 * 2 ** bytes[33]!;
  const l1Offset = Number(bytes.readBigUInt64BE(40));
  const l1Entries = Math.ceil(Number(bytes.readBigUInt64BE(24)) / (clusterSize * (l2Bytes / 8)));
  const structures: Structure[] = [{ name: 'v1 header', at: 0, length: 48 }, { name: 'v1 L1', at: l1Offset, length: l1Entries * 8 }];
  const slots: Seed['slots'] = [];
  for (let i = 0; i < l1Entries; i++) {
    slots.push({ at: l1Offset + i * 8, kind: 'l1' });
    const l2 = Number(bytes.readBigUInt64BE(l1Offset + i * 8));
    if (l2 > 0 && l2 + l2Bytes <= bytes.length) {
      structures.push({ name: `v1 L2 ${i}`, at: l2, length: l2Bytes });
      for (let j = 0; j < l2Bytes; j += 8) slots.push({ at: l2 + j, kind: 'l2' });
    }
  }
  return { name, bytes, clusterSize, fields: V1_FIELDS, slots, structures, dataAreas: [], cuts: [0, 8, 48, l1Offset, bytes.length] };
}

function describeSeed(name: string, bytes: Buffer): Seed {
  const be = (at: number, size: number) => (at + size <= bytes.length ? (size === 8 ? bytes.readBigUInt64BE(at) : BigInt(bytes.readUIntBE(at, size))) : 0n);
  const version = Number(be(4, 4));
  if (version === 1) return describeV1Seed(name, bytes);
  const clusterBits = Number(be(20, 4));
  const clusterSize = 2 ** clusterBits;
  const fields: Field[] = [...HEADER_FIELDS, ...(version >= 3 ? V3_FIELDS : [])];
  const structures: Structure[] = [{ name: 'header cluster', at: 0, length: Math.min(clusterSize, bytes.length) }];
  const cuts = [0, 8, 72, 104, clusterSize, bytes.length];
  const slots: Seed['slots'] = [];
  const dataAreas: Structure[] = [];
  const incompatible = version >= 3 ? be(72, 8) : 0n;
  const entryBytes = incompatible & 16n ? 16 : 8;

  // Header extensions.
  let at = version >= 3 ? Number(be(100, 4)) : 72;
  for (let n = 0; n < 32 && at + 8 <= clusterSize; n++) {
    fields.push({ name: `extension ${n} type`, at, size: 4 }, { name: `extension ${n} length`, at: at + 4, size: 4 });
    const type = Number(be(at, 4));
    const length = Number(be(at + 4, 4));
    if (type === 0) break;
    structures.push({ name: `extension ${n}`, at, length: 8 + length });
    if (type === 0x0537be77 && at + 24 <= bytes.length) {
      // The LUKS header it points at (opened without a key here: decoded and bounded, no PBKDF2 runs).
      const luks = Number(be(at + 8, 8));
      structures.push({ name: 'LUKS header', at: luks, length: 592 });
      for (let slot = 0; slot < 8; slot++) {
        const k = luks + 208 + slot * 48;
        fields.push({ name: `LUKS slot ${slot} iterations`, at: k + 4, size: 4 }, { name: `LUKS slot ${slot} key_offset`, at: k + 40, size: 4 }, { name: `LUKS slot ${slot} stripes`, at: k + 44, size: 4 });
      }
      fields.push({ name: 'LUKS payload_offset', at: luks + 104, size: 4 }, { name: 'LUKS key_bytes', at: luks + 108, size: 4 }, { name: 'LUKS mk_iterations', at: luks + 164, size: 4 });
    }
    at += 8 + Math.ceil(length / 8) * 8;
  }

  const addL1 = (what: string, offset: number, entries: number) => {
    if (offset <= 0 || offset + entries * 8 > bytes.length) return;
    structures.push({ name: `${what} L1`, at: offset, length: entries * 8 });
    cuts.push(offset, offset + 4);
    for (let i = 0; i < entries; i++) {
      slots.push({ at: offset + i * 8, kind: 'l1' });
      const l2 = Number(bytes.readBigUInt64BE(offset + i * 8) & OFFSET_MASK);
      if (l2 > 0 && l2 + clusterSize <= bytes.length && !structures.some((s) => s.at === l2)) {
        structures.push({ name: `${what} L2 ${i}`, at: l2, length: clusterSize });
        cuts.push(l2, l2 + clusterSize / 2);
        for (let j = 0; j < clusterSize; j += entryBytes) {
          slots.push({ at: l2 + j, kind: 'l2' });
          if (entryBytes === 16) slots.push({ at: l2 + j + 8, kind: 'l2' });
          const e = bytes.readBigUInt64BE(l2 + j);
          if (e & (1n << 62n)) {
            // Compressed data: its first bytes (stream headers, block types) are where corruption bites.
            const x = BigInt(62 - (clusterBits - 8));
            const off = Number(e & ((1n << x) - 1n));
            if (off < bytes.length) dataAreas.push({ name: `compressed data of ${what} L2 ${i}[${j / entryBytes}]`, at: off, length: Math.min(64, bytes.length - off) });
          }
        }
      }
    }
  };
  addL1('active', Number(be(40, 8)), Number(be(36, 4)));

  // Snapshot table.
  const count = Number(be(60, 4));
  let sn = Number(be(64, 8));
  for (let i = 0; i < count && i < 64 && sn + 40 <= bytes.length; i++) {
    const extra = Number(be(sn + 36, 4));
    const idSize = Number(be(sn + 12, 2));
    const nameSize = Number(be(sn + 14, 2));
    const len = 40 + extra + idSize + nameSize;
    structures.push({ name: `snapshot ${i}`, at: sn, length: len });
    cuts.push(sn, sn + 20, sn + len - 1);
    fields.push(
      { name: `snapshot ${i} l1_table_offset`, at: sn, size: 8 },
      { name: `snapshot ${i} l1_size`, at: sn + 8, size: 4 },
      { name: `snapshot ${i} id_str_size`, at: sn + 12, size: 2 },
      { name: `snapshot ${i} name_size`, at: sn + 14, size: 2 },
      { name: `snapshot ${i} vm_state_size`, at: sn + 32, size: 4 },
      { name: `snapshot ${i} extra_data_size`, at: sn + 36, size: 4 },
    );
    if (extra >= 8) fields.push({ name: `snapshot ${i} vm_state_size_large`, at: sn + 40, size: 8 });
    if (extra >= 16) fields.push({ name: `snapshot ${i} disk_size`, at: sn + 48, size: 8 });
    addL1(`snapshot ${i}`, Number(be(sn, 8)), Number(be(sn + 8, 4)));
    // The start of its VM state (stream header, machine type, RAM block list, first page records).
    if (be(sn + 32, 4) > 0n) {
      const l2Span = (clusterSize / entryBytes) * clusterSize;
      const diskSize = Number(extra >= 16 ? be(sn + 48, 8) : be(24, 8));
      const l1At = Number(be(sn, 8)) + Math.ceil(diskSize / l2Span) * 8;
      const l2 = Number(be(l1At, 8) & OFFSET_MASK);
      const data = l2 > 0 ? Number(be(l2, 8) & OFFSET_MASK) : 0;
      if (data > 0 && data < bytes.length) {
        const area = { name: `snapshot ${i} VM state start`, at: data, length: Math.min(clusterSize, bytes.length - data) };
        structures.push(area);
        dataAreas.push(area);
      }
    }
    sn += Math.ceil(len / 8) * 8;
  }
  return { name, bytes, clusterSize, fields, slots, structures, dataAreas, cuts: cuts.filter((c) => c <= bytes.length) };
}

// ---------------------------------------------------------------------------------------------------
// Mutations

function boundaryValue(rng: Rng, size: number, seed: Seed): bigint {
  const file = BigInt(seed.bytes.length);
  const cs = BigInt(seed.clusterSize);
  const max = size === 8 ? 0xffff_ffff_ffff_ffffn : (1n << BigInt(size * 8)) - 1n;
  const candidates = [
    0n, 1n, 2n, 7n, 8n, 9n, 21n, 22n, 64n, 72n, 104n, 512n, cs - 1n, cs, cs + 1n, 2n * cs, file - 1n, file, file + cs,
    max, max - 1n, max >> 1n, (max >> 1n) + 1n, 0xffffn, 0x10000n, 65535n, 65536n, 1n << 30n, 1n << 31n, 1n << 32n,
    (1n << 53n) - 1n, 1n << 53n, (1n << 53n) + 1n, 1n << 56n, 1n << 62n, 1n << 63n,
  ];
  const v = rng.chance(0.2) ? rng.u64() : rng.pick(candidates);
  return v & max;
}

function writeField(bytes: Buffer, at: number, size: number, value: bigint): void {
  if (at + size > bytes.length) return;
  if (size === 8) bytes.writeBigUInt64BE(value & 0xffff_ffff_ffff_ffffn, at);
  else bytes.writeUIntBE(Number(value & ((1n << BigInt(size * 8)) - 1n)), at, size);
}

function slotValue(rng: Rng, seed: Seed, old: bigint): bigint {
  const file = BigInt(seed.bytes.length);
  const cs = BigInt(seed.clusterSize);
  const aligned = (n: bigint) => (n / cs) * cs;
  switch (rng.int(10)) {
    case 0:
      return 0n;
    case 1:
      return rng.u64();
    case 2:
      return old ^ (1n << BigInt(rng.int(64)));
    case 3:
      return (1n << 63n) | aligned(file + BigInt(rng.int(16)) * cs); // past the end
    case 4:
      return (1n << 63n) | (aligned(file) - cs); // the last cluster (may be a table, or data)
    case 5:
      return (old & ~OFFSET_MASK) | ((old & OFFSET_MASK) + 512n); // misaligned
    case 6:
      return (1n << 62n) | (rng.u64() & ((1n << 62n) - 1n)); // compressed, random descriptor
    case 7:
      return (1n << 62n) | BigInt(rng.int(Number(file))); // compressed, offset inside the file, 1 sector
    case 8:
      return old | 1n | BigInt(rng.int(256)) << 1n; // zero flag and reserved bits
    default:
      return (1n << 63n) | aligned(BigInt(rng.int(Number(file)))); // another cluster of the file
  }
}

export interface Mutant {
  seed: string;
  bytes: Buffer;
  mutations: string[];
}

export function mutate(rng: Rng, seeds: Seed[]): Mutant {
  const seed = rng.pick(seeds);
  let bytes = Buffer.from(seed.bytes);
  const mutations: string[] = [];
  const n = 1 + rng.int(rng.chance(0.3) ? 6 : 2);
  for (let k = 0; k < n; k++) {
    const op = rng.int(100);
    if (op < 30 && seed.fields.length > 0) {
      const f = rng.pick(seed.fields);
      const v = boundaryValue(rng, f.size, seed);
      writeField(bytes, f.at, f.size, v);
      mutations.push(`${f.name}=0x${v.toString(16)}`);
    } else if (op < 60 && seed.slots.length > 0) {
      const s = rng.pick(seed.slots);
      const old = s.at + 8 <= bytes.length ? bytes.readBigUInt64BE(s.at) : 0n;
      const v = slotValue(rng, seed, old);
      writeField(bytes, s.at, 8, v);
      mutations.push(`${s.kind}@0x${s.at.toString(16)}=0x${v.toString(16)}`);
    } else if (op < 80) {
      const st = rng.pick(seed.structures);
      const flips = 1 + rng.int(8);
      for (let i = 0; i < flips; i++) {
        const at = st.at + rng.int(st.length);
        if (at < bytes.length) bytes[at]! ^= 1 << rng.int(8);
      }
      mutations.push(`flip ${flips} bits in ${st.name}`);
    } else if (op < 88) {
      const st = seed.dataAreas.length > 0 && rng.chance(0.4) ? rng.pick(seed.dataAreas) : rng.pick(seed.structures);
      const len = 1 + rng.int(64);
      const at = st.at + rng.int(st.length);
      for (let i = 0; i < len && at + i < bytes.length; i++) bytes[at + i] = rng.int(256);
      mutations.push(`${len} random bytes at 0x${at.toString(16)} (${st.name})`);
    } else {
      const base = rng.pick(seed.cuts);
      const cut = Math.max(0, Math.min(bytes.length, base + (rng.chance(0.5) ? 0 : rng.int(1024) - 512)));
      bytes = bytes.subarray(0, cut);
      mutations.push(`truncate at 0x${cut.toString(16)}`);
    }
  }
  return { seed: seed.name, bytes, mutations };
}

// ---------------------------------------------------------------------------------------------------
// Exercising one mutant

export type Outcome = 'opened' | 'opened-eio' | 'refused-EBADIMAGE' | 'refused-EUNSUPPORTED' | 'refused-ENOENT' | 'refused-EACCES' | 'bug';

const ALLOWED_OPEN = new Set(['EBADIMAGE', 'EUNSUPPORTED', 'ENOENT', 'EACCES']);
const MEMORY_ERRORS = new Set(['EBADIMAGE', 'EUNSUPPORTED', 'EIO']);
const FULL_READ_LIMIT = 16 * 1024 * 1024;
const CHUNK = 64 * 1024;

class Bug extends Error {}

function checkQcowError(err: unknown, allowed: Set<string>, what: string): QcowError {
  if (!(err instanceof QcowError)) {
    throw new Bug(`${what}: ${err instanceof Error ? `${err.name}: ${err.message}\n${err.stack}` : String(err)}`);
  }
  if (!allowed.has(err.code)) throw new Bug(`${what}: QcowError with code ${err.code}: ${err.message}`);
  if (/[\r\n]/.test(err.message)) throw new Bug(`${what}: message is not one line: ${JSON.stringify(err.message)}`);
  if (!err.message.startsWith('/')) throw new Bug(`${what}: message does not start with a file path: ${err.message}`);
  return err;
}

/** Positions to read of a view: all of it when small, else a sample (ends, and random windows). */
function windows(size: number, rng: Rng): number[] {
  if (size <= FULL_READ_LIMIT) {
    const out: number[] = [];
    for (let p = 0; p < size; p += CHUNK) out.push(p);
    return out;
  }
  const out = [0, CHUNK, size - CHUNK, Math.floor(size / 2)];
  for (let i = 0; i < 28; i++) out.push(Math.floor((rng.u32() / 2 ** 32) * (size - CHUNK)));
  return out.map((p) => Math.max(0, p));
}

function exercise(file: string, rng: Rng): { outcome: Outcome; eio: number } {
  let img: QcowImage;
  try {
    img = openImageSync(file);
  } catch (err) {
    const e = checkQcowError(err, ALLOWED_OPEN, 'openImage');
    return { outcome: `refused-${e.code}` as Outcome, eio: 0 };
  }
  let eio = 0;
  // ENOKEY: the data of an encrypted mutant, opened without a key.
  const eioOnly = new Set(['EIO', 'ENOKEY']);
  try {
    const views: [string, Disk][] = [['active', img.active]];
    for (const s of img.snapshots.slice(0, 8)) {
      views.push([`snapshot ${s.index}`, img.snapshotDisk(s)]);
      const vm = img.vmState(s);
      if (vm) views.push([`vmstate ${s.index}`, vm]);
      // The RAM rebuilt from the VM state: refused with one QcowError, or its .ram/.core read like views.
      try {
        const memory = img.memory(s);
        if (memory?.ram) views.push([`ram ${s.index}`, memory.ram]);
        if (memory?.core) views.push([`core ${s.index}`, memory.core]);
      } catch (err) {
        checkQcowError(err, MEMORY_ERRORS, `memory of snapshot ${s.index}`);
      }
    }
    const buf = Buffer.alloc(CHUNK);
    for (const [name, disk] of views) {
      if (!Number.isSafeInteger(disk.size) || disk.size < 0) throw new Bug(`${name}: size ${disk.size}`);
      // Reading a view's partition table never throws: unreadable sectors become problems.
      try {
        openVolume(disk);
      } catch (err) {
        throw new Bug(`${name}: openVolume threw ${(err as Error).message}`);
      }
      for (const pos of windows(disk.size, rng)) {
        try {
          const n = disk.readSync(buf, pos);
          if (n !== Math.min(CHUNK, disk.size - pos)) throw new Bug(`${name}: read at ${pos} returned ${n}`);
        } catch (err) {
          if (err instanceof Bug) throw err;
          checkQcowError(err, eioOnly, `${name} read at ${pos}`);
          eio++;
        }
        try {
          const ext = disk.extents(pos, CHUNK);
          const total = ext.reduce((t, e) => t + e.length, 0);
          if (total !== Math.min(CHUNK, disk.size - pos)) throw new Bug(`${name}: extents at ${pos} cover ${total} bytes`);
        } catch (err) {
          if (err instanceof Bug) throw err;
          checkQcowError(err, eioOnly, `${name} extents at ${pos}`);
          eio++;
        }
      }
    }
  } finally {
    img.close();
  }
  return { outcome: eio > 0 ? 'opened-eio' : 'opened', eio };
}

// ---------------------------------------------------------------------------------------------------
// Seeds and the per-iteration work (in the child)

const SEED_IMAGES = ['base.qcow2', 'snap.qcow2', 'zlib.qcow2', 'zstd.qcow2', 'ext.qcow2', 'chain-top.qcow2', 'v2.qcow2', 'datafile.qcow2', 'seq.qcow2', 'vm.qcow2', 'luks.qcow2', 'v1.qcow'];
/** Files the seed images name (backing and data files), copied beside the mutants. */
const SIDE_FILES = ['chain-base.qcow2', 'datafile-data.raw'];

export function loadSeeds(hostileDir: string, workDir: string): Seed[] {
  for (const f of SIDE_FILES) {
    const to = path.join(workDir, f);
    if (!fs.existsSync(to)) fs.copyFileSync(path.join(hostileDir, f), to);
  }
  // vm.qcow2 (a savevm VM state) is in the catalogue where qemu-system-x86_64 is installed.
  return SEED_IMAGES.filter((f) => fs.existsSync(path.join(hostileDir, f))).map((f) => describeSeed(f, fs.readFileSync(path.join(hostileDir, f))));
}

interface IterationResult {
  i: number;
  outcome: Outcome;
  seedImage: string;
  mutations: string[];
  detail?: string;
  ms: number;
  rssMiB: number;
}

function runIteration(seedValue: number, i: number, seeds: Seed[], workDir: string): IterationResult {
  const rng = Rng.forIteration(seedValue, i);
  const m = mutate(rng, seeds);
  const file = path.join(workDir, `mutant-${process.pid}.qcow2`);
  fs.writeFileSync(file, m.bytes);
  const started = performance.now();
  let outcome: Outcome;
  let detail: string | undefined;
  try {
    outcome = exercise(file, rng).outcome;
  } catch (err) {
    outcome = 'bug';
    detail = err instanceof Error ? `${err.message}${err instanceof Bug ? '' : `\n${err.stack}`}` : String(err);
  }
  return { i, outcome, seedImage: m.seed, mutations: m.mutations, detail, ms: performance.now() - started, rssMiB: process.memoryUsage().rss / 2 ** 20 };
}

type ChildMessage = { type: 'start'; i: number } | { type: 'done'; result: IterationResult };

function childMain(): void {
  const [seedValue, from, to, hostileDir, workDir] = [Number(process.env.FUZZ_SEED), Number(process.env.FUZZ_FROM), Number(process.env.FUZZ_TO), process.env.FUZZ_HOSTILE_DIR!, process.env.FUZZ_WORK_DIR!];
  const seeds = loadSeeds(hostileDir, workDir);
  for (let i = from; i < to; i++) {
    process.send!({ type: 'start', i } satisfies ChildMessage);
    const result = runIteration(seedValue, i, seeds, workDir);
    process.send!({ type: 'done', result } satisfies ChildMessage);
  }
  process.disconnect?.();
}

// ---------------------------------------------------------------------------------------------------
// The campaign (in the parent)

export interface FuzzOptions {
  seed: number;
  iterations: number;
  /** Stop starting new iterations after this many seconds. */
  timeLimitSec?: number;
  /** An iteration running longer than this is a hang. */
  deadlineSec?: number;
  /** The child's RSS must stay under this. */
  rssLimitMiB?: number;
  hostileDir?: string;
  log?: (line: string) => void;
}

export interface Finding {
  kind: 'bug' | 'hang' | 'crash' | 'rss';
  seed: number;
  iteration: number;
  seedImage?: string;
  mutations?: string[];
  detail: string;
}

export interface FuzzReport {
  seed: number;
  iterations: number;
  seconds: number;
  outcomes: Record<string, number>;
  findings: Finding[];
  maxRssMiB: number;
  slowestMs: number;
  stoppedBy: 'iterations' | 'time-limit';
}

export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const { seed, iterations } = options;
  const deadlineMs = (options.deadlineSec ?? 10) * 1000;
  const rssLimit = options.rssLimitMiB ?? 1024;
  const log = options.log ?? (() => {});
  const hostileDir = options.hostileDir ?? defaultHostileDir;
  makeHostile(hostileDir);
  // The time limit starts once the seed images exist: building the catalogue (QEMU, LUKS key
  // derivation) is not fuzzing time.
  const stopAt = options.timeLimitSec ? Date.now() + options.timeLimitSec * 1000 : Infinity;
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-fuzz-'));
  const started = Date.now();
  const report: FuzzReport = { seed, iterations: 0, seconds: 0, outcomes: {}, findings: [], maxRssMiB: 0, slowestMs: 0, stoppedBy: 'iterations' };
  let next = 0;
  let lastLog = Date.now();
  try {
    while (next < iterations) {
      if (Date.now() >= stopAt) {
        report.stoppedBy = 'time-limit';
        break;
      }
      // One child runs iterations [next, iterations) until it ends, hangs or dies.
      next = await new Promise<number>((resolve) => {
        const child: ChildProcess = fork(here, ['--child'], {
          cwd: repoRoot,
          execArgv: ['--import', 'tsx'],
          env: { ...process.env, FUZZ_SEED: String(seed), FUZZ_FROM: String(next), FUZZ_TO: String(iterations), FUZZ_HOSTILE_DIR: hostileDir, FUZZ_WORK_DIR: workDir },
          stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
        });
        let current = -1;
        let resumeAt = next;
        let stderr = '';
        let settled = false;
        child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
        let watchdog: NodeJS.Timeout | undefined;
        const finish = (at: number) => {
          if (settled) return;
          settled = true;
          clearTimeout(watchdog);
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
          resolve(at);
        };
        child.on('message', (msg: ChildMessage) => {
          if (msg.type === 'start') {
            current = msg.i;
            clearTimeout(watchdog);
            watchdog = setTimeout(() => {
              report.findings.push({ kind: 'hang', seed, iteration: current, detail: `still running after ${deadlineMs / 1000} s` });
              report.outcomes.hang = (report.outcomes.hang ?? 0) + 1;
              report.iterations++;
              log(`HANG seed ${seed} iteration ${current}: reproduce with npm run fuzz -- --seed ${seed} --only ${current}`);
              finish(current + 1);
            }, deadlineMs);
            if (Date.now() >= stopAt) {
              report.stoppedBy = 'time-limit';
              finish(iterations);
            }
            return;
          }
          clearTimeout(watchdog);
          const r = msg.result;
          resumeAt = r.i + 1;
          report.iterations++;
          report.outcomes[r.outcome] = (report.outcomes[r.outcome] ?? 0) + 1;
          report.maxRssMiB = Math.max(report.maxRssMiB, r.rssMiB);
          report.slowestMs = Math.max(report.slowestMs, r.ms);
          if (r.outcome === 'bug') {
            report.findings.push({ kind: 'bug', seed, iteration: r.i, seedImage: r.seedImage, mutations: r.mutations, detail: r.detail ?? '' });
            log(`BUG seed ${seed} iteration ${r.i} (${r.seedImage}: ${r.mutations.join('; ')}): ${r.detail}`);
          }
          if (r.rssMiB > rssLimit) {
            report.findings.push({ kind: 'rss', seed, iteration: r.i, seedImage: r.seedImage, mutations: r.mutations, detail: `RSS ${r.rssMiB.toFixed(0)} MiB > ${rssLimit} MiB` });
            log(`RSS seed ${seed} iteration ${r.i}: ${r.rssMiB.toFixed(0)} MiB`);
            finish(r.i + 1); // start a fresh child so one finding is not counted again and again
            return;
          }
          if (Date.now() - lastLog > 5000) {
            lastLog = Date.now();
            log(`${report.iterations} iterations, ${((Date.now() - started) / 1000).toFixed(0)} s, ${JSON.stringify(report.outcomes)}, max RSS ${report.maxRssMiB.toFixed(0)} MiB`);
          }
        });
        child.on('exit', (code, signal) => {
          if (settled) return;
          if (resumeAt < iterations && current >= resumeAt) {
            // Died in the middle of an iteration: a crash of the process, not an exception.
            report.findings.push({ kind: 'crash', seed, iteration: current, detail: `child exited (code ${code}, signal ${signal}): ${stderr.trim().split('\n').slice(-5).join(' | ')}` });
            report.outcomes.crash = (report.outcomes.crash ?? 0) + 1;
            report.iterations++;
            log(`CRASH seed ${seed} iteration ${current}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
            finish(current + 1);
          } else if (resumeAt < iterations && current < resumeAt) {
            // Died before starting anything: do not loop forever.
            report.findings.push({ kind: 'crash', seed, iteration: resumeAt, detail: `child could not start (code ${code}): ${stderr.trim().slice(-500)}` });
            finish(iterations);
          } else finish(iterations);
        });
      });
    }
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
  report.seconds = (Date.now() - started) / 1000;
  return report;
}

export function formatReport(r: FuzzReport): string {
  const lines = [
    `fuzz: seed ${r.seed}, ${r.iterations} iterations in ${r.seconds.toFixed(1)} s (stopped by ${r.stoppedBy})`,
    `outcomes: ${Object.entries(r.outcomes).sort().map(([k, v]) => `${k} ${v}`).join(', ')}`,
    `slowest iteration ${r.slowestMs.toFixed(0)} ms, max child RSS ${r.maxRssMiB.toFixed(0)} MiB`,
    r.findings.length === 0 ? 'findings: none' : `findings: ${r.findings.length}`,
  ];
  for (const f of r.findings) {
    lines.push(`  ${f.kind.toUpperCase()} iteration ${f.iteration}${f.seedImage ? ` (${f.seedImage}: ${f.mutations?.join('; ')})` : ''}: ${f.detail.split('\n')[0]}`);
    lines.push(`    reproduce: npm run fuzz -- --seed ${f.seed} --only ${f.iteration}`);
  }
  return lines.join('\n');
}

function parseArgs(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) continue;
    const [k, v] = a.includes('=') ? a.slice(2).split('=', 2) as [string, string] : [a.slice(2), argv[i + 1] && !argv[i + 1]!.startsWith('--') ? argv[++i]! : 'true'];
    out[k] = v;
  }
  return out;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const seed = Number(args.seed ?? 1);
  const hostileDir = path.resolve(args['hostile-dir'] ?? process.env.QCOW_HOSTILE_DIR ?? defaultHostileDir);
  if (args.mount !== undefined) {
    const { mountFuzzMain } = await import('./fuzz-mount.js');
    process.exitCode = await mountFuzzMain(args, hostileDir);
    return;
  }
  if (args.only !== undefined) {
    // One iteration, in this process, with everything printed.
    makeHostile(hostileDir);
    const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-fuzz-'));
    try {
      const seeds = loadSeeds(hostileDir, workDir);
      const i = Number(args.only);
      const m = mutate(Rng.forIteration(seed, i), seeds);
      console.log(`seed ${seed} iteration ${i}: ${m.seed} with ${m.mutations.join('; ')}`);
      if (args.keep) {
        fs.writeFileSync(args.keep, m.bytes);
        console.log(`mutant written to ${args.keep}`);
      }
      const r = runIteration(seed, i, seeds, workDir);
      console.log(`outcome ${r.outcome} in ${r.ms.toFixed(0)} ms${r.detail ? `\n${r.detail}` : ''}`);
      process.exitCode = r.outcome === 'bug' ? 1 : 0;
    } finally {
      fs.rmSync(workDir, { recursive: true, force: true });
    }
    return;
  }
  const report = await runFuzz({
    seed,
    iterations: Number(args.iterations ?? 1000),
    timeLimitSec: args['time-limit'] ? Number(args['time-limit']) : undefined,
    deadlineSec: args.deadline ? Number(args.deadline) : undefined,
    rssLimitMiB: args['rss-limit'] ? Number(args['rss-limit']) : undefined,
    hostileDir,
    log: (l) => console.log(l),
  });
  console.log(formatReport(report));
  process.exitCode = report.findings.length > 0 ? 1 : 0;
}

if (process.argv.includes('--child')) childMain();
// No top-level await: main imports scripts/fuzz-mount.ts, which imports this module.
else if (process.argv[1] && path.resolve(process.argv[1]) === here) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
