import type { Disk } from '../disk/disk.js';
import { SliceDisk } from '../disk/slice-disk.js';
import {
  type ByteSource,
  type PartitionEntry,
  type PartitionTable,
  type PartitionTableOptions,
  readPartitionTable,
} from '../format/partition-table.js';

/** One partition of a disk view, readable as a disk of its own. */
export interface Partition extends PartitionEntry {
  /** The partition's bytes, cut at the disk's end. */
  disk: Disk;
  /** File name suffix beside the view: `p1`, `p5`. */
  suffix: string;
}

export interface Volume {
  table: PartitionTable;
  /** The partitions with at least one byte on the disk, by number. */
  partitions: Partition[];
}

/**
 * The partitions of any disk (an active disk, a snapshot, a raw backing file; encrypted or not), or
 * undefined when it holds neither an MBR nor a GPT. A damaged table never throws: unreadable sectors
 * and bad entries become `table.problems`.
 */
export function openVolume(disk: Disk, options: PartitionTableOptions = {}): Volume | undefined {
  const unreadable: string[] = [];
  const source: ByteSource = (position, length) => {
    if (position < 0 || position >= disk.size) return new Uint8Array(0);
    const into = new Uint8Array(Math.min(length, disk.size - position));
    try {
      return into.subarray(0, disk.readSync(into, position));
    } catch (err) {
      unreadable.push(`bytes ${position}+${length} cannot be read: ${(err as Error).message}`);
      return undefined;
    }
  };
  const table = readPartitionTable(source, disk.size, options);
  if (!table) return undefined;
  table.problems.push(...unreadable.slice(0, 8));
  const partitions: Partition[] = [];
  for (const entry of table.partitions) {
    const slice = new SliceDisk(disk, Math.min(entry.start, disk.size), entry.size);
    if (slice.size === 0) continue;
    partitions.push({ ...entry, disk: slice, suffix: `p${entry.number}` });
  }
  return { table, partitions };
}

/** One partition by its Linux number, or undefined. */
export function findPartition(volume: Volume | undefined, number: number): Partition | undefined {
  return volume?.partitions.find((p) => p.number === number);
}
