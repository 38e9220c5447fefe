/**
 * Builds the catalogue of hostile and broken qcow2 images: small valid images made by qemu-img and
 * qemu-io, copied and patched at named fields, each with the outcome the library and the mount must
 * show. Usage: `tsx scripts/make-hostile.ts [OUT_DIR]` (default fixtures/hostile). Idempotent: a
 * catalogue made by the same version of this script and the same QEMU is reused as it is.
 *
 * The builder reads the images with its own few lines of byte arithmetic, never with the library under
 * test. Outcomes:
 * - `refused`: openImage throws a QcowError with `code`, one line, starting with the path of
 *   `messageFile` (default `file`) and containing every string of `messageIncludes`.
 * - `eio-region`: openImage succeeds; reads touching `region` of `view` throw QcowError EIO; every other
 *   read of every view equals the view's oracle (QEMU's output where QEMU could read the image).
 * - `ok`: opens, and every view equals its oracle.
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32, deflateRawSync } from 'node:zlib';

/**
 * `hidden`: a damaged snapshot table or snapshot opens with those snapshots hidden and listed as
 * problems (the other views equal QEMU's); with `strict` it is refused as `refused` entries are.
 */
export type HostileExpect = 'refused' | 'eio-region' | 'ok' | 'hidden';

export interface HostileEntry {
  name: string;
  description: string;
  /** The image (or folder, fifo...) to open, relative to the catalogue's folder. */
  file: string;
  expect: HostileExpect;
  /** For `hidden`: the snapshots (by name) left out of the image. */
  hides?: string[];
  /** For `refused` (and `hidden` opened with `strict`): the QcowError code. */
  code?: 'EBADIMAGE' | 'EUNSUPPORTED' | 'ENOENT' | 'EACCES';
  /** Strings the one-line message must contain (the field and the value). */
  messageIncludes: string[];
  /** The file the message must start with, where it is not `file` (relative). */
  messageFile?: string;
  /** For `eio-region`: guest [offset, length] of `view` that must read EIO. */
  region?: [number, number];
  /** The view `region` applies to: 'active' (default), 'snapshot:NAME'. */
  view?: string;
  /** View -> raw file (relative) holding the bytes every readable part must equal. */
  oracles?: Record<string, string>;
  /** Whether `qemu-img convert` could read the active view (where it could, its output is the oracle). */
  qemu?: 'reads' | 'fails';
  /** Read granularity for the checks: the image's cluster size. */
  chunk?: number;
  /**
   * For a guest disk holding a hostile partition table: the partition numbers the active disk's table
   * must give, and strings its problem list must contain (reading it never throws).
   */
  partitions?: { numbers: number[]; problems: string[] };
  /** The RAM in this snapshot's VM state cannot be rebuilt: image.memory() throws this one-line QcowError. */
  memory?: { snapshot: string; code: 'EBADIMAGE' | 'EUNSUPPORTED'; messageIncludes: string[] };
}

export interface HostileCatalogue {
  stamp: string;
  qemu: string;
  entries: HostileEntry[];
}

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..');
export const defaultHostileDir = path.join(repoRoot, 'fixtures', 'hostile');

// ---------------------------------------------------------------------------------------------------
// Tools

function run(cmd: string, args: string[], cwd: string): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function tryRun(cmd: string, args: string[], cwd: string): boolean {
  try {
    run(cmd, args, cwd);
    return true;
  } catch {
    return false;
  }
}

function qemuVersion(): string {
  return execFileSync('qemu-img', ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim();
}

// ---------------------------------------------------------------------------------------------------
// Byte patching (big-endian, at file offsets)

function readAt(file: string, position: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    fs.readSync(fd, buf, 0, length, position);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

function writeAt(file: string, position: number, bytes: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, position);
  } finally {
    fs.closeSync(fd);
  }
}

const u32 = (file: string, at: number) => readAt(file, at, 4).readUInt32BE(0);
const u16 = (file: string, at: number) => readAt(file, at, 2).readUInt16BE(0);
const u64 = (file: string, at: number) => readAt(file, at, 8).readBigUInt64BE(0);
const u64n = (file: string, at: number) => Number(u64(file, at));

function put32(file: string, at: number, value: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value >>> 0);
  writeAt(file, at, b);
}
function put16(file: string, at: number, value: number): void {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(value);
  writeAt(file, at, b);
}
function put64(file: string, at: number, value: bigint | number): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(value));
  writeAt(file, at, b);
}

/** Header field offsets (docs: /work/shared/qcow2-format.md). */
const H = {
  magic: 0,
  version: 4,
  backingFileOffset: 8,
  backingFileSize: 16,
  clusterBits: 20,
  size: 24,
  cryptMethod: 32,
  l1Size: 36,
  l1TableOffset: 40,
  nbSnapshots: 60,
  snapshotsOffset: 64,
  incompatible: 72,
  refcountOrder: 96,
  headerLength: 100,
} as const;

const L2_OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;

interface Geometry {
  clusterBits: number;
  clusterSize: number;
  entryBytes: number;
  l2Entries: number;
  l2Span: number;
  l1Offset: number;
  l1Size: number;
}

function geometry(file: string): Geometry {
  const clusterBits = u32(file, H.clusterBits);
  const clusterSize = 2 ** clusterBits;
  const extended = (u64(file, H.incompatible) & 16n) !== 0n;
  const entryBytes = extended ? 16 : 8;
  const l2Entries = clusterSize / entryBytes;
  return { clusterBits, clusterSize, entryBytes, l2Entries, l2Span: l2Entries * clusterSize, l1Offset: u64n(file, H.l1TableOffset), l1Size: u32(file, H.l1Size) };
}

/** File position of the L1 entry that maps `guest`, in the L1 table at `l1Offset`. */
function l1EntryPos(g: Geometry, guest: number, l1Offset = g.l1Offset): number {
  return l1Offset + Math.floor(guest / g.l2Span) * 8;
}

/** File position of the L2 entry that maps `guest` (the L2 table must exist). */
function l2EntryPos(file: string, g: Geometry, guest: number, l1Offset = g.l1Offset): number {
  const l2 = Number(u64(file, l1EntryPos(g, guest, l1Offset)) & L2_OFFSET_MASK);
  if (l2 === 0) throw new Error(`${file}: no L2 table for guest ${guest}`);
  return l2 + Math.floor((guest % g.l2Span) / g.clusterSize) * g.entryBytes;
}

function hostCluster(file: string, g: Geometry, guest: number): number {
  return Number(u64(file, l2EntryPos(file, g, guest)) & L2_OFFSET_MASK);
}

