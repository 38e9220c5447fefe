/**
 * The parts of QEMU's migration stream (the VM state `savevm` writes) that hold the guest's RAM: the
 * QEVM header, the configuration section (machine type), section headers and footers, and the records
 * of the `ram` section (block list, page, zero page, end of section). Device state is never decoded: its
 * length is written nowhere, so a reader stops once RAM is complete (savevm sends all RAM first).
 *
 * Each decoder reads from `bytes[at, end)` and returns the number of bytes it took, or 0 when the item
 * runs past `end` (the caller reads on and retries); bad bytes throw a QcowError naming the stream
 * offset (`base + at`). No I/O, no allocation beyond the decoded item.
 *
 * Sources: qemu/qemu migration/savevm.c (qemu_savevm_state_header, save_section_header/footer,
 * vmstate_configuration), migration/ram.c (ram_save_setup, save_page_header, ram_load_precopy).
 */
import { QcowError, hex } from '../errors.js';

export const QEVM_MAGIC = 0x5145564d;
export const QEVM_VERSION = 3;

/** Top-level item types (savevm.c QEMU_VM_*). */
export const SectionType = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/** Flags in the low bits of each `ram` record's first 64-bit word (ram.c RAM_SAVE_FLAG_*). */
export const RamFlag = {
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  HOOK: 0x80,
  COMPRESS_PAGE: 0x100,
  MULTIFD_FLUSH: 0x200,
} as const;

/** The `ram` section version QEMU has written since 2.x (and still does). */
export const RAM_SECTION_VERSION = 4;
/** Bounds for hostile streams: the most RAM blocks a block list may name, the longest machine type. */
export const MAX_RAM_BLOCKS = 4096;
export const MAX_MACHINE_TYPE_LENGTH = 256;
/** The smallest record a page can cost in the stream (a zero page of the current block: BE64 + fill). */
export const MIN_PAGE_RECORD_BYTES = 9;

export interface StreamHeader {
  version: number;
}

export interface Configuration {
  /** The resolved machine type, e.g. `pc-i440fx-7.2` or `pc-q35-7.2`. */
  machineType: string;
  /** From the `configuration/target-page-bits` subsection (only targets with variable page size). */
  targetPageBits?: number;
  /** From the `configuration/capabilities` subsection: migration capabilities the source had on. */
  capabilities: string[];
}

export interface SectionHeader {
  type: 'start' | 'part' | 'end' | 'full';
  sectionId: number;
  /** START and FULL only. */
  idstr?: string;
  instanceId?: number;
  versionId?: number;
}

export interface RamBlockInfo {
  name: string;
  /** used_length in bytes. */
  length: number;
}

/** One `ram` record, decoded into a reused object (a stream holds millions of them). */
export class RamRecord {
  /** 'page' (data follows), 'zero' (one fill byte), 'blocks' (the block list), 'eos', 'flush'. */
  kind: 'page' | 'zero' | 'blocks' | 'eos' | 'flush' = 'eos';
  /** Offset of the page in its block (page and zero records). */
  offset = 0;
  /** The block named by this record, or undefined when it continues the previous record's block. */
  blockName: string | undefined = undefined;
  /** Zero records: the byte the whole page is filled with (always 0 in modern QEMU). */
  fill = 0;
  /** Page records: where the page's bytes start, as an index into the decoded bytes. */
  dataAt = 0;
  /** Block list records: every block with its length, in stream order. */
  blocks: RamBlockInfo[] = [];
  /** Block list records: the total the list must add up to. */
  totalBytes = 0;
}

/** Where an error is reported: the image file and a prefix naming the VM state. */
export interface StreamContext {
  file: string;
  /** e.g. `snapshot 1 ("s1") VM state` */
  what: string;
}

function bad(ctx: StreamContext, streamOffset: number, problem: string, code: 'EBADIMAGE' | 'EUNSUPPORTED' = 'EBADIMAGE'): QcowError {
  return new QcowError(code, ctx.file, `${ctx.what}: ${problem} (at stream offset ${hex(streamOffset)})`);
}

function u32(bytes: Uint8Array, at: number): number {
  return ((bytes[at] << 24) >>> 0) + (bytes[at + 1] << 16) + (bytes[at + 2] << 8) + bytes[at + 3];
}

/** A big-endian 64-bit field as a number, or -1 when it does not fit in 2^53. */
function u64(bytes: Uint8Array, at: number): number {
  const hi = u32(bytes, at);
  if (hi >= 0x200000) return -1;
  return hi * 0x1_0000_0000 + u32(bytes, at + 4);
}

