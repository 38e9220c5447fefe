/**
 * Hand-built qcow2 images for unit tests of decoding and translation. Everything here is written from
 * the specification (../shared/qcow2-format.md, QEMU's docs/interop/qcow2.rst), never from the library's
 * own encoders, so a test that compares what the library reads with what was placed here can fail.
 *
 * Two levels:
 * - `encodeHeader`, `ext*`, `encodeSnapshotEntry`: raw on-disk structures with every field settable to
 *   any value (also invalid ones), for decoder tests.
 * - `ImageBuilder`: a whole valid image (header, L1 and L2 tables, data clusters, compressed clusters,
 *   extended L2, snapshot table, backing file name) in memory, written to a temporary file on request.
 *
 * Comparisons with QEMU's own images are done elsewhere; this is only for decoding and translation.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { compress as zstdCompress } from 'zstd-napi';

export const MAGIC = 0x514649fb;
export const EXT = {
  end: 0x00000000,
  backingFormat: 0xe2792aca,
  featureTable: 0x6803f857,
  bitmaps: 0x23852875,
  crypto: 0x0537be77,
  dataFile: 0x44415441,
} as const;

/** Bit 63 of an L1/L2 entry: "copied" (refcount 1). */
export const COPIED = 1n << 63n;
/** Bit 62 of an L2 entry: compressed cluster. */
export const COMPRESSED = 1n << 62n;
/** Bit 0 of a standard L2 entry (v3): reads as zeros. */
export const ZERO_FLAG = 1n;

// ---------------------------------------------------------------------------------------------------
// Raw structures

/** Every header field as stored; 64-bit ones as bigint (or number) so any value can be written. */
export interface HeaderFields {
  magic?: number;
  version?: number;
  backingFileOffset?: bigint | number;
  backingFileSize?: number;
  clusterBits?: number;
  size?: bigint | number;
  cryptMethod?: number;
  l1Size?: number;
  l1TableOffset?: bigint | number;
  refcountTableOffset?: bigint | number;
  refcountTableClusters?: number;
  nbSnapshots?: number;
  snapshotsOffset?: bigint | number;
  /** v3 fields: written only when version >= 3 (or when `writeV3Fields` is set). */
  incompatibleFeatures?: bigint;
  compatibleFeatures?: bigint;
  autoclearFeatures?: bigint;
  refcountOrder?: number;
  headerLength?: number;
  /** Byte 104; written when set (meaningful when header_length > 104). */
  compressionType?: number;
}

export interface ExtensionSpec {
  type: number;
  data: Uint8Array;
  /** The length written in the extension header (default: data.length). */
  declaredLength?: number;
}

export interface EncodeHeaderOptions {
  /** Total bytes of the returned buffer (default: one cluster, 2^clusterBits, or 4096 if out of range). */
  bytes?: number;
  extensions?: ExtensionSpec[];
  /** Write the type-0 end marker after the extensions (default true). */
  endMarker?: boolean;
  /** Where the extensions start (default: header_length; 72 for v2). */
  extensionsAt?: number;
  /** Bytes written at backing_file_offset (the backing file name). */
  backingName?: string | Uint8Array;
  /** Write the v3 fields (72..104) even for another version. */
  writeV3Fields?: boolean;
}

function u64(v: bigint | number): bigint {
  return typeof v === 'bigint' ? v : BigInt(v);
}