function compressedDescriptor(entry: bigint, clusterBits: number): { offset: number; end: number } {
  const x = BigInt(62 - (clusterBits - 8));
  const offset = Number(entry & ((1n << x) - 1n));
  const sectors = Number((entry >> x) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1;
  return { offset, end: (offset & ~511) + sectors * 512 };
}

interface SnapshotPos {
  at: number;
  l1Offset: number;
  extraSize: number;
  idSize: number;
  nameSize: number;
  name: string;
}

function snapshotEntries(file: string): SnapshotPos[] {
  const count = u32(file, H.nbSnapshots);
  let at = u64n(file, H.snapshotsOffset);
  const out: SnapshotPos[] = [];
  for (let i = 0; i < count; i++) {
    const extraSize = u32(file, at + 36);
    const idSize = u16(file, at + 12);
    const nameSize = u16(file, at + 14);
    const name = readAt(file, at + 40 + extraSize + idSize, nameSize).toString('utf8');
    out.push({ at, l1Offset: u64n(file, at), extraSize, idSize, nameSize, name });
    at += Math.ceil((40 + extraSize + idSize + nameSize) / 8) * 8;
  }
  return out;
}

/** A seeded byte source, so the catalogue is the same on every machine. */
function seededBytes(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Compressible but not trivially repeating text, one distinct block per 4 KiB. */
function compressibleData(length: number): Buffer {
  const words = ['qcow', 'cluster', 'snapshot', 'backing', 'refcount', 'deflate', 'zstd', 'guest', 'sector', 'hostile'];
  const out = Buffer.alloc(length);
  let x = 12345;
  let pos = 0;
  while (pos < length) {
    x = (x * 1103515245 + 12345) >>> 0;
    const w = `${words[x % words.length]}-${(x >>> 8) % 1000} `;
    pos += out.write(w, pos);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// The catalogue

class Builder {
  readonly entries: HostileEntry[] = [];
  constructor(readonly dir: string) {}

  p(rel: string): string {
    return path.join(this.dir, rel);
  }
  qimg(...args: string[]): string {
    return run('qemu-img', args, this.dir);
  }
  qio(file: string, ...cmds: string[]): void {
    run('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file], this.dir);
  }
  /** LUKS creation times PBKDF2 and fails about one try in three here ("Unable to get accurate CPU usage"). */
  qimgRetry(...args: string[]): string {
    for (let i = 0; ; i++) {
      try {
        return this.qimg(...args);
      } catch (err) {
        if (i >= 40 || !String((err as { stderr?: string }).stderr ?? err).includes('accurate CPU usage')) throw err;
      }
    }
  }
  qio1(file: string, ...cmds: string[]): void {
    run('qemu-io', ['-f', 'qcow', ...cmds.flatMap((c) => ['-c', c]), file], this.dir);
  }
  /** QEMU's raw output of the active view; undefined when QEMU cannot read the image. */
  convert(image: string, out: string): boolean {
    return tryRun('qemu-img', ['convert', '-O', 'raw', image, out], this.dir);
  }
  /** QEMU's raw output of a snapshot: a copy reverted to it, converted. */
  snapshotRaw(image: string, snapshot: string, out: string): void {
    const copy = `${out}.tmp.qcow2`;
    fs.copyFileSync(this.p(image), this.p(copy));
    this.qimg('snapshot', '-a', snapshot, copy);
    this.qimg('convert', '-O', 'raw', copy, out);
    fs.rmSync(this.p(copy));
  }
  copy(from: string, to: string): string {
    fs.mkdirSync(path.dirname(this.p(to)), { recursive: true });
    fs.copyFileSync(this.p(from), this.p(to));
    return this.p(to);
  }
  add(e: HostileEntry): void {
    if (this.entries.some((x) => x.name === e.name)) throw new Error(`duplicate entry ${e.name}`);
    this.entries.push(e);
  }
  /** A copy of `base` patched by `patch`, refused at open. */
  refused(name: string, base: string, description: string, messageIncludes: string[], patch: (file: string) => void, code: HostileEntry['code'] = 'EBADIMAGE'): void {
    const file = `${name}.qcow2`;
    patch(this.copy(base, file));
    this.add({ name, description, file, expect: 'refused', code, messageIncludes });
  }
  /**
   * A copy of `base` patched by `patch`, whose `region` reads EIO. The oracle is QEMU's output of the
   * patched image where QEMU reads it, else the base image's (the patch touches only the region).
   */
  eio(name: string, base: string, baseRaw: string, description: string, region: [number, number], messageIncludes: string[], patch: (file: string) => void, chunk = 4096): void {
    const file = `${name}.qcow2`;
    patch(this.copy(base, file));
    const own = `${name}.qemu.raw`;
    const reads = this.convert(file, own);
    this.add({ name, description, file, expect: 'eio-region', messageIncludes, region, oracles: { active: reads ? own : baseRaw }, qemu: reads ? 'reads' : 'fails', chunk });
  }
  /** A raw guest disk holding a hostile partition table, converted to qcow2 by QEMU; QEMU's raw output is the oracle. */
  partitionDisk(name: string, description: string, raw: Buffer, partitions: NonNullable<HostileEntry['partitions']>): void {
    fs.writeFileSync(this.p(`${name}.guest.raw`), raw);
    this.qimg('convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', `${name}.guest.raw`, `${name}.qcow2`);
    fs.rmSync(this.p(`${name}.guest.raw`));
    if (!this.convert(`${name}.qcow2`, `${name}.qemu.raw`)) throw new Error(`qemu-img cannot read ${name}.qcow2`);
    this.add({ name, description, file: `${name}.qcow2`, expect: 'ok', messageIncludes: [], oracles: { active: `${name}.qemu.raw` }, qemu: 'reads', chunk: 4096, partitions });
  }
  /** A copy of `base` patched by `patch` whose damage hides the snapshots `hides`; `oracles` for what stays. */
  hidden(name: string, base: string, description: string, hides: string[], messageIncludes: string[], oracles: Record<string, string>, patch: (file: string) => void): void {
    const file = `${name}.qcow2`;
    patch(this.copy(base, file));
    this.add({ name, description, file, expect: 'hidden', code: 'EBADIMAGE', hides, messageIncludes, oracles, qemu: this.convert(file, `${name}.qemu.raw`) ? 'reads' : 'fails', chunk: 4096 });
  }
  ok(name: string, file: string, description: string, oracles: Record<string, string>, chunk = 4096): void {
    this.add({ name, description, file, expect: 'ok', messageIncludes: [], oracles, qemu: 'reads', chunk });
  }
}

function build(dir: string): HostileEntry[] {
  const b = new Builder(dir);
  const MiB = 1024 * 1024;

  // --- Base images -----------------------------------------------------------------------------------
  // base: 8 MiB, 4 KiB clusters (an L2 table maps 2 MiB: four L1 entries), data in every L1 span.
  b.qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'base.qcow2', '8M');
  b.qio('base.qcow2', 'write -P 0x11 0 256k', 'write -z 1M 64k', 'write -P 0x22 2M 128k', 'write -P 0x33 4M 64k', 'write -P 0x44 6M 64k');
  b.qimg('convert', '-O', 'raw', 'base.qcow2', 'base.raw');
  b.ok('base', 'base.qcow2', 'the valid image every header patch starts from', { active: 'base.raw' });

  // seq: 2 MiB (one L2 table), the first 1 MiB written in order: host clusters follow guest order.
  b.qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'seq.qcow2', '2M');
  b.qio('seq.qcow2', 'write -P 0x5a 0 1M');
  b.qimg('convert', '-O', 'raw', 'seq.qcow2', 'seq.raw');

  // compressed (zlib and zstd): 1 MiB of compressible text, every cluster compressed.
  fs.writeFileSync(b.p('text.raw'), compressibleData(MiB));
  b.qimg('convert', '-q', '-c', '-O', 'qcow2', '-o', 'cluster_size=4096', 'text.raw', 'zlib.qcow2');
  b.qimg('convert', '-q', '-c', '-O', 'qcow2', '-o', 'cluster_size=4096,compression_type=zstd', 'text.raw', 'zstd.qcow2');
  b.ok('compressed-zlib', 'zlib.qcow2', 'valid: every cluster zlib-compressed', { active: 'text.raw' });
  b.ok('compressed-zstd', 'zstd.qcow2', 'valid: every cluster zstd-compressed', { active: 'text.raw' });

  // extended L2: 64 KiB clusters of 32 subclusters.
  b.qimg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=65536', 'ext.qcow2', '4M');
  b.qio('ext.qcow2', 'write -P 0x55 0 64k', 'write -P 0x66 128k 4k', 'write -z 256k 2k', 'write -P 0x67 258k 2k');
  b.qimg('convert', '-O', 'raw', 'ext.qcow2', 'ext.raw');
  b.ok('extended-l2', 'ext.qcow2', 'valid: extended L2 entries with partly allocated clusters', { active: 'ext.raw' }, 65536);

  // snap: two internal snapshots; the snapshot table is the last thing in the file.
  b.qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'snap.qcow2', '8M');
  b.qio('snap.qcow2', 'write -P 0x11 0 64k');
  b.qimg('snapshot', '-c', 's1', 'snap.qcow2');
  b.qio('snap.qcow2', 'write -P 0x22 32k 64k', 'write -P 0x33 3M 64k');
  b.qimg('snapshot', '-c', 's2', 'snap.qcow2');
  b.qimg('convert', '-O', 'raw', 'snap.qcow2', 'snap.raw');
  b.snapshotRaw('snap.qcow2', 's1', 'snap-s1.raw');
  b.snapshotRaw('snap.qcow2', 's2', 'snap-s2.raw');
  const snapOracles = { active: 'snap.raw', 'snapshot:s1': 'snap-s1.raw', 'snapshot:s2': 'snap-s2.raw' };
  b.ok('snapshots', 'snap.qcow2', 'valid: two internal snapshots', snapOracles);

  // chain: a qcow2 backing file and an overlay naming it relatively.
  b.qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'chain-base.qcow2', '8M');
  b.qio('chain-base.qcow2', 'write -P 0x77 0 1M', 'write -P 0x78 5M 64k');
  b.qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'chain-base.qcow2', '-F', 'qcow2', 'chain-top.qcow2', '8M');
  b.qio('chain-top.qcow2', 'write -P 0x79 512k 64k');
  b.qimg('convert', '-O', 'raw', 'chain-top.qcow2', 'chain-top.raw');
  b.ok('backing-chain', 'chain-top.qcow2', 'valid: an overlay on a qcow2 backing file', { active: 'chain-top.raw' });

  // v2: the old header (72 bytes, no feature fields).
  b.qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096,compat=0.10', 'v2.qcow2', '4M');
  b.qio('v2.qcow2', 'write -P 0x21 0 128k', 'write -P 0x22 3M 64k');
  b.qimg('convert', '-O', 'raw', 'v2.qcow2', 'v2.raw');
  b.ok('version-2', 'v2.qcow2', 'valid: a version 2 image', { active: 'v2.raw' });

  // An external data file (named relatively), valid.
  b.qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096,data_file=datafile-data.raw', 'datafile.qcow2', '2M');
  b.qio('datafile.qcow2', 'write -P 0x31 0 64k', 'write -P 0x32 1M 64k');
  b.qimg('convert', '-O', 'raw', 'datafile.qcow2', 'datafile.raw');
  b.ok('external-data-file', 'datafile.qcow2', 'valid: guest data in an external data file', { active: 'datafile.raw' });

  const g = geometry(b.p('base.qcow2'));

  // --- Header ----------------------------------------------------------------------------------------
  b.refused('bad-magic', 'base.qcow2', 'magic is QFI\\xfa', ['magic', '0x514649fa'], (f) => put32(f, H.magic, 0x514649fa));
  b.refused('version-0', 'base.qcow2', 'version 0', ['version 0'], (f) => put32(f, H.version, 0));
  // Version 1 is read as the older qcow format: a qcow2 header patched to it has cluster_bits 0 there.
  b.refused('version-1', 'base.qcow2', 'version 1: read as qcow v1, whose cluster_bits byte (32) is 0 here', ['cluster_bits 0'], (f) => put32(f, H.version, 1));
  b.refused('version-4', 'base.qcow2', 'version 4', ['version 4'], (f) => put32(f, H.version, 4));
  b.refused('incompatible-unknown-bit', 'base.qcow2', 'incompatible feature bit 5 set, no name for it', ['incompatible', 'bit 5'], (f) =>
    put64(f, H.incompatible, u64(f, H.incompatible) | (1n << 5n)),
  );
  b.refused('incompatible-bit-63', 'base.qcow2', 'incompatible feature bit 63 set', ['incompatible', 'bit 63'], (f) =>
    put64(f, H.incompatible, u64(f, H.incompatible) | (1n << 63n)),
  );
  b.refused('incompatible-unknown-bit-named', 'base.qcow2', 'incompatible bit 5 set and named in the feature name table', ['incompatible', '"hostile future feature"', 'bit 5'], (f) => {
    put64(f, H.incompatible, u64(f, H.incompatible) | (1n << 5n));
    // A feature name table naming incompatible bit 5, in place of the extension list's end marker.
    const at = findExtensionEnd(f);
    const ext = Buffer.alloc(8 + 48 + 8);
    ext.writeUInt32BE(0x6803f857, 0);
    ext.writeUInt32BE(48, 4);
    ext[8] = 0; // incompatible
    ext[9] = 5; // bit
    ext.write('hostile future feature', 10);
    writeAt(f, at, ext);
  });
  b.refused('header-length-small', 'base.qcow2', 'header_length 72 in a version 3 header', ['header_length', '72'], (f) => put32(f, H.headerLength, 72));
  b.refused('header-length-huge', 'base.qcow2', 'header_length 0xffffffff', ['header_length', '4294967295'], (f) => put32(f, H.headerLength, 0xffffffff));
  b.refused('header-length-past-cluster', 'base.qcow2', 'header_length one byte more than the cluster', ['header_length', '4097'], (f) => put32(f, H.headerLength, 4097));
  b.refused('cluster-bits-8', 'base.qcow2', 'cluster_bits 8 (256-byte clusters)', ['cluster_bits', '8'], (f) => put32(f, H.clusterBits, 8));
  b.refused('cluster-bits-22', 'base.qcow2', 'cluster_bits 22 (4 MiB clusters)', ['cluster_bits', '22'], (f) => put32(f, H.clusterBits, 22));
  b.refused('cluster-bits-huge', 'base.qcow2', 'cluster_bits 0xffffffff', ['cluster_bits', '4294967295'], (f) => put32(f, H.clusterBits, 0xffffffff));
  b.refused('size-2-63', 'base.qcow2', 'size 2^63', ['size', '0x8000000000000000'], (f) => put64(f, H.size, 1n << 63n));
  b.refused('size-2-53-plus', 'base.qcow2', 'size 2^53 + 512', ['size', '0x20000000000200'], (f) => put64(f, H.size, (1n << 53n) + 512n));
  b.refused('size-over-l1', 'base.qcow2', 'size 2^52: safe, but the 4-entry L1 table cannot map it', ['l1_size', '4', 'too small'], (f) => put64(f, H.size, 1n << 52n));
  b.refused('l1-size-2-30', 'base.qcow2', 'l1_size 2^30 (an 8 GiB L1 table)', ['l1_size', '1073741824'], (f) => put32(f, H.l1Size, 2 ** 30));
  b.refused('l1-size-max', 'base.qcow2', 'l1_size 0xffffffff', ['l1_size', '4294967295'], (f) => put32(f, H.l1Size, 0xffffffff));
  b.refused('l1-size-past-eof', 'base.qcow2', 'l1_size 100000: under the 32 MiB limit, but past the end of the file', ['L1 table', '800000 bytes', 'past the end of the file'], (f) => put32(f, H.l1Size, 100000));
  b.refused('l1-size-small', 'base.qcow2', 'l1_size 2 for an 8 MiB disk that needs 4', ['l1_size', '2', 'too small'], (f) => put32(f, H.l1Size, 2));
  b.refused('l1-table-past-eof', 'base.qcow2', 'l1_table_offset 256 MiB, past the end of the file', ['L1 table', '0x10000000', 'past the end of the file'], (f) => put64(f, H.l1TableOffset, 0x1000_0000));
  b.refused('l1-table-misaligned', 'base.qcow2', 'l1_table_offset not cluster aligned', ['l1_table_offset', `0x${(g.l1Offset + 8).toString(16)}`, 'aligned'], (f) => put64(f, H.l1TableOffset, g.l1Offset + 8));
  b.refused('l1-table-at-0', 'base.qcow2', 'l1_table_offset 0: the L1 table over the header', ['l1_table_offset', 'offset 0'], (f) => put64(f, H.l1TableOffset, 0));
  b.refused('l1-table-offset-huge', 'base.qcow2', 'l1_table_offset 2^63', ['l1_table_offset', '0x8000000000000000'], (f) => put64(f, H.l1TableOffset, 1n << 63n));
  b.refused('refcount-order-7', 'base.qcow2', 'refcount_order 7 (128-bit refcounts)', ['refcount_order', '7'], (f) => put32(f, H.refcountOrder, 7));
  b.refused('crypt-method-9', 'base.qcow2', 'crypt_method 9', ['crypt_method', '9'], (f) => put32(f, H.cryptMethod, 9));
  b.refused('crypt-method-luks-no-header', 'base.qcow2', 'crypt_method 2 (LUKS) without the encryption header extension', ['LUKS', 'encryption header extension'], (f) => put32(f, H.cryptMethod, 2));
  b.refused('extension-overrun', 'base.qcow2', 'a header extension claiming 1 MiB', ['header extension', 'length 1048576'], (f) => {
    const at = findExtensionEnd(f);
    put32(f, at, 0x12345678); // unknown type: only its length matters
    put32(f, at + 4, MiB);
  });
  b.refused('compression-type-7', 'base.qcow2', 'compression_type 7 with the compression type bit', ['compression_type', '7'], (f) => {
    put64(f, H.incompatible, u64(f, H.incompatible) | 8n);
    writeAt(f, 104, Buffer.from([7]));
  });
  b.refused('backing-name-too-long', 'base.qcow2', 'backing_file_size 2000', ['backing_file_size', '2000'], (f) => {
    put64(f, H.backingFileOffset, 0x800);
    put32(f, H.backingFileSize, 2000);
  });
  b.refused('backing-name-outside-cluster', 'base.qcow2', 'backing_file_offset past the first cluster', ['backing file name', '0x10000'], (f) => {
    put64(f, H.backingFileOffset, 0x10000);
    put32(f, H.backingFileSize, 8);
  });
  b.hidden('snapshots-offset-past-eof', 'snap.qcow2', 'snapshots_offset past the end of the file', ['s1', 's2'], ['snapshot', '0x10000000', 'past the end of the file'], { active: 'snap.raw' }, (f) => put64(f, H.snapshotsOffset, 0x1000_0000));

  // --- L1 and L2 entries ------------------------------------------------------------------------------
  b.eio('l1-entry-past-eof', 'base.qcow2', 'base.raw', 'L1 entry 1 names an L2 table at 256 MiB, past the end of the file', [2 * MiB, 2 * MiB], ['L2 table', '0x10000000', 'past the end'], (f) =>
    put64(f, l1EntryPos(g, 2 * MiB), 0x1000_0000n | (1n << 63n)),
  );
  b.eio('l1-entry-misaligned', 'base.qcow2', 'base.raw', 'L1 entry 2 names an L2 table 512 bytes off a cluster boundary', [4 * MiB, 2 * MiB], ['L2 table', 'not cluster aligned'], (f) => {
    const at = l1EntryPos(g, 4 * MiB);
    put64(f, at, u64(f, at) + 512n);
  });
  b.eio('l2-entry-past-eof', 'base.qcow2', 'base.raw', 'the L2 entry of guest cluster 1 names a host cluster at 256 MiB', [4096, 4096], ['0x10000000', 'past the end of the file'], (f) =>
    put64(f, l2EntryPos(f, g, 4096), 0x1000_0000n | (1n << 63n)),
  );
  b.eio('l2-entry-offset-huge', 'base.qcow2', 'base.raw', 'the L2 entry of guest cluster 3 names host offset 2^56 - 4096', [3 * 4096, 4096], ['0xfffffffffff000', 'past the end of the file'], (f) =>
    put64(f, l2EntryPos(f, g, 3 * 4096), 0x00ff_ffff_ffff_f000n),
  );
  b.eio('l2-entry-misaligned', 'base.qcow2', 'base.raw', 'the L2 entry of guest cluster 2 names a host cluster 512 bytes off a boundary', [8192, 4096], ['not cluster aligned'], (f) => {
    const at = l2EntryPos(f, g, 8192);
    put64(f, at, u64(f, at) + 512n);
  });
  b.eio('zero-cluster-misaligned', 'base.qcow2', 'base.raw', 'a preallocated zero cluster with a misaligned host offset (QEMU checks it too)', [4 * 4096, 4096], ['not cluster aligned'], (f) => {
    const at = l2EntryPos(f, g, 4 * 4096);
    put64(f, at, (u64(f, at) + 512n) | 1n);
  });
  {
    const file = 'l2-reserved-bits.qcow2';
    const f = b.copy('base.qcow2', file);
    const at = l2EntryPos(f, g, 5 * 4096);
    put64(f, at, u64(f, at) | 0x1fen);
    b.ok('l2-reserved-bits', file, 'reserved bits 1..8 set in an L2 entry: QEMU ignores them, so do we', { active: b.convert(file, 'l2-reserved-bits.qemu.raw') ? 'l2-reserved-bits.qemu.raw' : 'base.raw' });
  }
  {
    // Two L1 entries naming one L2 table: legal for a reader (refcounts are not our business).
    const file = 'l2-shared.qcow2';
    const f = b.copy('base.qcow2', file);
    put64(f, l1EntryPos(g, 6 * MiB), u64(f, l1EntryPos(g, 0)));
    b.convert(file, 'l2-shared.qemu.raw');
    b.ok('l2-shared', file, 'two L1 entries name the same L2 table', { active: 'l2-shared.qemu.raw' });
  }

  // --- Compressed clusters ----------------------------------------------------------------------------
  for (const type of ['zlib', 'zstd'] as const) {
    const base = `${type}.qcow2`;
    const gc = geometry(b.p(base));
    const victim = 5 * 4096;
    b.eio(`compressed-${type}-garbage`, base, 'text.raw', `the ${type} data of guest cluster 5 overwritten with 0xff`, [victim, 4096], ['compressed cluster', 'corrupt'], (f) => {
      const entry = u64(f, l2EntryPos(f, gc, victim));
      const { offset, end } = compressedDescriptor(entry, gc.clusterBits);
      // Overwrite only up to where the next cluster's compressed data starts.
      let stop = end;
      for (let c = 0; c < MiB; c += 4096) {
        const other = compressedDescriptor(u64(f, l2EntryPos(f, gc, c)), gc.clusterBits).offset;
        if (other > offset && other < stop) stop = other;
      }
      writeAt(f, offset, Buffer.alloc(stop - offset, 0xff));
    });
    b.eio(`compressed-${type}-past-eof`, base, 'text.raw', `the ${type} descriptor of guest cluster 6 points 16 MiB past the end of the file`, [6 * 4096, 4096], ['compressed cluster', 'past the end of the file'], (f) => {
      const at = l2EntryPos(f, gc, 6 * 4096);
      const x = BigInt(62 - (gc.clusterBits - 8));
      const entry = u64(f, at);
      const sectors = entry & ~((1n << x) - 1n);
      put64(f, at, sectors | BigInt(fs.statSync(f).size + 16 * MiB));
    });
  }
  {
    const gc = geometry(b.p('zlib.qcow2'));
    b.eio('compressed-short', 'zlib.qcow2', 'text.raw', 'the descriptor of guest cluster 7 claims one sector only: its data stops short of a cluster', [7 * 4096, 4096], ['compressed cluster'], (f) => {
      const at = l2EntryPos(f, gc, 7 * 4096);
      const x = BigInt(62 - (gc.clusterBits - 8));
      const entry = u64(f, at);
      const offset = entry & ((1n << x) - 1n);
      put64(f, at, (1n << 62n) | (offset & ~511n) + 500n); // 12 bytes of a stream, then the sector ends
    });
  }

  {
    // QEMU deflates with a 4 KiB window (-12) but inflates a cluster in one call into a whole-cluster
    // buffer, where zlib checks a match's distance against what that call has written, not the window:
    // a stream whose matches reach 32 KiB back still reads. Ours must give the same bytes.
    b.qimg('convert', '-q', '-c', '-O', 'qcow2', '-o', 'cluster_size=65536', 'text.raw', 'zlib-64k.qcow2');
    const g64 = geometry(b.p('zlib-64k.qcow2'));
    const file = b.copy('zlib-64k.qcow2', 'compressed-zlib-reach-32k.qcow2');
    // 32 KiB of AES-CTR keystream (incompressible: only the repeat is matched), twice.
    const half = crypto.createCipheriv('aes-128-ctr', Buffer.alloc(16, 3), Buffer.alloc(16)).update(Buffer.alloc(32 * 1024));
    const stream = deflateRawSync(Buffer.concat([half, half]), { windowBits: 15, level: 9 });
    const at = Math.ceil(fs.statSync(file).size / 512) * 512; // appended: the other clusters' data stays
    writeAt(file, at, stream);
    const x = BigInt(62 - (g64.clusterBits - 8));
    const sectors = BigInt(Math.ceil(stream.length / 512) - 1);
    put64(file, l2EntryPos(file, g64, 3 * 65536), (1n << 62n) | (sectors << x) | BigInt(at));
    if (!b.convert('compressed-zlib-reach-32k.qcow2', 'compressed-zlib-reach-32k.qemu.raw')) throw new Error('qemu-img cannot read compressed-zlib-reach-32k.qcow2');
    b.ok('compressed-zlib-reach-32k', 'compressed-zlib-reach-32k.qcow2', 'guest cluster 3 (64 KiB) holds a raw deflate stream whose matches reach 32 KiB back (QEMU writes 4 KiB windows; it reads this)', { active: 'compressed-zlib-reach-32k.qemu.raw' }, 65536);
  }

  // --- Extended L2 ------------------------------------------------------------------------------------
  {
    const ge = geometry(b.p('ext.qcow2'));
    b.eio('extended-l2-invalid-bitmap', 'ext.qcow2', 'ext.raw', 'subcluster 0 of guest cluster 2 both allocated and zero', [128 * 1024, 65536], ['extended L2 entry', 'invalid'], (f) => {
      const at = l2EntryPos(f, ge, 128 * 1024) + 8;
      put64(f, at, u64(f, at) | (1n << 32n) | 1n);
    }, 65536);
    b.eio('extended-l2-alloc-without-offset', 'ext.qcow2', 'ext.raw', 'guest cluster 3 has subclusters allocated but no host offset', [192 * 1024, 65536], ['extended L2 entry', 'invalid'], (f) => {
      const at = l2EntryPos(f, ge, 192 * 1024);
      put64(f, at, 0n);
      put64(f, at + 8, 0xffn);
    }, 65536);
  }

  // --- Snapshot table ---------------------------------------------------------------------------------
  const snaps = snapshotEntries(b.p('snap.qcow2'));
  const activeOnly = { active: 'snap.raw' };
  b.hidden('snapshots-65535', 'snap.qcow2', 'nb_snapshots 65535 in a table of 2', ['s1', 's2'], ['snapshot', '65535'], activeOnly, (f) => put32(f, H.nbSnapshots, 65535));
  b.hidden('snapshots-2-31', 'snap.qcow2', 'nb_snapshots 2^31', ['s1', 's2'], ['nb_snapshots', '2147483648'], activeOnly, (f) => put32(f, H.nbSnapshots, 2 ** 31));
  // A table that cannot be read is hidden whole: what precedes the damage cannot be trusted either.
  b.hidden('snapshot-name-past-eof', 'snap.qcow2', 'the last snapshot\'s name_size 65535 runs past the end of the file', ['s1', 's2'], ['snapshot 1', 'name_size 65535', 'past the end of the file'], activeOnly, (f) => put16(f, snaps[1]!.at + 14, 0xffff));
  b.hidden('snapshot-extra-data-huge', 'snap.qcow2', 'extra_data_size 2^28', ['s1', 's2'], ['extra_data_size', '268435456'], activeOnly, (f) => put32(f, snaps[0]!.at + 36, 2 ** 28));
  b.hidden('snapshot-disk-size-2-63', 'snap.qcow2', 'snapshot 0\'s disk_size 2^63: only s1 is hidden', ['s1'], ['disk_size', '0x8000000000000000'], { active: 'snap.raw', 'snapshot:s2': 'snap-s2.raw' }, (f) => put64(f, snaps[0]!.at + 40 + 8, 1n << 63n));
  {
    const base = 'snap.qcow2';
    const name = 'snapshot-l1-past-eof';
    const file = `${name}.qcow2`;
    put64(b.copy(base, file), snaps[0]!.at, 0x1000_0000);
    b.add({ name, description: 'snapshot s1\'s L1 table at 256 MiB: the image opens with s1 hidden, the rest reads', file, expect: 'hidden', code: 'EBADIMAGE', hides: ['s1'], messageIncludes: ['snapshot 0', 'L1 table', 'past the end of the file'], oracles: { active: 'snap.raw', 'snapshot:s2': 'snap-s2.raw' }, qemu: 'reads', chunk: 4096 });
  }
  {
    const name = 'snapshot-l1-size-2-30';
    const file = `${name}.qcow2`;
    put32(b.copy('snap.qcow2', file), snaps[1]!.at + 8, 2 ** 30);
    b.add({ name, description: 'snapshot s2\'s l1_size 2^30: the image opens with s2 hidden, without allocating 8 GiB', file, expect: 'hidden', code: 'EBADIMAGE', hides: ['s2'], messageIncludes: ['snapshot 1', 'l1_size 1073741824'], oracles: { active: 'snap.raw', 'snapshot:s1': 'snap-s1.raw' }, qemu: 'reads', chunk: 4096 });
  }
  {
    const name = 'snapshot-l1-misaligned';
    const file = `${name}.qcow2`;
    put64(b.copy('snap.qcow2', file), snaps[0]!.at, snaps[0]!.l1Offset + 8);
    b.add({ name, description: 'snapshot s1\'s L1 table offset not cluster aligned: s1 hidden', file, expect: 'hidden', code: 'EBADIMAGE', hides: ['s1'], messageIncludes: ['snapshot 0', 'not cluster aligned'], oracles: { active: 'snap.raw', 'snapshot:s2': 'snap-s2.raw' }, qemu: 'reads', chunk: 4096 });
  }
  {
    // A huge claimed disk size: the view is 1 PiB of which only the first 8 MiB are mapped.
    const name = 'snapshot-disk-size-huge';
    const file = `${name}.qcow2`;
    put64(b.copy('snap.qcow2', file), snaps[0]!.at + 40 + 8, 2 ** 50);
    b.add({ name, description: 'snapshot s1 claims a 1 PiB disk: it opens, reads past its L1 table are zeros, extents() stays quick', file, expect: 'ok', messageIncludes: [], oracles: snapOracles, qemu: 'reads', chunk: 4096 });
  }
  makeManySnapshots(b, 'snapshots-65535-real.qcow2', 65535);
  b.add({ name: 'snapshots-65535-real', description: 'a real table of 65535 snapshots (all sharing one L1 table): opens in bounded time and memory', file: 'snapshots-65535-real.qcow2', expect: 'ok', messageIncludes: [], oracles: { active: 'base.raw', 'snapshot:s65535': 'base.raw' }, qemu: 'reads', chunk: 4096 });

  makeManySnapshots(b, 'snapshots-l1-overlapping.qcow2', 512, 1 << 20);
  fs.writeFileSync(b.p('zeros-8m.raw'), Buffer.alloc(8 * MiB));
  b.add({ name: 'snapshots-l1-overlapping', description: '512 snapshots, each with its own 8 MiB L1 table, all overlapping in 10 MiB of file: reading them all stays in bounded memory', file: 'snapshots-l1-overlapping.qcow2', expect: 'ok', messageIncludes: [], oracles: { active: 'base.raw', 'snapshot:s1': 'zeros-8m.raw', 'snapshot:s512': 'zeros-8m.raw' }, qemu: 'reads', chunk: 65536 });

  // --- Backing files ----------------------------------------------------------------------------------
  const overlay = (file: string, backing: string, format = 'qcow2') => {
    fs.mkdirSync(path.dirname(b.p(file)), { recursive: true });
    b.qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-u', '-b', backing, '-F', format, file, '8M');
  };
  overlay('backing-self.qcow2', 'chain-base.qcow2');
  b.qimg('rebase', '-u', '-b', 'backing-self.qcow2', '-F', 'qcow2', 'backing-self.qcow2');
  b.add({ name: 'backing-cycle-self', description: 'an image naming itself as its backing file', file: 'backing-self.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['backing file cycle'] });
  overlay('backing-cycle-a.qcow2', 'backing-cycle-b.qcow2');
  overlay('backing-cycle-b.qcow2', 'backing-cycle-a.qcow2');
  b.add({ name: 'backing-cycle-two', description: 'a.qcow2 -> b.qcow2 -> a.qcow2', file: 'backing-cycle-a.qcow2', messageFile: 'backing-cycle-b.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['backing file cycle', 'backing-cycle-a.qcow2 -> backing-cycle-b.qcow2 -> backing-cycle-a.qcow2'] });
  {
    let prev = 'chain-base.qcow2';
    for (let i = 1; i <= 34; i++) {
      overlay(`deep/d${i}.qcow2`, path.relative('deep', prev).replace(/^deep\//, ''));
      prev = `deep/d${i}.qcow2`;
    }
    b.add({ name: 'backing-chain-too-deep', description: 'a chain of 35 images (the limit is 32 below the top)', file: prev, expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['backing chain is deeper than 32'], messageFile: 'deep/d2.qcow2' });
  }
  overlay('sub/dotdot.qcow2', '../chain-base.qcow2');
  b.qio('sub/dotdot.qcow2', 'write -P 0x7a 1M 64k');
  b.qimg('convert', '-O', 'raw', 'sub/dotdot.qcow2', 'sub/dotdot.raw');
  b.ok('backing-dotdot', 'sub/dotdot.qcow2', 'backing name "../chain-base.qcow2": resolved against the image\'s folder, reads as QEMU does', { active: 'sub/dotdot.raw' });
  overlay('backing-json.qcow2', 'json:{"file.driver":"file","file.filename":"chain-base.qcow2"}');
  b.add({ name: 'backing-json', description: 'a json: backing name', file: 'backing-json.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['json:', 'only local files'] });
  overlay('backing-nbd.qcow2', 'nbd:localhost:10809', 'raw');
  b.add({ name: 'backing-nbd', description: 'an nbd: backing name', file: 'backing-nbd.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['nbd:localhost:10809', 'nbd: protocol'] });
  fs.mkdirSync(b.p('backing-dir'));
  overlay('backing-is-dir.qcow2', 'backing-dir');
  b.add({ name: 'backing-is-directory', description: 'the backing name is a folder', file: 'backing-is-dir.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['backing file "backing-dir"', 'directory'] });
  run('mkfifo', [b.p('backing-fifo')], dir);
  overlay('backing-is-fifo.qcow2', 'backing-fifo');
  b.add({ name: 'backing-is-fifo', description: 'the backing name is a fifo (opening it must not block)', file: 'backing-is-fifo.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['backing file "backing-fifo"', 'not a regular file'] });
  overlay('backing-control-chars.qcow2', 'evil\nname\x1b[31m.qcow2');
  b.add({ name: 'backing-name-control-chars', description: 'a backing name with a newline and an escape sequence: the message stays one line', file: 'backing-control-chars.qcow2', expect: 'refused', code: 'ENOENT', messageIncludes: ['backing file "evil\\nname\\x1b[31m.qcow2"', 'no such file'] });
  overlay('backing-missing.qcow2', 'no-such-backing.qcow2');
  b.add({ name: 'backing-missing', description: 'the backing file does not exist', file: 'backing-missing.qcow2', expect: 'refused', code: 'ENOENT', messageIncludes: ['backing file "no-such-backing.qcow2"', 'no such file'] });
  {
    // A backing file that is itself broken: the message names the backing file.
    const f = b.copy('chain-base.qcow2', 'broken-base.qcow2');
    put32(f, H.clusterBits, 30);
    overlay('backing-broken.qcow2', 'broken-base.qcow2');
    b.add({ name: 'backing-broken', description: 'the backing file has cluster_bits 30', file: 'backing-broken.qcow2', messageFile: 'broken-base.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['cluster_bits', '30'] });
  }

  // --- Truncated and odd files ------------------------------------------------------------------------
  {
    const gs = geometry(b.p('seq.qcow2'));
    const first = hostCluster(b.p('seq.qcow2'), gs, 0);
    // Cut in the middle of the data cluster of guest cluster 128: it reads data then zeros (as QEMU);
    // guest clusters 129..255 start past the end: EIO.
    const cut = first + 128 * 4096 + 1000;
    const f = b.copy('seq.qcow2', 'truncated-data.qcow2');
    fs.truncateSync(f, cut);
    b.convert('truncated-data.qcow2', 'truncated-data.qemu.raw');
    b.add({ name: 'truncated-data', description: 'file cut 1000 bytes into the data of guest cluster 128', file: 'truncated-data.qcow2', expect: 'eio-region', region: [129 * 4096, MiB - 129 * 4096], messageIncludes: ['past the end of the file'], oracles: { active: 'truncated-data.qemu.raw' }, qemu: 'reads', chunk: 4096 });

    const l2 = Number(u64(b.p('seq.qcow2'), gs.l1Offset) & L2_OFFSET_MASK);
    const f2 = b.copy('seq.qcow2', 'truncated-l2.qcow2');
    fs.truncateSync(f2, l2 + 2048);
    b.convert('truncated-l2.qcow2', 'truncated-l2.qemu.raw');
    // Entries 0..255 survive and name clusters past the end (EIO); entries 256..511 read as zeros.
    b.add({ name: 'truncated-l2', description: 'file cut in the middle of the L2 table', file: 'truncated-l2.qcow2', expect: 'eio-region', region: [0, MiB], messageIncludes: ['past the end of the file'], oracles: { active: 'truncated-l2.qemu.raw' }, qemu: 'reads', chunk: 4096 });

    const f3 = b.copy('seq.qcow2', 'truncated-l1.qcow2');
    fs.truncateSync(f3, gs.l1Offset + 4);
    b.add({ name: 'truncated-l1', description: 'file cut in the middle of the L1 table', file: 'truncated-l1.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['L1 table', 'past the end of the file'] });
  }
  b.refused('truncated-header', 'base.qcow2', 'file cut 50 bytes in', ['too short', '50 bytes'], (f) => fs.truncateSync(f, 50));
  b.refused('truncated-header-v3', 'base.qcow2', 'file cut 90 bytes in: a v2 header, not the v3 fields', ['too short', 'version 3', '90 bytes'], (f) => fs.truncateSync(f, 90));
  b.refused('truncated-extensions', 'chain-top.qcow2', 'file cut in the middle of the backing format extension', ['header extension', '0xe2792aca'], (f) => fs.truncateSync(f, u32(f, H.headerLength) + 12));
  fs.writeFileSync(b.p('empty.qcow2'), '');
  b.add({ name: 'zero-length', description: 'an empty file', file: 'empty.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['empty', '0 bytes'] });
  fs.writeFileSync(b.p('not-qcow.img'), seededBytes(7, 65536));
  b.add({ name: 'random-bytes', description: '64 KiB of random bytes', file: 'not-qcow.img', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['not a qcow2 image', 'magic'] });
  fs.mkdirSync(b.p('folder.qcow2'));
  b.add({ name: 'folder-as-image', description: 'a folder given as the image', file: 'folder.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['directory'] });
  run('mkfifo', [b.p('fifo.qcow2')], dir);
  b.add({ name: 'fifo-as-image', description: 'a fifo given as the image (opening it must not block)', file: 'fifo.qcow2', expect: 'refused', code: 'EBADIMAGE', messageIncludes: ['not a regular file'] });
  b.add({ name: 'missing-image', description: 'no such file', file: 'no-such-image.qcow2', expect: 'refused', code: 'ENOENT', messageIncludes: ['no such file'] });

  // --- External data file -----------------------------------------------------------------------------
  b.qimg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096,data_file=gone-data.raw', 'data-file-missing.qcow2', '1M');
  fs.rmSync(b.p('gone-data.raw'));
  b.add({ name: 'data-file-missing', description: 'the external data file does not exist', file: 'data-file-missing.qcow2', expect: 'refused', code: 'ENOENT', messageIncludes: ['external data file "gone-data.raw"', 'no such file'] });
  b.refused('data-file-bit-without-name', 'base.qcow2', 'the external data file bit set, no data file extension', ['external data file'], (f) => put64(f, H.incompatible, u64(f, H.incompatible) | 4n));

  // --- Hostile partition tables inside the guest disk (QEMU reads these images fine) ------------------
  const disk = () => Buffer.alloc(MiB);
  const mbrEntry = (d: Buffer, sector: number, slot: number, type: number, start: number, count: number) => {
    const at = sector * 512 + 446 + slot * 16;
    d[at + 4] = type;
    d.writeUInt32LE(start, at + 8);
    d.writeUInt32LE(count, at + 12);
    d[sector * 512 + 510] = 0x55;
    d[sector * 512 + 511] = 0xaa;
  };
  {
    const d = disk(); // extended at 64; EBR 64 -> EBR 128 -> back to EBR 64
    mbrEntry(d, 0, 0, 0x05, 64, 1024);
    mbrEntry(d, 64, 0, 0x83, 8, 8);
    mbrEntry(d, 64, 1, 0x05, 64, 64);
    mbrEntry(d, 128, 0, 0x83, 8, 8);
    mbrEntry(d, 128, 1, 0x05, 0, 64);
    b.partitionDisk('partitions-ebr-loop', 'an EBR chain that loops back to its first EBR', d, { numbers: [5, 6], problems: ['EBR loop'] });
  }
  {
    const d = disk();
    mbrEntry(d, 0, 0, 0x83, 0xffffffff, 0xffffffff);
    mbrEntry(d, 0, 1, 0x83, 64, 0xffffffff);
    mbrEntry(d, 0, 2, 0x0f, 0xfffffff0, 0xffffffff);
    b.partitionDisk('partitions-2-32-sectors', 'MBR entries of 2^32-1 sectors, one starting at sector 2^32-1, an extended one far past the disk', d, {
      numbers: [1, 2],
      problems: ['partition 1 starts beyond the end of the disk', 'partition 2 ends beyond the end of the disk: cut to', 'lies beyond the end of the disk'],
    });
  }
  const gpt = (d: Buffer, lba: number, alternate: number, entriesLba: number, count: number, entries: Buffer) => {
    const h = Buffer.alloc(92);
    h.write('EFI PART', 0, 'latin1');
    h.writeUInt32LE(0x00010000, 8);
    h.writeUInt32LE(92, 12);
    h.writeBigUInt64LE(BigInt(lba), 24);
    h.writeBigUInt64LE(BigInt(alternate), 32);
    h.writeBigUInt64LE(34n, 40);
    h.writeBigUInt64LE(2014n, 48);
    h.writeBigUInt64LE(BigInt(entriesLba), 72);
    h.writeUInt32LE(count, 80);
    h.writeUInt32LE(128, 84);
    h.writeUInt32LE(crc32(entries), 88);
    h.writeUInt32LE(crc32(h), 16);
    h.copy(d, lba * 512);
    entries.copy(d, entriesLba * 512);
  };
  const gptEntries = () => {
    const e = Buffer.alloc(128 * 128);
    Buffer.from('AF3DC60F838472478E793D69D8477DE4', 'hex').copy(e, 0); // Linux filesystem
    e.writeBigUInt64LE(100n, 32);
    e.writeBigUInt64LE(199n, 40);
    return e;
  };
  {
    const d = disk();
    mbrEntry(d, 0, 0, 0xee, 1, 2047);
    gpt(d, 1, 2047, 2, 0x7fffffff, gptEntries().subarray(0, 512)); // the CRC covers 512 bytes; the count claims 2^31-1
    b.partitionDisk('partitions-gpt-huge-count', 'a GPT header with a valid CRC claiming 2^31-1 entries, and no backup', d, {
      numbers: [],
      problems: ['2147483647 entries of 128 bytes: over the limit', 'no valid GPT header'],
    });
  }
  {
    const d = disk();
    mbrEntry(d, 0, 0, 0xee, 1, 2047);
    gpt(d, 1, 2047, 2, 128, gptEntries());
    gpt(d, 2047, 1, 2015, 128, gptEntries());
    d[512 + 16] ^= 0xff; // primary header CRC
    d[2015 * 512 + 40] ^= 0x01; // backup entries (its CRC no longer matches)
    b.partitionDisk('partitions-gpt-bad-crcs', 'GPT: the primary header CRC and the backup entry array CRC both wrong', d, {
      numbers: [],
      problems: ['primary GPT header at LBA 1: header CRC mismatch', 'backup GPT header at LBA 2047: entry array CRC mismatch'],
    });
    const fine = disk();
    mbrEntry(fine, 0, 0, 0xee, 1, 2047);
    gpt(fine, 1, 2047, 2, 128, gptEntries());
    gpt(fine, 2047, 1, 2015, 128, gptEntries());
    fine[512 + 16] ^= 0xff;
    b.partitionDisk('partitions-gpt-backup-used', 'GPT: the primary header CRC wrong, the backup copy intact', fine, {
      numbers: [1],
      problems: ['header CRC mismatch', 'used the backup copy at LBA 2047'],
    });
  }

  // Everything above must be left as it is: no test may write to the catalogue.
  for (const e of b.entries) {
    const p = b.p(e.file);
    if (fs.existsSync(p) && fs.statSync(p).isFile()) fs.chmodSync(p, 0o444);
  }
  // --- VM state: the RAM in a snapshot's migration stream ------------------------------------------------
  // A tiny TCG VM (no OS, pc, 16 MiB) saved with savevm; copies patched inside the stream. Each opens and
  // reads as usual; image.memory() of snapshot s1 is refused with one line (the mount shows no .ram/.core).
  if (tryRun('qemu-system-x86_64', ['--version'], dir)) {
    b.qimg('create', '-q', '-f', 'qcow2', 'vm.qcow2', '1M');
    execFileSync('qemu-system-x86_64', ['-nodefaults', '-display', 'none', '-S', '-machine', 'pc,accel=tcg', '-m', '16M', '-drive', 'file=vm.qcow2,if=none,id=d0,format=qcow2', '-monitor', 'stdio'], {
      cwd: dir,
      input: 'savevm s1\nquit\n',
      stdio: ['pipe', 'ignore', 'pipe'],
      timeout: 120_000,
    });
    const vm = vmStateLayout(b.p('vm.qcow2'));
    const memory = (name: string, description: string, messageIncludes: string[], patch: (file: string) => void, code: 'EBADIMAGE' | 'EUNSUPPORTED' = 'EBADIMAGE') => {
      const file = `${name}.qcow2`;
      patch(b.copy('vm.qcow2', file));
      b.add({ name, description, file, expect: 'ok', messageIncludes: [], oracles: {}, qemu: 'reads', chunk: 65536, memory: { snapshot: 's1', code, messageIncludes } });
    };
    memory('vmstate-block-list-huge', 'the RAM block list claims 2^50 bytes of RAM, more than the VM state can hold', ['block list claims 0x4000000000000 bytes of RAM'], (f) =>
      put64(f, vm.host(vm.memSizeAt), (1n << 50n) | 4n),
    );
    memory('vmstate-truncated', 'vm_state_size cut to 5000 bytes into the first page record: the stream ends inside RAM', ['the stream ends'], (f) => {
      const size = vm.firstPageAt + 5000;
      put32(f, vm.entryAt + 32, size);
      if (vm.extraSize >= 8) put64(f, vm.entryAt + 40, size);
    });
    memory('vmstate-page-past-block', 'the first data page record names offset 256 MiB of its block', ['page at 0x10000000 is past the end of ram block'], (f) => {
      const flags = u64(f, vm.host(vm.firstPageAt)) & 0xfffn;
      put64(f, vm.host(vm.firstPageAt), 0x1000_0000n | flags);
    });
    memory('vmstate-block-name-cut', 'the first block name\'s length byte says 255: the name runs into the following fields', ['VM state', 'ram block'], (f) =>
      writeAt(f, vm.host(vm.firstNameAt), Buffer.from([255])),
    );
    memory('vmstate-ram-never-ends', 'the ram section\'s END is patched to PART: device state follows a RAM section that never ends', ['before the end of RAM'], (f) =>
      writeAt(f, vm.host(vm.endAt), Buffer.from([2])), 'EUNSUPPORTED',
    );
  }

  // --- LUKS header (inside the qcow2 file, at the encryption header extension) and qcow v1 -------------
  // A valid LUKS image (aes-256-xts, 64-byte key: 4000 stripes of key material per slot), and patches of
  // its header: each is refused at open, before any PBKDF2 runs, even without a passphrase.
  b.qimgRetry('create', '-q', '--object', 'secret,id=s0,data=hostile', '-f', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=4096', 'luks.qcow2', '1M');
  const luks = luksHeaderAt(b.p('luks.qcow2'));
  const slot0 = luks.offset + 208;
  b.refused('luks-iterations-huge', 'luks.qcow2', 'LUKS key slot 0 with 2^32 - 1 PBKDF2 iterations (hours of work)', ['key slot 0', '4294967295 PBKDF2 iterations'], (f) => put32(f, slot0 + 4, 0xffffffff));
  b.refused('luks-key-material-past-end', 'luks.qcow2', 'LUKS header area (extension length) reaching 1 GiB past the end of the file', ['LUKS header area', 'does not fit in the file'], (f) => put64(f, luks.extension + 8, 1n << 30n));
  b.refused('luks-key-material-past-area', 'luks.qcow2', 'LUKS key slot 0 key material starting past the header area', ['key slot 0', 'overlaps the payload'], (f) => put32(f, slot0 + 40, 0x100000));
  b.refused('luks-payload-in-header', 'luks.qcow2', 'LUKS payload offset 1 sector: inside the 592-byte header', ['payload offset 0x200', 'inside the LUKS header'], (f) => put32(f, luks.offset + 104, 1));
  b.refused('luks-stripes-0', 'luks.qcow2', 'LUKS key slot 0 with 0 stripes', ['key slot 0 has 0 stripes'], (f) => put32(f, slot0 + 44, 0));
  b.refused('luks-cipher-unknown', 'luks.qcow2', 'LUKS cipher name "blowfish"', ['LUKS cipher "blowfish"'], (f) => writeAt(f, luks.offset + 8, Buffer.from('blowfish\0')), 'EUNSUPPORTED');
  b.refused('luks-bad-magic', 'luks.qcow2', 'LUKS magic missing at the extension offset', ['no LUKS magic'], (f) => writeAt(f, luks.offset, Buffer.from('XXXX')));

  // qcow v1 (48-byte header): l2_bits out of range, a size that overflows.
  b.qimg('create', '-q', '-f', 'qcow', 'v1.qcow', '4M');
  b.qio1('v1.qcow', 'write -P 0x61 0 64k');
  b.qimg('convert', '-f', 'qcow', '-O', 'raw', 'v1.qcow', 'v1.raw');
  b.ok('qcow-v1', 'v1.qcow', 'valid: a qcow version 1 image', { active: 'v1.raw' });
  b.refused('v1-l2-bits-14', 'v1.qcow', 'qcow v1 l2_bits 14 (128 KiB L2 tables; QEMU allows 6-13)', ['l2_bits 14'], (f) => writeAt(f, 33, Buffer.from([14])));
  b.refused('v1-l2-bits-0', 'v1.qcow', 'qcow v1 l2_bits 0', ['l2_bits 0'], (f) => writeAt(f, 33, Buffer.from([0])));
  b.refused('v1-size-overflow', 'v1.qcow', 'qcow v1 size 2^64 - 512 (overflows any L1 computation)', ['image size', 'too large'], (f) => put64(f, 24, 0xfffffffffffffe00n));
  b.refused('v1-size-huge-l1', 'v1.qcow', 'qcow v1 size 2^52: an L1 table far past the end of the file', ['L1 table', 'past end of file'], (f) => put64(f, 24, 1n << 52n));
  b.refused('v1-crypt-method-2', 'v1.qcow', 'qcow v1 crypt_method 2', ['invalid encryption method 2'], (f) => put32(f, 36, 2));
  return b.entries;
}

/** Where the LUKS header and the encryption header extension (type 0x0537be77) are in a qcow2 file. */
function luksHeaderAt(file: string): { offset: number; extension: number } {
  const f = fs.readFileSync(file);
  let at = f.readUInt32BE(100);
  for (;;) {
    const type = f.readUInt32BE(at);
    const length = f.readUInt32BE(at + 4);
    if (type === 0) throw new Error(`${file}: no encryption header extension`);
    if (type === 0x0537be77) return { offset: Number(f.readBigUInt64BE(at + 8)), extension: at + 8 };
    at += 8 + Math.ceil(length / 8) * 8;
  }
}

/** Offset of the end marker of the header extension list. */
function findExtensionEnd(file: string): number {
  let at = u32(file, H.headerLength);
  for (;;) {
    if (u32(file, at) === 0) return at;
    at += 8 + Math.ceil(u32(file, at + 4) / 8) * 8;
  }
}

/**
 * Appends a snapshot table of `count` entries named s1..sN with ids 1..N. By default every entry names
 * one copy of the active L1 table; with `overlapping`, entry k names its own L1 table of
 * `overlapping` entries at k clusters into one zero-filled area (the tables overlap, so the file stays
 * small while the tables together are huge). Refcounts are not updated: a reader does not use them.
 */
function makeManySnapshots(b: Builder, file: string, count: number, overlapping?: number): void {
  const f = b.copy('base.qcow2', file);
  const g = geometry(f);
  let end = Math.ceil(fs.statSync(f).size / g.clusterSize) * g.clusterSize;
  const l1Area = end;
  let l1Entries = g.l1Size;
  if (overlapping) {
    l1Entries = overlapping;
    end += overlapping * 8 + count * g.clusterSize;
    fs.truncateSync(f, end); // zeros: every L1 entry unallocated
  } else {
    writeAt(f, l1Area, readAt(f, g.l1Offset, g.l1Size * 8));
    end += g.clusterSize;
  }
  const parts: Buffer[] = [];
  for (let i = 1; i <= count; i++) {
    const id = Buffer.from(String(i));
    const name = Buffer.from(`s${i}`);
    const size = Math.ceil((40 + 16 + id.length + name.length) / 8) * 8;
    const e = Buffer.alloc(size);
    e.writeBigUInt64BE(BigInt(overlapping ? l1Area + (i - 1) * g.clusterSize : l1Area), 0);
    e.writeUInt32BE(l1Entries, 8);
    e.writeUInt16BE(id.length, 12);
    e.writeUInt16BE(name.length, 14);
    e.writeUInt32BE(1_700_000_000 + i, 16);
    e.writeUInt32BE(16, 36); // extra_data_size
    e.writeBigUInt64BE(8n * 1024n * 1024n, 48); // extra: vm_state_size_large 0, disk_size 8 MiB
    id.copy(e, 56);
    name.copy(e, 56 + id.length);
    parts.push(e);
  }
  const table = Buffer.concat(parts);
  writeAt(f, end, table);
  put32(f, H.nbSnapshots, count);
  put64(f, H.snapshotsOffset, end);
}

// ---------------------------------------------------------------------------------------------------

/**
 * Where things are in the first snapshot's VM state, by the builder's own walk of the stream's RAM part
 * (QEMU's layout: migration/savevm.c, migration/ram.c): stream offsets, and `host(k)` for the file
 * position of stream byte k.
 */
function vmStateLayout(file: string): { host: (k: number) => number; entryAt: number; extraSize: number; memSizeAt: number; firstNameAt: number; firstPageAt: number; endAt: number } {
  const g = geometry(file);
  const snap = snapshotEntries(file)[0]!;
  const diskSize = snap.extraSize >= 16 ? u64n(file, snap.at + 48) : u64n(file, H.size);
  const base = Math.ceil(diskSize / g.l2Span) * g.l2Span;
  const size = snap.extraSize >= 8 ? u64n(file, snap.at + 40) : u32(file, snap.at + 32);
  const host = (k: number) => Number(u64(file, l2EntryPos(file, g, base + k, snap.l1Offset)) & L2_OFFSET_MASK) + ((base + k) % g.clusterSize);
  const s = Buffer.alloc(size);
  for (let k = 0; k < size; k += g.clusterSize) readAt(file, host(k), Math.min(g.clusterSize, size - k)).copy(s, k);
  let p = 8;
  if (s[p] === 7) p += 5 + s.readUInt32BE(p + 1); // configuration
  p += 6 + s[p + 5]! + 8; // the ram section's START header
  const memSizeAt = p;
  const total = s.readBigUInt64BE(p) & ~0xfffn;
  p += 8;
  const firstNameAt = p;
  for (let sum = 0n; sum < total; ) {
    const n = s[p]!;
    sum += s.readBigUInt64BE(p + 1 + n);
    p += 1 + n + 8;
  }
  let firstPageAt = -1;
  let endAt = -1;
  for (;;) {
    for (;;) {
      const at = p;
      const flags = Number(s.readBigUInt64BE(p) & 0xfffn);
      p += 8;
      if (flags & 0x10) break; // end of section
      if (!(flags & 0x20)) p += 1 + s[p]!; // block name
      if (flags & 0x08 && firstPageAt < 0) firstPageAt = at;
      p += flags & 0x08 ? 4096 : 1;
    }
    if (endAt >= 0) break;
    if (s[p] === 0x7e) p += 5; // footer
    if (s[p] === 3) endAt = p;
    p += 5; // PART or END header
  }
  return { host, entryAt: snap.at, extraSize: snap.extraSize, memSizeAt, firstNameAt, firstPageAt, endAt };
}

function stampOf(): string {
  const source = fs.readFileSync(fileURLToPath(import.meta.url));
  return crypto.createHash('sha256').update(source).update(qemuVersion()).digest('hex').slice(0, 16);
}

/**
 * Builds the catalogue in `outDir` (or reuses the one there when it is current) and returns it. Safe to
 * call from several processes at once: each builds in its own folder and renames it into place.
 */
export function makeHostile(outDir: string = defaultHostileDir): HostileCatalogue {
  const stamp = stampOf();
  const catalogueFile = path.join(outDir, 'catalogue.json');
  const current = (): HostileCatalogue | undefined => {
    try {
      const c = JSON.parse(fs.readFileSync(catalogueFile, 'utf8')) as HostileCatalogue;
      return c.stamp === stamp ? c : undefined;
    } catch {
      return undefined;
    }
  };
  const existing = current();
  if (existing) return existing;

  const work = `${outDir}.build-${process.pid}-${Date.now()}`;
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });
  try {
    const entries = build(work);
    const catalogue: HostileCatalogue = { stamp, qemu: qemuVersion(), entries };
    fs.writeFileSync(path.join(work, 'catalogue.json'), `${JSON.stringify(catalogue, null, 2)}\n`);
    const again = current();
    if (again) return again; // another process finished first
    if (fs.existsSync(outDir)) {
      const old = `${outDir}.old-${process.pid}-${Date.now()}`;
      try {
        fs.renameSync(outDir, old);
        fs.rmSync(old, { recursive: true, force: true });
      } catch {
        /* someone else moved it */
      }
    }
    try {
      fs.renameSync(work, outDir);
    } catch {
      const other = current();
      if (other) return other;
      throw new Error(`could not put the hostile catalogue in place at ${outDir}`);
    }
    return catalogue;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** Absolute path of an entry's file. */
export function entryPath(dir: string, rel: string): string {
  return path.join(dir, rel);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const out = path.resolve(process.argv[2] ?? defaultHostileDir);
  const started = Date.now();
  const c = makeHostile(out);
  const counts = c.entries.reduce<Record<string, number>>((acc, e) => ((acc[e.expect] = (acc[e.expect] ?? 0) + 1), acc), {});
  console.log(`${out}/catalogue.json: ${c.entries.length} entries (${Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(', ')}) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
