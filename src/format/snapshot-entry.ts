import { QcowError, hex } from '../errors.js';
import { BigEndian } from './bytes.js';

/** QEMU's limits (QCOW_MAX_SNAPSHOTS, QCOW_MAX_SNAPSHOT_EXTRA_DATA, QCOW_MAX_SNAPSHOTS_SIZE). */
export const MAX_SNAPSHOTS = 65536;
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
export const MAX_SNAPSHOT_TABLE_BYTES = 64 * 1024 * 1024;
export const SNAPSHOT_ENTRY_FIXED = 40;

export interface SnapshotExtraData {
  /** The 64-bit VM state size, where the entry has it (it supersedes the 32-bit field). */
  vmStateSizeLarge?: number;
  /** The disk size when the snapshot was taken, where the entry has it. */
  diskSize?: number;
  /** Instruction count for record/replay; undefined when absent or -1 (none). */
  icount?: bigint;
  /** The extra data as stored, including fields this reader does not know. */
  bytes: Uint8Array;
}

/** One entry of the snapshot table, as stored (the model: the Rust qcow crate's `Snapshot`). */
export interface SnapshotEntry {
  /** Position in the table, from 0. */
  index: number;
  /** File offset of the entry. */
  entryOffset: number;
  l1TableOffset: number;
  l1Size: number;
  uniqueId: string;
  name: string;
  time: { seconds: number; nanoseconds: number };
  /** Guest runtime (vm_clock_nsec) in nanoseconds. */
  guestRuntime: bigint;
  /** Bytes of saved VM state: vm_state_size_large where present, else the 32-bit field. */
  vmStateSize: number;
  /** The 32-bit vm_state_size field as stored. */
  vmStateSize32: number;
  extraDataSize: number;
  extraData: SnapshotExtraData;
}

/**
 * Decodes the entry at `at` of `bytes` (which hold the table from `tableOffset` on). Returns undefined
 * when `bytes` ends before the entry does, so the caller can read more and try again.
 */
export function decodeSnapshotEntry(
  bytes: Uint8Array,
  at: number,
  index: number,
  tableOffset: number,
  file: string,
): { entry: SnapshotEntry; next: number } | undefined {
  if (at + SNAPSHOT_ENTRY_FIXED > bytes.length) return undefined;
  const be = new BigEndian(bytes);
  const where = `snapshot ${index} (entry at ${hex(tableOffset + at)})`;
  const bad = (problem: string): never => {
    throw new QcowError('EBADIMAGE', file, `${where}: ${problem}`);
  };
  const idSize = be.u16(at + 12);
  const nameSize = be.u16(at + 14);
  const extraDataSize = be.u32(at + 36);
  if (extraDataSize > MAX_SNAPSHOT_EXTRA_DATA) bad(`extra_data_size ${extraDataSize} is too large (at most ${MAX_SNAPSHOT_EXTRA_DATA})`);
  const end = at + SNAPSHOT_ENTRY_FIXED + extraDataSize + idSize + nameSize;
  if (end > bytes.length) return undefined;

  const l1TableOffset = be.u64n(at);
  if (l1TableOffset === undefined) bad(`l1_table_offset ${hex(be.u64(at))} is too large`);
  const extraAt = at + SNAPSHOT_ENTRY_FIXED;
  const extra: SnapshotExtraData = { bytes: bytes.slice(extraAt, extraAt + extraDataSize) };
  if (extraDataSize >= 8) {
    const large = be.u64n(extraAt);
    if (large === undefined) bad(`vm_state_size_large ${hex(be.u64(extraAt))} is too large`);
    extra.vmStateSizeLarge = large;
  }
  if (extraDataSize >= 16) {
    const diskSize = be.u64n(extraAt + 8);
    if (diskSize === undefined) bad(`disk_size ${hex(be.u64(extraAt + 8))} is too large`);
    extra.diskSize = diskSize;
  }
  if (extraDataSize >= 24) {
    const icount = be.u64(extraAt + 16);
    if (icount !== 0xffff_ffff_ffff_ffffn) extra.icount = icount;
  }
  const vmStateSize32 = be.u32(at + 32);
  const entry: SnapshotEntry = {
    index,
    entryOffset: tableOffset + at,
    l1TableOffset: l1TableOffset as number,
    l1Size: be.u32(at + 8),
    uniqueId: be.text(extraAt + extraDataSize, idSize),
    name: be.text(extraAt + extraDataSize + idSize, nameSize),
    time: { seconds: be.u32(at + 16), nanoseconds: be.u32(at + 20) },
    guestRuntime: be.u64(at + 24),
    vmStateSize: extra.vmStateSizeLarge ?? vmStateSize32,
    vmStateSize32,
    extraDataSize,
    extraData: extra,
  };
  return { entry, next: Math.ceil(end / 8) * 8 };
}
