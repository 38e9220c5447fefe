import { gptTypeName, mbrTypeName } from './partition-types.js';
import { lazyZlib } from '../lazy-builtins.js';

/**
 * Decoding of MBR (with extended/logical EBR chains) and GPT partition tables. No I/O: the caller
 * hands in a function that returns the disk's bytes at a position. A damaged table is never thrown:
 * what can be read is returned and every problem is listed, with bounded work and memory whatever
 * the table says (hostile images).
 */

/**
 * The disk's bytes at `position`: up to `length` bytes (short only at the disk's end), or undefined
 * where they cannot be read.
 */
export type ByteSource = (position: number, length: number) => Uint8Array | undefined;

export type PartitionScheme = 'mbr' | 'gpt';
export type SectorSize = 512 | 4096;

export interface PartitionEntry {
  /** The number Linux gives it: MBR primary slot 1–4, logicals 5, 6, … in chain order; GPT entry index + 1. */
  number: number;
  kind: 'primary' | 'logical' | 'gpt';
  /** Start and size in bytes, as the table says (may reach past the disk's end: see `problems`). */
  start: number;
  size: number;
  /** MBR type id as `0x83`, or the GPT type GUID (upper case). */
  type: string;
  typeName?: string;
  /** GPT partition name (UTF-16LE in the table). */
  name?: string;
  uniqueGuid?: string;
  /** GPT attribute bits as hex. */
  attributes?: string;
  /** MBR status 0x80, GPT attribute bit 2 (legacy BIOS bootable). */
  bootable: boolean;
}

export interface PartitionTable {
  scheme: PartitionScheme;
  sectorSize: SectorSize;
  /** MBR disk signature (`0x…`) or GPT disk GUID. */
  diskId?: string;
  /** Which GPT header copy the entries came from. */
  gptCopy?: 'primary' | 'backup';
  /** The partitions that hold data, by number (no extended containers, no empty slots). */
  partitions: PartitionEntry[];
  /** Everything found wrong, one line each: the table is still used as far as it goes. */
  problems: string[];
}

export interface PartitionTableOptions {
  /** Logical sector size; default: probed (GPT at 512 and 4096, else 512). */
  sectorSize?: SectorSize;
}

/** Bounds that keep a hostile table cheap. */
export const MAX_GPT_ENTRIES = 16384;
export const MAX_GPT_ENTRY_BYTES = 4 * 1024 * 1024;
/** Linux's DISK_MAX_PARTS: no more EBRs are followed. */
export const MAX_LOGICAL_PARTITIONS = 256;
const MAX_PROBLEMS = 64;

const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
const GPT_SIGNATURE = 'EFI PART';

class Problems {
  readonly list: string[] = [];
  private dropped = 0;
  add(problem: string): void {
    if (this.list.length < MAX_PROBLEMS) this.list.push(problem);
    else this.dropped++;
  }
  done(): string[] {
    if (this.dropped > 0) this.list.push(`… and ${this.dropped} more problems`);
    return this.list;
  }
}

/** The partition table of a disk of `diskSize` bytes, or undefined when it has neither MBR nor GPT. */
export function readPartitionTable(
  source: ByteSource,
  diskSize: number,
  options: PartitionTableOptions = {},
): PartitionTable | undefined {
  const problems = new Problems();
  const sector0 = source(0, 512);
  const mbr = sector0 && sector0.length >= 512 ? decodeMbr(sector0) : undefined;
  const protective = mbr?.entries.some((e) => e.type === 0xee) ?? false;

  const sizes: SectorSize[] = options.sectorSize ? [options.sectorSize] : [512, 4096];
  let gptSectorSize = sizes.find((ss) => hasGptSignature(source, ss));
  // No primary header: a surviving backup header at the disk's end tells the sector size.
  gptSectorSize ??= sizes.find((ss) => diskSize >= 2 * ss && hasGptSignature(source, Math.floor(diskSize / ss) * ss - ss));

  if (gptSectorSize !== undefined || protective) {
    const ss = gptSectorSize ?? options.sectorSize ?? 512;
    const gpt = readGpt(source, diskSize, ss, problems);
    if (gpt) {
      if (!protective) problems.add('GPT without a protective MBR (type 0xee entry)');
      else if (mbr && mbr.entries.some((e) => e.type !== 0xee && e.type !== 0 && e.sectors !== 0)) {
        problems.add('hybrid MBR: the MBR lists partitions besides the GPT; the GPT is used');
      }
      checkLayout(gpt.partitions, diskSize, problems);
      return { ...gpt, sectorSize: ss, problems: problems.done() };
    }
    if (protective || !mbr) {
      problems.add('no valid GPT header (primary or backup)');
      return { scheme: 'gpt', sectorSize: ss, partitions: [], problems: problems.done() };
    }
    problems.add('a GPT signature was found but no valid GPT header: the MBR is used');
  }
  if (!mbr) return undefined;

  const ss = options.sectorSize ?? 512;
  const partitions: PartitionEntry[] = [];
  let nextLogical = 5;
  for (const entry of mbr.entries) {
    if (entry.type === 0 || entry.sectors === 0) continue;
    if (EXTENDED_TYPES.has(entry.type)) {
      nextLogical = readLogicals(source, diskSize, ss, entry, nextLogical, partitions, problems);
    } else {
      partitions.push(mbrPartition(entry, entry.slot + 1, 'primary', entry.start, ss));
    }
  }
  partitions.sort((a, b) => a.number - b.number);
  checkLayout(partitions, diskSize, problems);
  return { scheme: 'mbr', sectorSize: ss, diskId: mbr.signature, partitions, problems: problems.done() };
}

