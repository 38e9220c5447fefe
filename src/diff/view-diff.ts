import type { Disk } from '../disk/disk.js';
import { Qcow2Disk } from '../disk/qcow2-disk.js';
import { QcowError } from '../errors.js';
import { type TableDiff, diffTables } from './table-diff.js';

/** The granule a diff of this disk reports in: a cluster, or a subcluster with extended L2 entries. */
export function diffGranule(disk: Disk, file = 'qcow2 image'): number {
  return qcow2Of(disk, file).map.subclusterSize;
}

/**
 * The metadata diff of two disk views of one qcow2 image (its active disk, its snapshots' disks): the
 * guest ranges where they may differ. Maps L1/L2 tables only; never reads guest data.
 */
export function diffViews(from: Disk, to: Disk, file = 'qcow2 image'): TableDiff {
  const a = qcow2Of(from, file);
  const b = qcow2Of(to, file);
  if (a.map !== b.map) throw new QcowError('EINVAL', a.map.file.path, 'a metadata diff compares two views of the same image');
  return diffTables(a.map, { l1: a.l1Table(), size: a.size }, { l1: b.l1Table(), size: b.size }, a.backing !== undefined || b.backing !== undefined);
}

function qcow2Of(disk: Disk, file: string): Qcow2Disk {
  if (!(disk instanceof Qcow2Disk) || disk.origin !== 0) {
    throw new QcowError('EUNSUPPORTED', file, 'only disk views of a qcow2 image (its active disk, its snapshots) can be compared by their metadata');
  }
  return disk;
}