export function pad8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/** Encodes a header from raw field values (defaults: a valid v3 image, 64 KiB clusters, 1 MiB disk). */
export function encodeHeader(fields: HeaderFields = {}, options: EncodeHeaderOptions = {}): Buffer {
  const version = fields.version ?? 3;
  const clusterBits = fields.clusterBits ?? 16;
  const headerLength = fields.headerLength ?? (version >= 3 ? 104 : 72);
  const total = options.bytes ?? (clusterBits >= 9 && clusterBits <= 22 ? 2 ** clusterBits : 4096);
  const buf = Buffer.alloc(total);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const put32 = (at: number, v: number) => at + 4 <= total && dv.setUint32(at, v >>> 0);
  const put64 = (at: number, v: bigint | number) => at + 8 <= total && dv.setBigUint64(at, u64(v));
  put32(0, fields.magic ?? MAGIC);
  put32(4, version);
  put64(8, fields.backingFileOffset ?? 0);
  put32(16, fields.backingFileSize ?? 0);
  put32(20, clusterBits);
  put64(24, fields.size ?? 1024 * 1024);
  put32(32, fields.cryptMethod ?? 0);
  put32(36, fields.l1Size ?? 1);
  put64(40, fields.l1TableOffset ?? 2 ** clusterBits * 3);
  put64(48, fields.refcountTableOffset ?? 2 ** clusterBits);
  put32(56, fields.refcountTableClusters ?? 1);
  put32(60, fields.nbSnapshots ?? 0);
  put64(64, fields.snapshotsOffset ?? 0);
  if (version >= 3 || options.writeV3Fields) {
    put64(72, fields.incompatibleFeatures ?? 0n);
    put64(80, fields.compatibleFeatures ?? 0n);
    put64(88, fields.autoclearFeatures ?? 0n);
    put32(96, fields.refcountOrder ?? 4);
    put32(100, headerLength);
  }
  if (fields.compressionType !== undefined && total > 104) buf[104] = fields.compressionType;

  // A header_length under the fixed fields (an invalid header) must not let extensions overwrite them.
  let at = options.extensionsAt ?? (version >= 3 ? Math.max(headerLength, 104) : 72);
  for (const ext of options.extensions ?? []) {
    put32(at, ext.type);
    put32(at + 4, ext.declaredLength ?? ext.data.length);
    buf.set(ext.data.subarray(0, Math.max(0, Math.min(ext.data.length, total - at - 8))), at + 8);
    at += 8 + pad8(ext.data.length);
  }
  if (options.endMarker !== false) {
    put32(at, EXT.end);
    put32(at + 4, 0);
  }
  if (options.backingName !== undefined) {
    const name = typeof options.backingName === 'string' ? Buffer.from(options.backingName) : options.backingName;
    buf.set(name, Number(u64(fields.backingFileOffset ?? 0)));
  }
  return buf;
}

/** The offset right after the extensions `encodeHeader` writes (past the end marker). */
export function extensionsEnd(headerLength: number, extensions: ExtensionSpec[]): number {
  return extensions.reduce((at, e) => at + 8 + pad8(e.data.length), headerLength) + 8;
}

export function extBackingFormat(name: string): ExtensionSpec {
  return { type: EXT.backingFormat, data: Buffer.from(name) };
}

export function extDataFile(name: string): ExtensionSpec {
  return { type: EXT.dataFile, data: Buffer.from(name) };
}

/** Feature name table entries: 48 bytes each, u8 type, u8 bit, 46-byte NUL-padded name. */
export function extFeatureTable(entries: { type: number; bit: number; name: string | Uint8Array }[]): ExtensionSpec {
  const data = Buffer.alloc(entries.length * 48);
  entries.forEach((e, i) => {
    data[i * 48] = e.type;
    data[i * 48 + 1] = e.bit;
    const name = typeof e.name === 'string' ? Buffer.from(e.name) : e.name;
    data.set(name.subarray(0, 46), i * 48 + 2);
  });
  return { type: EXT.featureTable, data };
}

/** Bitmaps extension: u32 nb_bitmaps, u32 reserved, u64 bitmap_directory_size, u64 bitmap_directory_offset. */
export function extBitmaps(count: number, directorySize: bigint | number, directoryOffset: bigint | number): ExtensionSpec {
  const data = Buffer.alloc(24);
  data.writeUInt32BE(count, 0);
  data.writeBigUInt64BE(u64(directorySize), 8);
  data.writeBigUInt64BE(u64(directoryOffset), 16);
  return { type: EXT.bitmaps, data };
}

/** Full disk encryption header pointer: u64 offset, u64 length. */
export function extCrypto(offset: bigint | number, length: bigint | number): ExtensionSpec {
  const data = Buffer.alloc(16);
  data.writeBigUInt64BE(u64(offset), 0);
  data.writeBigUInt64BE(u64(length), 8);
  return { type: EXT.crypto, data };
}

/** Every field of a snapshot table entry as stored. */
export interface SnapshotEntryFields {
  l1TableOffset?: bigint | number;
  l1Size?: number;
  id?: string | Uint8Array;
  name?: string | Uint8Array;
  /** Written sizes (default: the byte lengths of id and name). */
  idSize?: number;
  nameSize?: number;
  dateSec?: number;
  dateNsec?: number;
  vmClockNsec?: bigint;
  vmStateSize?: number;
  /** Extra data bytes as stored (use `snapshotExtra` to build the known fields). */
  extra?: Uint8Array;
  /** Written extra_data_size (default: extra.length). */
  extraDataSize?: number;
}