// ---------------------------------------------------------------------------------------------- MBR

interface MbrEntry {
  slot: number;
  status: number;
  type: number;
  /** In sectors, relative to whatever the table is relative to (LBA 0, the EBR, or the extended start). */
  start: number;
  sectors: number;
}

/** The four entries of an MBR or EBR sector, or undefined without `55 AA` or with a status byte other than 0x00/0x80. */
export function decodeMbr(sector: Uint8Array, strictStatus = true): { signature: string; entries: MbrEntry[] } | undefined {
  if (sector.length < 512 || sector[510] !== 0x55 || sector[511] !== 0xaa) return undefined;
  const view = new DataView(sector.buffer, sector.byteOffset, 512);
  const entries: MbrEntry[] = [];
  for (let slot = 0; slot < 4; slot++) {
    const at = 446 + slot * 16;
    const status = sector[at];
    // Linux msdos.c: FAT and NTFS boot sectors also end in 55 AA; their "status" bytes are not 0/0x80.
    if (strictStatus && status !== 0 && status !== 0x80) return undefined;
    entries.push({
      slot,
      status,
      type: sector[at + 4],
      start: view.getUint32(at + 8, true),
      sectors: view.getUint32(at + 12, true),
    });
  }
  return { signature: `0x${view.getUint32(440, true).toString(16).padStart(8, '0')}`, entries };
}

function mbrPartition(entry: MbrEntry, number: number, kind: 'primary' | 'logical', startSector: number, ss: number): PartitionEntry {
  return {
    number,
    kind,
    start: startSector * ss,
    size: entry.sectors * ss,
    type: `0x${entry.type.toString(16).padStart(2, '0')}`,
    typeName: mbrTypeName(entry.type),
    bootable: entry.status === 0x80,
  };
}

/**
 * Follows the EBR chain of one extended partition. In each EBR the data entry's start is relative to
 * that EBR, the link's to the start of the extended partition (as Linux msdos.c reads them).
 */
function readLogicals(
  source: ByteSource,
  diskSize: number,
  ss: number,
  extended: MbrEntry,
  firstNumber: number,
  out: PartitionEntry[],
  problems: Problems,
): number {
  let number = firstNumber;
  const extStart = extended.start;
  const extEnd = extended.start + extended.sectors;
  const seen = new Set<number>();
  let ebr = extStart;
  for (;;) {
    if (seen.has(ebr)) {
      problems.add(`EBR loop: the chain returns to the EBR at sector ${ebr}; logical partitions after it ignored`);
      break;
    }
    if (number > MAX_LOGICAL_PARTITIONS || seen.size >= MAX_LOGICAL_PARTITIONS) {
      problems.add(`more than ${MAX_LOGICAL_PARTITIONS} EBRs in the extended partition: the rest ignored`);
      break;
    }
    seen.add(ebr);
    if (ebr * ss + 512 > diskSize) {
      problems.add(`EBR at sector ${ebr} lies beyond the end of the disk`);
      break;
    }
    const bytes = source(ebr * ss, 512);
    if (!bytes || bytes.length < 512) {
      problems.add(`EBR at sector ${ebr} cannot be read`);
      break;
    }
    const table = decodeMbr(bytes, false);
    if (!table) {
      problems.add(`EBR at sector ${ebr} has no 55 AA signature: the chain ends there`);
      break;
    }
    const thisSize = extEnd - ebr;
    let link: MbrEntry | undefined;
    for (const entry of table.entries) {
      if (entry.type === 0 || entry.sectors === 0) continue;
      if (EXTENDED_TYPES.has(entry.type)) {
        link ??= entry;
        continue;
      }
      // Linux: the 3rd and 4th entries of an EBR sometimes hold garbage; take them only when they fit.
      if (entry.slot >= 2 && entry.start + entry.sectors > thisSize) continue;
      const start = ebr + entry.start;
      if (start < extStart || start + entry.sectors > extEnd) {
        problems.add(`logical partition ${number} lies outside its extended partition (sectors ${extStart}–${extEnd - 1})`);
      }
      out.push(mbrPartition(entry, number++, 'logical', start, ss));
    }
    if (!link) break;
    const next = extStart + link.start;
    if (next < extStart || next >= extEnd) {
      problems.add(`EBR at sector ${ebr} links to sector ${next}, outside its extended partition`);
    }
    ebr = next;
  }
  return number;
}

