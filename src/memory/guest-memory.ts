import type { Disk, Extent } from '../disk/disk.js';
import { readAsPromise } from '../disk/disk.js';
import { ExtentList } from '../disk/extent-list.js';
import { type CoreLayout, encodeCoreHeader } from '../format/elf-core.js';
import type { StreamContext } from '../format/migration-stream.js';
import { type BlockPages, StreamWindow } from './block-pages.js';
import { type RamIndex, indexRam } from './ram-index.js';
import { type PhysicalMap, type PhysicalRange, x86PhysicalMap } from './x86-map.js';

export interface MemoryOptions {
  /** The VM's `max-ram-below-4g` machine option (the stream does not record it). */
  maxRamBelow4g?: number;
}

export interface RamBlockSummary {
  name: string;
  /** Bytes. */
  length: number;
  /** Pages sent with their bytes, as zero-page records, and never sent (read as zeros). */
  dataPages: number;
  zeroPages: number;
  unsentPages: number;
}

/** What a VM state's RAM looks like: the machine, its blocks, and where they are in physical memory. */
export interface MemoryLayout {
  machineType: string | undefined;
  pageSize: number;
  blocks: RamBlockSummary[];
  /** The physical map, or undefined with `problem` saying why there are no `.ram`/`.core` forms. */
  map: PhysicalMap | undefined;
  problem?: string;
  /** Where RAM ended in the VM state (device state follows). */
  ramEnd: number;
  /** Bytes the page index takes in memory. */
  indexBytes: number;
}

/** A VM state's RAM: its layout, and the flat physical image and ELF core where the map is known. */
export interface GuestMemory {
  layout: MemoryLayout;
  /** Guest-physical memory as one flat file: every range at its address, zeros between. */
  ram?: Disk;
  /** The same ranges as an ELF64 core (one PT_LOAD each). */
  core?: Disk;
}

/** Indexes the VM state (one sequential read) and builds the memory views. Throws a QcowError for a bad stream. */
export function openGuestMemory(vmState: Disk, ctx: StreamContext, options: MemoryOptions = {}): GuestMemory {
  const index = indexRam(vmState, ctx);
  const blocks = index.blocks.map((b) => ({ name: b.name, length: b.length, dataPages: b.dataPages, zeroPages: b.zeroPages, unsentPages: b.unsentPages }));
  const outcome = x86PhysicalMap(index.configuration?.machineType, blocks, options.maxRamBelow4g);
  const layout: MemoryLayout = {
    machineType: index.configuration?.machineType,
    pageSize: index.pageSize,
    blocks,
    map: 'map' in outcome ? outcome.map : undefined,
    problem: 'problem' in outcome ? outcome.problem : undefined,
    ramEnd: index.ramEnd,
    indexBytes: index.blocks.reduce((s, b) => s + b.indexBytes, 0),
  };
  if (!layout.map) return { layout };
  const reader = new RangeReader(index, layout.map.ranges, vmState);
  return { layout, ram: new PhysicalRamDisk(reader), core: new ElfCoreDisk(reader) };
}

/** Reads physical ranges from their blocks' pages. */
class RangeReader {
  private readonly blocks: Map<string, BlockPages>;
  private readonly window: StreamWindow;

  constructor(
    index: RamIndex,
    readonly ranges: readonly PhysicalRange[],
    vmState: Disk,
  ) {
    this.blocks = new Map(index.blocks.map((b) => [b.name, b]));
    this.window = new StreamWindow(vmState);
  }

  /** Reads `length` bytes at `offset` into range `r` into `into[intoAt...]`. */
  read(r: PhysicalRange, offset: number, into: Uint8Array, intoAt: number, length: number): void {
    this.block(r).read(into, intoAt, r.blockOffset + offset, length, this.window);
  }