/** Extra data: [0..8) vm_state_size_large, [8..16) disk_size, [16..24) icount, then anything. */
export function snapshotExtra(fields: { vmStateSizeLarge?: bigint | number; diskSize?: bigint | number; icount?: bigint; tail?: Uint8Array }, size: number): Buffer {
  const b = Buffer.alloc(Math.max(size, 24 + (fields.tail?.length ?? 0)));
  b.writeBigUInt64BE(u64(fields.vmStateSizeLarge ?? 0), 0);
  b.writeBigUInt64BE(u64(fields.diskSize ?? 0), 8);
  b.writeBigUInt64BE(fields.icount ?? 0xffff_ffff_ffff_ffffn, 16);
  if (fields.tail) b.set(fields.tail, 24);
  return b.subarray(0, size);
}

/** One snapshot table entry, padded with zeros to a multiple of 8 bytes. */
export function encodeSnapshotEntry(f: SnapshotEntryFields): Buffer {
  const id = typeof f.id === 'string' || f.id === undefined ? Buffer.from(f.id ?? '1') : Buffer.from(f.id);
  const name = typeof f.name === 'string' || f.name === undefined ? Buffer.from(f.name ?? 'snap') : Buffer.from(f.name);
  const extra = f.extra ?? new Uint8Array(0);
  const len = 40 + extra.length + id.length + name.length;
  const b = Buffer.alloc(pad8(len));
  b.writeBigUInt64BE(u64(f.l1TableOffset ?? 0), 0);
  b.writeUInt32BE(f.l1Size ?? 0, 8);
  b.writeUInt16BE(f.idSize ?? id.length, 12);
  b.writeUInt16BE(f.nameSize ?? name.length, 14);
  b.writeUInt32BE(f.dateSec ?? 0, 16);
  b.writeUInt32BE(f.dateNsec ?? 0, 20);
  b.writeBigUInt64BE(f.vmClockNsec ?? 0n, 24);
  b.writeUInt32BE(f.vmStateSize ?? 0, 32);
  b.writeUInt32BE(f.extraDataSize ?? extra.length, 36);
  b.set(extra, 40);
  b.set(id, 40 + extra.length);
  b.set(name, 40 + extra.length + id.length);
  return b;
}

/**
 * A compressed cluster descriptor, from the spec: x = 62 - (cluster_bits - 8); bits 0..x-1 the host
 * byte offset, bits x..61 the number of 512-byte sectors after the one holding the offset, bit 62 set.
 */
export function compressedEntry(clusterBits: number, hostOffset: number, compressedLength: number): bigint {
  const x = BigInt(62 - (clusterBits - 8));
  const additional = Math.floor((hostOffset + compressedLength - 1) / 512) - Math.floor(hostOffset / 512);
  return COMPRESSED | (BigInt(additional) << x) | BigInt(hostOffset);
}

// ---------------------------------------------------------------------------------------------------
// Whole images

export interface BuilderOptions {
  version?: 2 | 3;
  clusterBits?: number;
  /** Virtual disk size (the header's size field). */
  size: number;
  extendedL2?: boolean;
  compression?: 'zlib' | 'zstd';
  backingFile?: string;
  backingFormat?: string;
  /** Extra incompatible bits to set (dirty = 1n, corrupt = 2n). */
  incompatibleExtra?: bigint;
  /** The active L1 table's entry count (default: just enough for `size`). */
  l1Size?: number;
  /** Header length for v3 (default 112 with zstd, else 104). */
  headerLength?: number;
  /** Name of an external data file (sets incompatible bit 2 and the data file name extension). */
  dataFile?: string;
  /** Set autoclear bit 1: the external data file is raw. */
  dataFileRaw?: boolean;
}

export interface SnapshotSpec {
  /** The L1 space holding this snapshot's disk (from `builder.space(...)`). */
  space: L1Space;
  id: string;
  name: string;
  dateSec?: number;
  dateNsec?: number;
  vmClockNsec?: bigint;
  /** The disk size recorded in the extra data (default: the image's size). */
  diskSize?: number;
  vmStateSize?: number;
  /** extra_data_size (default 16: vm_state_size_large and disk_size, as QEMU writes). */
  extraDataSize?: number;
  icount?: bigint;
}

/** Standard (64-bit) L2 entry helpers. */
export function dataEntry(host: number): bigint {
  return COPIED | BigInt(host);
}