function latin1(bytes: Uint8Array, at: number, length: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + at, length).toString('latin1');
}

/** `QEVM` and version 3: 8 bytes. */
export function decodeStreamHeader(bytes: Uint8Array, at: number, end: number, ctx: StreamContext): { header: StreamHeader; length: number } | undefined {
  if (end - at < 8) return undefined;
  const magic = u32(bytes, at);
  if (magic !== QEVM_MAGIC) throw bad(ctx, at, `does not start with the QEVM magic (found ${hex(magic)}): not a QEMU migration stream`);
  const version = u32(bytes, at + 4);
  if (version !== QEVM_VERSION) throw bad(ctx, at + 4, `QEVM stream version ${version} is not supported (only ${QEVM_VERSION})`, 'EUNSUPPORTED');
  return { header: { version }, length: 8 };
}

/**
 * The configuration section, its type byte included: `0x07, BE32 len, name[len]`, then any known
 * subsections (`0x05, u8 len, name, BE32 version, fields`).
 */
export function decodeConfiguration(bytes: Uint8Array, at: number, end: number, ctx: StreamContext, base: number): { configuration: Configuration; length: number } | undefined {
  let p = at + 1;
  if (end - p < 4) return undefined;
  const nameLength = u32(bytes, p);
  if (nameLength === 0 || nameLength > MAX_MACHINE_TYPE_LENGTH) {
    throw bad(ctx, base + p, `configuration section names a machine type of ${nameLength} bytes (1 to ${MAX_MACHINE_TYPE_LENGTH} expected)`);
  }
  p += 4;
  if (end - p < nameLength) return undefined;
  const configuration: Configuration = { machineType: latin1(bytes, p, nameLength), capabilities: [] };
  p += nameLength;
  for (;;) {
    if (p >= end) return undefined;
    if (bytes[p] !== SectionType.SUBSECTION) break;
    if (end - p < 2) return undefined;
    const idLength = bytes[p + 1];
    if (end - p < 2 + idLength + 4) return undefined;
    const id = latin1(bytes, p + 2, idLength);
    const fields = p + 2 + idLength + 4;
    if (id === 'configuration/target-page-bits') {
      if (end - fields < 4) return undefined;
      const bits = u32(bytes, fields);
      if (bits < 10 || bits > 16) throw bad(ctx, base + fields, `target page bits ${bits} are out of range (10 to 16)`, 'EUNSUPPORTED');
      configuration.targetPageBits = bits;
      p = fields + 4;
    } else if (id === 'configuration/capabilities') {
      if (end - fields < 4) return undefined;
      const count = u32(bytes, fields);
      if (count > 256) throw bad(ctx, base + fields, `configuration lists ${count} capabilities (at most 256)`);
      let q = fields + 4;
      for (let i = 0; i < count; i++) {
        if (q >= end) return undefined;
        const n = bytes[q];
        if (end - q < 1 + n) return undefined;
        configuration.capabilities.push(latin1(bytes, q + 1, n));
        q += 1 + n;
      }
      p = q;
    } else if (id === 'configuration/uuid') {
      if (end - fields < 16) return undefined;
      p = fields + 16;
    } else {
      throw bad(ctx, base + p, `unknown configuration subsection "${id}"`, 'EUNSUPPORTED');
    }
  }
  return { configuration, length: p - at };
}

/** A section header, its type byte included (START/FULL: id, idstr, instance, version; PART/END: id). */
export function decodeSectionHeader(bytes: Uint8Array, at: number, end: number): { section: SectionHeader; length: number } | undefined {
  const type = bytes[at];
  if (type === SectionType.PART || type === SectionType.END) {
    if (end - at < 5) return undefined;
    return { section: { type: type === SectionType.PART ? 'part' : 'end', sectionId: u32(bytes, at + 1) }, length: 5 };
  }
  if (end - at < 6) return undefined;
  const idLength = bytes[at + 5];
  const length = 6 + idLength + 8;
  if (end - at < length) return undefined;
  return {
    section: {
      type: type === SectionType.START ? 'start' : 'full',
      sectionId: u32(bytes, at + 1),
      idstr: latin1(bytes, at + 6, idLength),
      instanceId: u32(bytes, at + 6 + idLength),
      versionId: u32(bytes, at + 10 + idLength),
    },
    length,
  };
}

/** A section footer, its type byte included: `0x7E, BE32 section_id`. */
export function decodeSectionFooter(bytes: Uint8Array, at: number, end: number): { sectionId: number; length: number } | undefined {
  if (end - at < 5) return undefined;
  return { sectionId: u32(bytes, at + 1), length: 5 };
}

