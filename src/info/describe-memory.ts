import { QcowError, oneLine } from '../errors.js';
import type { QcowImage } from '../image.js';
import type { MemoryOptions } from '../memory/guest-memory.js';
import type { Snapshot } from '../snapshot.js';

/** What info.json and `qcow-info --snapshot` say about the RAM in a snapshot's VM state. */
export interface MemoryInfo {
  /** The machine type the stream names (e.g. `pc-i440fx-7.2`), or null when none was read. */
  machineType: string | null;
  pageSize: number | null;
  /** Every RAM block of the stream, with its page counts. */
  blocks: { name: string; size: number; dataPages: number; zeroPages: number; unsentPages: number }[];
  /** Guest-physical ranges served in `.ram` (at their address) and `.core` (one PT_LOAD each). */
  ranges: { address: number; length: number; block: string; blockOffset: number }[];
  /** RAM below 4 GiB and where that figure comes from ('machine-default' or 'max-ram-below-4g'). */
  ramBelow4g: number | null;
  ramBelow4gFrom: string | null;
  /** Blocks not placed in physical memory, and why. */
  leftOut: { block: string; why: string }[];
  /** Bytes the page index takes in memory. */
  indexBytes: number | null;
  /** Why there are no `.ram`/`.core` files (null when there are). */
  problem: string | null;
}

/** The memory description of a snapshot with VM state (undefined without); a bad stream becomes `problem`. */
export function describeMemory(image: QcowImage, snapshot: Snapshot, options: MemoryOptions = {}): MemoryInfo | undefined {
  let memory;
  try {
    memory = image.memory(snapshot, options);
  } catch (err) {
    if (!(err instanceof QcowError)) throw err;
    return { machineType: null, pageSize: null, blocks: [], ranges: [], ramBelow4g: null, ramBelow4gFrom: null, leftOut: [], indexBytes: null, problem: err.message };
  }
  if (!memory) return undefined;
  const { layout } = memory;
  return {
    machineType: layout.machineType ?? null,
    pageSize: layout.pageSize,
    blocks: layout.blocks.map((b) => ({ name: b.name, size: b.length, dataPages: b.dataPages, zeroPages: b.zeroPages, unsentPages: b.unsentPages })),
    ranges: layout.map?.ranges.map((r) => ({ ...r })) ?? [],
    ramBelow4g: layout.map?.ramBelow4g ?? null,
    ramBelow4gFrom: layout.map?.ramBelow4gFrom ?? null,
    leftOut: layout.map?.leftOut.map((l) => ({ ...l })) ?? [],
    indexBytes: layout.indexBytes,
    problem: layout.problem ?? null,
  };
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** `qcow-info --snapshot`'s rows for the memory description (`key: value`, as the other rows). */
export function memoryRows(m: MemoryInfo): [string, string][] {
  const rows: [string, string][] = [];
  if (m.machineType !== null) rows.push(['machine type', oneLine(m.machineType)]);
  for (const b of m.blocks) rows.push(['ram block', `${oneLine(b.name)}: ${b.size} bytes (${b.dataPages} data, ${b.zeroPages} zero, ${b.unsentPages} unsent pages)`]);
  if (m.ramBelow4g !== null) rows.push(['ram below 4g', `${hex(m.ramBelow4g)} (${m.ramBelow4gFrom})`]);
  for (const r of m.ranges) rows.push(['physical range', `${hex(r.address)}-${hex(r.address + r.length - 1)}: ${oneLine(r.block)} at ${hex(r.blockOffset)}`]);
  for (const l of m.leftOut) rows.push(['left out', `${oneLine(l.block)}: ${l.why}`]);
  if (m.problem !== null) rows.push(['no .ram/.core', m.problem]);
  return rows;
}