/** One L1 table's worth of guest space: the active disk or a snapshot's (disk and VM state). */
export class L1Space {
  /** L2 table host offsets by L1 index. */
  readonly l2: Map<number, number> = new Map();
  /** Raw L1 entries that override the computed ones (for corrupt-image tests). */
  readonly rawL1: Map<number, bigint> = new Map();
  /** Host offset of the data cluster allocated for a guest cluster by `write`. */
  readonly dataClusters: Map<number, number> = new Map();
  l1Offset = 0;

  constructor(
    readonly builder: ImageBuilder,
    readonly name: string,
    /** Entries in this L1 table (0: computed from the guest clusters used). */
    public l1Size: number,
  ) {}

  /** The host offset of the L2 table for `l1Index`, allocating it on first use. */
  l2Table(l1Index: number): number {
    let at = this.l2.get(l1Index);
    if (at === undefined) {
      at = this.builder.allocClusters(1);
      this.l2.set(l1Index, at);
    }
    return at;
  }

  /** Makes this space use another space's L2 table for `l1Index` (as snapshots share tables). */
  shareL2(from: L1Space, l1Index: number): void {
    this.l2.set(l1Index, from.l2Table(l1Index));
  }

  /** Writes the L2 entry (and, with extended L2, the bitmap) of a guest cluster. */
  setEntry(guestCluster: number, entry: bigint, bitmap = 0n): void {
    const b = this.builder;
    const l1Index = Math.floor(guestCluster / b.l2Entries);
    const table = this.l2Table(l1Index);
    const at = table + (guestCluster % b.l2Entries) * b.entryBytes;
    b.image.writeBigUInt64BE(entry, at);
    if (b.entryBytes === 16) b.image.writeBigUInt64BE(bitmap, at + 8);
  }

  /** Sets a raw L1 entry (e.g. a misaligned or out-of-file L2 offset). */
  setL1(l1Index: number, entry: bigint): void {
    this.rawL1.set(l1Index, entry);
  }

  /**
   * Writes guest data: allocates data clusters on first touch (in call order, so clusters written in
   * ascending order are host-contiguous) and marks them allocated (extended L2: all subclusters).
   */
  write(guest: number, bytes: Uint8Array): void {
    const b = this.builder;
    let done = 0;
    while (done < bytes.length) {
      const g = guest + done;
      const cluster = Math.floor(g / b.clusterSize);
      const inCluster = g % b.clusterSize;
      const n = Math.min(bytes.length - done, b.clusterSize - inCluster);
      let host = this.dataClusters.get(cluster);
      if (host === undefined) {
        this.l2Table(Math.floor(cluster / b.l2Entries)); // the table first, so data clusters stay contiguous
        host = b.allocClusters(1);
        this.dataClusters.set(cluster, host);
        this.setEntry(cluster, dataEntry(host), b.entryBytes === 16 ? 0xffff_ffffn : 0n);
      }
      b.image.set(bytes.subarray(done, done + n), host + inCluster);
      done += n;
    }
  }

  /** A whole data cluster at a given host offset (allocated when omitted). Returns the host offset. */
  dataCluster(guestCluster: number, content: Uint8Array, host?: number): number {
    const b = this.builder;
    this.l2Table(Math.floor(guestCluster / b.l2Entries));
    host ??= b.allocClusters(1);
    b.image.set(content.subarray(0, b.clusterSize), host);
    this.setEntry(guestCluster, dataEntry(host), b.entryBytes === 16 ? 0xffff_ffffn : 0n);
    this.dataClusters.set(guestCluster, host);
    return host;
  }

  /**
   * With an external data file: guest cluster N lives at the same offset in the data file. The entry
   * has the copied bit, which tells offset 0 (guest cluster 0) from "unallocated".
   */
  externalCluster(guestCluster: number, bitmap = 0xffff_ffffn): void {
    const b = this.builder;
    this.setEntry(guestCluster, COPIED | BigInt(guestCluster * b.clusterSize), b.entryBytes === 16 ? bitmap : 0n);
  }

  /** v3 zero cluster, optionally with a preallocated (aligned) host cluster. */
  zeroCluster(guestCluster: number, preallocatedHost = 0): void {
    this.setEntry(guestCluster, (preallocatedHost ? COPIED | BigInt(preallocatedHost) : 0n) | ZERO_FLAG);
  }

