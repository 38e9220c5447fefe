import type { Disk } from '../disk/disk.js';
import { SliceDisk } from '../disk/slice-disk.js';
import type { QcowImage } from '../image.js';
import { type Volume, openVolume } from './partitions.js';

/** The partitions of every disk view of an image: the active disk's, and each snapshot's (table order). */
export interface ImageVolumes {
  active: Volume | undefined;
  snapshots: (Volume | undefined)[];
}

/**
 * Reads the partition table of every disk view once. Views with the same L1 table (offset and entries)
 * and size hold the same bytes, so their table is read once and only re-cut for each view: an image
 * with 65535 snapshots sharing one L1 table costs one table read, not 65535.
 */
export function imageVolumes(image: QcowImage): ImageVolumes {
  const seen = new Map<string, Volume | undefined>();
  const volumeOf = (disk: Disk, key: string): Volume | undefined => {
    if (!seen.has(key)) {
      seen.set(key, openVolume(disk));
      return seen.get(key);
    }
    const shared = seen.get(key);
    if (!shared) return undefined;
    return { table: shared.table, partitions: shared.partitions.map((p) => ({ ...p, disk: new SliceDisk(disk, Math.min(p.start, disk.size), p.size) })) };
  };
  const h = image.header;
  return {
    active: volumeOf(image.active, `${h.l1TableOffset}:${h.l1Size}:${image.active.size}`),
    snapshots: image.snapshots.map((s) => {
      const disk = image.snapshotDisk(s);
      return volumeOf(disk, `${s.l1TableOffset}:${s.l1Size}:${disk.size}`);
    }),
  };
}