/**
 * One record of the `ram` section into `out`. `pageSize` is the target page size (the flags live in
 * the bits below it). Records that savevm never writes (XBZRLE, RDMA hooks, compressed pages) are
 * refused: their pages could not be served. `streamSize` bounds what a block list may claim.
 */
export function decodeRamRecord(bytes: Uint8Array, at: number, end: number, pageSize: number, out: RamRecord, ctx: StreamContext, base: number, streamSize = Infinity): number {
  if (end - at < 8) return 0;
  const hi = u32(bytes, at);
  const lo = u32(bytes, at + 4);
  const flags = lo & (pageSize - 1);
  if (hi >= 0x200000) throw bad(ctx, base + at, `ram record address ${hex((BigInt(hi) << 32n) | BigInt(lo - flags))} is too large`);
  const address = hi * 0x1_0000_0000 + (lo - flags);
  let p = at + 8;

  if (flags & RamFlag.MEM_SIZE) {
    if (flags !== RamFlag.MEM_SIZE) throw bad(ctx, base + at, `ram block list record has extra flags ${hex(flags)}`, 'EUNSUPPORTED');
    // The list has no terminator: blocks follow until their lengths add up to the total.
    out.kind = 'blocks';
    out.totalBytes = address;
    // Every page costs at least a zero-page record: a total claiming more cannot be this stream's.
    const pages = Math.ceil(address / pageSize);
    if (pages * MIN_PAGE_RECORD_BYTES > streamSize - (base + p)) {
      throw bad(ctx, base + at, `ram block list claims ${hex(address)} bytes of RAM (${pages} pages), more than a VM state of ${streamSize} bytes can hold`);
    }
    out.blocks = [];
    let sum = 0;
    while (sum < out.totalBytes) {
      if (out.blocks.length >= MAX_RAM_BLOCKS) throw bad(ctx, base + p, `ram block list names more than ${MAX_RAM_BLOCKS} blocks`);
      if (p >= end) return 0;
      const n = bytes[p];
      if (end - p < 1 + n + 8) return 0;
      if (n === 0) throw bad(ctx, base + p, `ram block ${out.blocks.length} has an empty name`);
      const name = latin1(bytes, p + 1, n);
      const length = u64(bytes, p + 1 + n);
      if (length < 0) throw bad(ctx, base + p + 1 + n, `ram block "${name}" length is too large`);
      sum += length;
      if (sum > out.totalBytes) {
        throw bad(ctx, base + p, `ram block lengths add up to more than the list's total ${hex(out.totalBytes)} (block "${name}", ${hex(length)} bytes)`);
      }
      out.blocks.push({ name, length });
      p += 1 + n + 8;
    }
    return p - at;
  }
  if (flags & RamFlag.EOS) {
    if (flags !== RamFlag.EOS) throw bad(ctx, base + at, `ram end-of-section record has extra flags ${hex(flags)}`, 'EUNSUPPORTED');
    out.kind = 'eos';
    return 8;
  }
  if (flags === RamFlag.MULTIFD_FLUSH) {
    out.kind = 'flush';
    return 8;
  }
  const dataKind = flags & ~RamFlag.CONTINUE;
  if (dataKind !== RamFlag.PAGE && dataKind !== RamFlag.ZERO) {
    const what =
      dataKind & RamFlag.XBZRLE ? 'XBZRLE-encoded page' : dataKind & RamFlag.COMPRESS_PAGE ? 'compressed page' : dataKind & RamFlag.HOOK ? 'RDMA hook' : `record with flags ${hex(flags)}`;
    throw bad(ctx, base + at, `unsupported ram ${what}`, 'EUNSUPPORTED');
  }
  out.offset = address;
  if (flags & RamFlag.CONTINUE) {
    out.blockName = undefined;
  } else {
    if (p >= end) return 0;
    const n = bytes[p];
    if (end - p < 1 + n) return 0;
    if (n === 0) throw bad(ctx, base + p, 'ram page record names an empty block');
    out.blockName = latin1(bytes, p + 1, n);
    p += 1 + n;
  }
  if (dataKind === RamFlag.ZERO) {
    if (p >= end) return 0;
    out.kind = 'zero';
    out.fill = bytes[p];
    return p + 1 - at;
  }
  if (end - p < pageSize) return 0;
  out.kind = 'page';
  out.dataAt = p;
  return p + pageSize - at;
}