  /**
   * A compressed cluster: `content` (one cluster) compressed with the image's codec and stored at the
   * next byte of the file after `skip` bytes, followed by `trailing` bytes. Returns where it went.
   */
  compressedCluster(guestCluster: number, content: Uint8Array, options: { skip?: number; trailing?: Uint8Array; raw?: Uint8Array } = {}): { offset: number; length: number; entry: bigint } {
    const b = this.builder;
    const data = options.raw ?? b.compress(content);
    // QEMU stores a cluster compressed only when that takes less than a cluster (else uncompressed).
    if (!options.raw && data.length >= b.clusterSize) throw new Error(`cluster does not compress (${data.length} bytes)`);
    b.appendBytes(options.skip ?? 0);
    const at = b.appendBytes(data.length);
    b.image.set(data, at);
    if (options.trailing) {
      const after = b.appendBytes(options.trailing.length); // may grow (replace) b.image
      b.image.set(options.trailing, after);
    }
    const entry = compressedEntry(b.clusterBits, at, data.length);
    this.setEntry(guestCluster, entry);
    return { offset: at, length: data.length, entry };
  }

  /**
   * Extended L2: a cluster with an allocation bitmap (bits 0..31) and a zero bitmap (bits 32..63,
   * given here as a 32-bit mask). `content` fills the host cluster (allocated when alloc != 0 or
   * `host` is given).
   */
  subclusters(guestCluster: number, alloc: number, zero: number, content?: Uint8Array, host?: number): number {
    const b = this.builder;
    this.l2Table(Math.floor(guestCluster / b.l2Entries));
    let at = host ?? 0;
    if (at === 0 && (alloc !== 0 || content)) at = b.allocClusters(1);
    if (content) b.image.set(content.subarray(0, b.clusterSize), at);
    const bitmap = (BigInt(zero >>> 0) << 32n) | BigInt(alloc >>> 0);
    this.setEntry(guestCluster, at ? dataEntry(at) : 0n, bitmap);
    return at;
  }
}

export class ImageBuilder {
  readonly version: 2 | 3;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly extendedL2: boolean;
  readonly entryBytes: 8 | 16;
  readonly l2Entries: number;
  /** Guest bytes one L2 table maps. */
  readonly l2Span: number;
  readonly compression: 'zlib' | 'zstd';
  /** The image's bytes so far (grown on demand). */
  image: Buffer;
  /** Bytes used: the file's size. */
  end: number;
  readonly active: L1Space;
  private readonly spaces: L1Space[] = [];
  private readonly snapshots: SnapshotSpec[] = [];

  constructor(readonly options: BuilderOptions) {
    this.version = options.version ?? 3;
    this.clusterBits = options.clusterBits ?? 16;
    this.clusterSize = 2 ** this.clusterBits;
    this.extendedL2 = options.extendedL2 ?? false;
    this.entryBytes = this.extendedL2 ? 16 : 8;
    this.l2Entries = this.clusterSize / this.entryBytes;
    this.l2Span = this.l2Entries * this.clusterSize;
    this.compression = options.compression ?? 'zlib';
    this.image = Buffer.alloc(this.clusterSize * 8);
    // Cluster 0: header. Cluster 1: refcount table (readers ignore refcounts; kept for realism).
    this.end = this.clusterSize * 2;
    this.active = this.space('active', options.l1Size ?? Math.ceil(options.size / this.l2Span));
  }

  /** A new L1 space (for a snapshot); `l1Size` 0 = as many entries as its used L2 tables need. */
  space(name: string, l1Size = 0): L1Space {
    const s = new L1Space(this, name, l1Size);
    this.spaces.push(s);
    return s;
  }

  private grow(to: number): void {
    if (to <= this.image.length) return;
    let n = this.image.length;
    while (n < to) n *= 2;
    const next = Buffer.alloc(n);
    this.image.copy(next);
    this.image = next;
  }

  /** Appends `n` zeroed, cluster-aligned clusters; returns the host offset of the first. */
  allocClusters(n: number): number {
    const at = Math.ceil(this.end / this.clusterSize) * this.clusterSize;
    this.end = at + n * this.clusterSize;
    this.grow(this.end);
    return at;
  }

  /** Appends `n` bytes at the current end of the file (not aligned); returns their offset. */
  appendBytes(n: number): number {
    const at = this.end;
    this.end += n;
    this.grow(this.end);
    return at;
  }