// ---------------------------------------------------------------------------------------------- GPT

function hasGptSignature(source: ByteSource, position: number): boolean {
  const bytes = source(position, 8);
  return !!bytes && bytes.length === 8 && Buffer.from(bytes.buffer, bytes.byteOffset, 8).toString('latin1') === GPT_SIGNATURE;
}

interface GptHeader {
  myLba: number;
  alternateLba: number;
  firstUsable: number;
  lastUsable: number;
  diskGuid: string;
  entriesLba: number;
  count: number;
  entrySize: number;
  entries: Uint8Array;
}

/** Mixed-endian GUID text: the first three fields little-endian (as `uuid.UUID(bytes_le=…)`). */
export function guidText(b: Uint8Array, at: number): string {
  const h = (i: number) => b[at + i].toString(16).padStart(2, '0');
  const part = (idx: number[]) => idx.map(h).join('');
  return `${part([3, 2, 1, 0])}-${part([5, 4])}-${part([7, 6])}-${part([8, 9])}-${part([10, 11, 12, 13, 14, 15])}`.toUpperCase();
}

function u64(view: DataView, at: number): number | undefined {
  const v = view.getBigUint64(at, true);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(v);
}

/** One GPT header copy at `lba` with its entry array, checked as Linux efi.c `is_gpt_valid` does; else why not. */
function readGptHeader(source: ByteSource, diskSize: number, ss: number, lba: number): GptHeader | string {
  const lastLba = Math.floor(diskSize / ss) - 1;
  if (lba < 1 || lba > lastLba) return `LBA ${lba} is outside the disk`;
  const bytes = source(lba * ss, ss);
  if (!bytes || bytes.length < 92) return 'cannot be read';
  if (Buffer.from(bytes.buffer, bytes.byteOffset, 8).toString('latin1') !== GPT_SIGNATURE) return 'no "EFI PART" signature';
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const headerSize = view.getUint32(12, true);
  if (headerSize < 92 || headerSize > bytes.length) return `header size ${headerSize} out of range`;
  const copy = Buffer.from(bytes.subarray(0, headerSize));
  copy.writeUInt32LE(0, 16);
  const storedCrc = view.getUint32(16, true);
  const crc = lazyZlib().crc32(copy);
  if (crc !== storedCrc) return `header CRC mismatch (stored 0x${hex32(storedCrc)}, computed 0x${hex32(crc)})`;
  const myLba = u64(view, 24);
  if (myLba !== lba) return `header says it is at LBA ${view.getBigUint64(24, true)}, found at LBA ${lba}`;
  const alternateLba = u64(view, 32);
  const firstUsable = u64(view, 40);
  const lastUsable = u64(view, 48);
  const entriesLba = u64(view, 72);
  if (alternateLba === undefined || firstUsable === undefined || lastUsable === undefined || entriesLba === undefined) {
    return 'a 64-bit field is out of range';
  }
  if (firstUsable > lastUsable || lastUsable > lastLba) return `usable LBAs ${firstUsable}–${lastUsable} do not fit the disk (last LBA ${lastLba})`;
  const count = view.getUint32(80, true);
  const entrySize = view.getUint32(84, true);
  if (entrySize < 128 || entrySize > 1024 || (entrySize & (entrySize - 1)) !== 0) return `entry size ${entrySize} is not 128·2^n`;
  if (count > MAX_GPT_ENTRIES || count * entrySize > MAX_GPT_ENTRY_BYTES) {
    return `${count} entries of ${entrySize} bytes: over the limit of ${MAX_GPT_ENTRIES} entries`;
  }
  const arrayBytes = count * entrySize;
  if (entriesLba * ss + arrayBytes > diskSize) return `entry array at LBA ${entriesLba} reaches past the end of the disk`;
  const entries = arrayBytes === 0 ? new Uint8Array(0) : source(entriesLba * ss, arrayBytes);
  if (!entries || entries.length < arrayBytes) return `entry array at LBA ${entriesLba} cannot be read`;
  const storedEntriesCrc = view.getUint32(88, true);
  const entriesCrc = lazyZlib().crc32(entries);
  if (entriesCrc !== storedEntriesCrc) {
    return `entry array CRC mismatch (stored 0x${hex32(storedEntriesCrc)}, computed 0x${hex32(entriesCrc)})`;
  }
  return {
    myLba,
    alternateLba,
    firstUsable,
    lastUsable,
    diskGuid: guidText(bytes, 56),
    entriesLba,
    count,
    entrySize,
    entries,
  };
}

