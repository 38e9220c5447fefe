import type { Disk } from '../disk/disk.js';
import { Qcow2Disk } from '../disk/qcow2-disk.js';
import { QcowError } from '../errors.js';
import { type L2TableSource, type TableDiff, diffTables } from './table-diff.js';

/** The granule a diff of this disk reports in: a cluster, or a subcluster with extended L2 entries. */
export function diffGranule(disk: Disk): number {
  return qcow2Of(disk).meta.subclusterSize;
}

/**
 * The metadata diff of two views of one qcow2 image (its active disk and its snapshots' disks): the
 * guest ranges where they may differ. Reads L1/L2 tables only.
 */
export function diffViews(from: Disk, to: Disk): TableDiff {
  const a = qcow2Of(from);
  const b = qcow2Of(to);
  if (a.meta !== b.meta) throw new QcowError('EINVAL', a.meta.file.path, 'a diff compares two views of the same image');
  const meta = a.meta;
  const source: L2TableSource = {
    clusterSize: meta.clusterSize,
    l2Span: meta.l2Span,
    entryBytes: meta.entryBytes,
    version: meta.header.version,
    hasDataFile: meta.hasDataFile,
    hasBacking: a.backing !== undefined,
    l2Table: (offset, l1Index) => meta.l2Table(offset, l1Index),
  };
  return diffTables(source, { l1: l1Of(a), size: a.size }, { l1: l1Of(b), size: b.size });
}

function qcow2Of(disk: Disk): Qcow2Disk {
  if (!(disk instanceof Qcow2Disk) || disk.origin !== 0) {
    throw new QcowError('EINVAL', 'diff', 'only disk views of a qcow2 image can be compared by their metadata');
  }
  return disk;
}

// TODO(phase 2): the L1 table through the translate API of issue 8.
function l1Of(disk: Qcow2Disk): Float64Array {
  return (disk as unknown as { l1: () => Float64Array }).l1();
}