  compress(content: Uint8Array): Buffer {
    return this.compression === 'zstd' ? zstdCompress(content) : zlib.deflateRawSync(content);
  }

  addSnapshot(spec: SnapshotSpec): void {
    this.snapshots.push(spec);
  }

  /** Lays out L1 tables, the snapshot table and the header; returns the whole file. */
  build(): Buffer {
    for (const s of this.spaces) {
      const used = Math.max(0, ...s.l2.keys(), ...s.rawL1.keys()) + 1;
      const entries = s.l1Size || (s.l2.size || s.rawL1.size ? used : 0);
      s.l1Size = entries;
      if (entries === 0) continue;
      s.l1Offset = this.allocClusters(Math.ceil((entries * 8) / this.clusterSize));
      for (const [i, l2] of s.l2) if (i < entries) this.image.writeBigUInt64BE(COPIED | BigInt(l2), s.l1Offset + i * 8);
      for (const [i, raw] of s.rawL1) if (i < entries) this.image.writeBigUInt64BE(raw, s.l1Offset + i * 8);
    }
    let snapshotsOffset = 0;
    if (this.snapshots.length > 0) {
      const entries = this.snapshots.map((sn) =>
        encodeSnapshotEntry({
          l1TableOffset: sn.space.l1Offset,
          l1Size: sn.space.l1Size,
          id: sn.id,
          name: sn.name,
          dateSec: sn.dateSec ?? 0,
          dateNsec: sn.dateNsec ?? 0,
          vmClockNsec: sn.vmClockNsec ?? 0n,
          vmStateSize: Math.min(sn.vmStateSize ?? 0, 0xffffffff),
          extra: snapshotExtra(
            { vmStateSizeLarge: sn.vmStateSize ?? 0, diskSize: sn.diskSize ?? this.options.size, icount: sn.icount },
            sn.extraDataSize ?? 16,
          ),
        }),
      );
      const table = Buffer.concat(entries);
      snapshotsOffset = this.allocClusters(Math.ceil(table.length / this.clusterSize));
      table.copy(this.image, snapshotsOffset);
    }

    const extensions: ExtensionSpec[] = [];
    if (this.options.backingFormat !== undefined) extensions.push(extBackingFormat(this.options.backingFormat));
    if (this.options.dataFile !== undefined) extensions.push(extDataFile(this.options.dataFile));
    let incompatible = this.options.incompatibleExtra ?? 0n;
    if (this.options.dataFile !== undefined) incompatible |= 4n;
    if (this.compression === 'zstd') incompatible |= 8n;
    if (this.extendedL2) incompatible |= 16n;
    const headerLength = this.options.headerLength ?? (this.compression === 'zstd' ? 112 : 104);
    const hdrLen = this.version === 3 ? headerLength : 72;
    const backingName = this.options.backingFile;
    const backingAt = backingName !== undefined ? extensionsEnd(hdrLen, extensions) : 0;
    const header = encodeHeader(
      {
        version: this.version,
        clusterBits: this.clusterBits,
        size: this.options.size,
        l1Size: this.active.l1Size,
        l1TableOffset: this.active.l1Offset,
        refcountTableOffset: this.clusterSize,
        refcountTableClusters: 1,
        nbSnapshots: this.snapshots.length,
        snapshotsOffset,
        incompatibleFeatures: incompatible,
        autoclearFeatures: this.options.dataFileRaw ? 2n : 0n,
        headerLength,
        compressionType: this.version === 3 && headerLength > 104 ? (this.compression === 'zstd' ? 1 : 0) : undefined,
        backingFileOffset: backingAt,
        backingFileSize: backingName !== undefined ? Buffer.byteLength(backingName) : 0,
      },
      { extensions, backingName, bytes: this.clusterSize },
    );
    header.copy(this.image, 0);
    return Buffer.from(this.image.subarray(0, this.end));
  }

  /** Builds and writes the image to `file`; returns the path. */
  writeTo(file: string): string {
    fs.writeFileSync(file, this.build());
    return file;
  }
}

/** A fresh temporary folder, and a function removing it. */
export function tempDir(prefix = 'qcow-test-'): { dir: string; file: (name: string) => string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, file: (name) => path.join(dir, name), cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Deterministic, non-repeating-looking bytes (so a misplaced cluster shows up in a comparison). */
export function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/** Bytes that compress well but are not all one value. */
export function compressible(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (Math.floor(i / 64) * 31 + seed * 7) & 0xff;
  return b;
}