function hex32(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function readGpt(
  source: ByteSource,
  diskSize: number,
  ss: number,
  problems: Problems,
): Omit<PartitionTable, 'sectorSize' | 'problems'> | undefined {
  const lastLba = Math.floor(diskSize / ss) - 1;
  if (lastLba < 2) return undefined;
  const primary = readGptHeader(source, diskSize, ss, 1);
  let header: GptHeader;
  let copy: 'primary' | 'backup';
  if (typeof primary !== 'string') {
    header = primary;
    copy = 'primary';
    const backupLba = primary.alternateLba <= lastLba ? primary.alternateLba : lastLba;
    const backup = readGptHeader(source, diskSize, ss, backupLba);
    if (typeof backup === 'string') problems.add(`backup GPT header at LBA ${backupLba}: ${backup}`);
    else if (primary.alternateLba !== lastLba) problems.add(`GPT backup header at LBA ${primary.alternateLba}, not at the last LBA ${lastLba}`);
  } else {
    const backup = readGptHeader(source, diskSize, ss, lastLba);
    if (typeof backup === 'string') {
      if (primary !== 'no "EFI PART" signature' || backup !== 'no "EFI PART" signature') {
        problems.add(`primary GPT header at LBA 1: ${primary}`);
        problems.add(`backup GPT header at LBA ${lastLba}: ${backup}`);
      }
      return undefined;
    }
    problems.add(`primary GPT header at LBA 1: ${primary}; used the backup copy at LBA ${lastLba}`);
    header = backup;
    copy = 'backup';
  }

  const partitions: PartitionEntry[] = [];
  const view = new DataView(header.entries.buffer, header.entries.byteOffset, header.entries.byteLength);
  for (let i = 0; i < header.count; i++) {
    const at = i * header.entrySize;
    const e = header.entries.subarray(at, at + 128);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const number = i + 1;
    const first = view.getBigUint64(at + 32, true);
    const last = view.getBigUint64(at + 40, true);
    if (last < first) {
      problems.add(`GPT partition ${number}: last LBA ${last} before first LBA ${first}; ignored`);
      continue;
    }
    const start = first * BigInt(ss);
    const size = (last - first + 1n) * BigInt(ss);
    if (start + size > BigInt(Number.MAX_SAFE_INTEGER)) {
      problems.add(`GPT partition ${number}: LBAs ${first}–${last} are beyond any disk; ignored`);
      continue;
    }
    if (first < header.firstUsable || last > header.lastUsable) {
      problems.add(`GPT partition ${number}: LBAs ${first}–${last} outside the usable LBAs ${header.firstUsable}–${header.lastUsable}`);
    }
    const attributes = view.getBigUint64(at + 48, true);
    const type = guidText(e, 0);
    partitions.push({
      number,
      kind: 'gpt',
      start: Number(start),
      size: Number(size),
      type,
      typeName: gptTypeName(type),
      name: utf16Name(e.subarray(56, 128)),
      uniqueGuid: guidText(e, 16),
      attributes: `0x${attributes.toString(16).padStart(16, '0')}`,
      bootable: (attributes & 4n) !== 0n,
    });
  }
  return { scheme: 'gpt', diskId: header.diskGuid, gptCopy: copy, partitions };
}

function utf16Name(bytes: Uint8Array): string {
  let end = 0;
  while (end + 1 < bytes.length && (bytes[end] !== 0 || bytes[end + 1] !== 0)) end += 2;
  return Buffer.from(bytes.buffer, bytes.byteOffset, end).toString('utf16le');
}

// --------------------------------------------------------------------------------------- checks

/** Out-of-disk and overlapping partitions (sorted by start: O(n log n) for any table). */
function checkLayout(partitions: PartitionEntry[], diskSize: number, problems: Problems): void {
  for (const p of partitions) {
    if (p.start >= diskSize) problems.add(`partition ${p.number} starts beyond the end of the disk (${p.start} ≥ ${diskSize}): no bytes`);
    else if (p.start + p.size > diskSize) {
      problems.add(`partition ${p.number} ends beyond the end of the disk: cut to ${diskSize - p.start} bytes`);
    }
  }
  const byStart = [...partitions].filter((p) => p.size > 0).sort((a, b) => a.start - b.start || a.number - b.number);
  let reach: PartitionEntry | undefined;
  for (const p of byStart) {
    if (reach && p.start < reach.start + reach.size) problems.add(`partitions ${reach.number} and ${p.number} overlap`);
    if (!reach || p.start + p.size > reach.start + reach.size) reach = p;
  }
}