  /** Stretches of range `r` in [offset, offset + length), relative to the range's start. */
  stretches(r: PhysicalRange, offset: number, length: number, visit: (start: number, end: number, zero: boolean) => void): void {
    this.block(r).forEachStretch(r.blockOffset + offset, length, (a, b, zero) => visit(a - r.blockOffset, b - r.blockOffset, zero));
  }

  private block(r: PhysicalRange): BlockPages {
    const block = this.blocks.get(r.block);
    if (!block) throw new Error(`no RAM block ${r.block}`);
    return block;
  }
}

function clamp(size: number, length: number, position: number): number {
  return position >= size || position < 0 ? 0 : Math.min(length, size - position);
}

/** Guest-physical memory as one flat file, holes as zeros: as large as the highest range's end. */
class PhysicalRamDisk implements Disk {
  readonly size: number;

  constructor(private readonly reader: RangeReader) {
    this.size = reader.ranges.reduce((m, r) => Math.max(m, r.address + r.length), 0);
  }

  readSync(into: Uint8Array, position: number): number {
    const length = clamp(this.size, into.length, position);
    const end = position + length;
    let filled = position;
    for (const r of this.reader.ranges) {
      const a = Math.max(position, r.address);
      const b = Math.min(end, r.address + r.length);
      if (a >= b) continue;
      into.fill(0, filled - position, a - position);
      this.reader.read(r, a - r.address, into, a - position, b - a);
      filled = b;
    }
    into.fill(0, filled - position, length);
    return length;
  }

  read(into: Uint8Array, position: number): Promise<number> {
    return readAsPromise(this, into, position);
  }

  extents(start: number, length: number): Extent[] {
    const n = clamp(this.size, length, start);
    const list = new ExtentList();
    const end = start + n;
    let at = start;
    for (const r of this.reader.ranges) {
      const a = Math.max(start, r.address);
      const b = Math.min(end, r.address + r.length);
      if (a >= b) continue;
      list.add({ start: at, length: a - at, kind: 'unallocated', depth: 0 });
      this.reader.stretches(r, a - r.address, b - a, (s, e, zero) => list.add({ start: r.address + s, length: e - s, kind: zero ? 'zero' : 'data', depth: 0 }));
      at = b;
    }
    list.add({ start: at, length: end - at, kind: 'unallocated', depth: 0 });
    return list.items;
  }
}

/** The ranges as an ELF64 core: the header is generated, the segments are read from the pages. */
class ElfCoreDisk implements Disk {
  readonly size: number;
  private readonly layout: CoreLayout;

  constructor(private readonly reader: RangeReader) {
    this.layout = encodeCoreHeader(reader.ranges.map((r) => ({ address: r.address, length: r.length })));
    this.size = this.layout.size;
  }

  readSync(into: Uint8Array, position: number): number {
    const length = clamp(this.size, into.length, position);
    const end = position + length;
    const header = this.layout.header;
    if (position < header.length) header.copy(into, 0, position, Math.min(end, header.length));
    this.reader.ranges.forEach((r, i) => {
      const at = this.layout.offsets[i];
      const a = Math.max(position, at);
      const b = Math.min(end, at + r.length);
      if (a < b) this.reader.read(r, a - at, into, a - position, b - a);
    });
    return length;
  }

  read(into: Uint8Array, position: number): Promise<number> {
    return readAsPromise(this, into, position);
  }

  extents(start: number, length: number): Extent[] {
    const n = clamp(this.size, length, start);
    const end = start + n;
    const list = new ExtentList();
    const headerEnd = Math.min(end, this.layout.header.length);
    if (start < headerEnd) list.add({ start, length: headerEnd - start, kind: 'data', depth: 0 });
    this.reader.ranges.forEach((r, i) => {
      const at = this.layout.offsets[i];
      const a = Math.max(start, at);
      const b = Math.min(end, at + r.length);
      if (a < b) this.reader.stretches(r, a - at, b - a, (s, e, zero) => list.add({ start: at + s, length: e - s, kind: zero ? 'zero' : 'data', depth: 0 }));
    });
    return list.items;
  }
}
