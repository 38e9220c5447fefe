import type { QcowImage } from '../image.js';
import type { Snapshot } from '../snapshot.js';
import { openVolume } from '../volume/partitions.js';
import type { TimelineBand, TimelineInput, TimelinePartition } from './svg.js';
import { diffViews } from './view-diff.js';

/** Snapshots in time order (date, then unique ID as QEMU numbers them, then table order). */
export function snapshotsInTimeOrder(snapshots: readonly Snapshot[]): Snapshot[] {
  const idOrder = (s: Snapshot) => (/^\d+$/.test(s.uniqueId) ? Number(s.uniqueId) : Number.MAX_SAFE_INTEGER);
  return [...snapshots].sort(
    (a, b) => a.time.seconds - b.time.seconds || a.time.nanoseconds - b.time.nanoseconds || idOrder(a) - idOrder(b) || a.index - b.index,
  );
}

/**
 * Every snapshot in time order, then the active disk, each with what changed since the one before (a
 * metadata diff per neighbour pair), and the active disk's partitions: the input of the timeline SVG.
 */
export function imageTimeline(image: QcowImage, title: string): TimelineInput {
  const ordered = snapshotsInTimeOrder(image.snapshots);
  const views = [
    ...ordered.map((s) => ({ label: s.name === '' ? `#${s.uniqueId}` : s.name, date: new Date(s.time.seconds * 1000), disk: image.snapshotDisk(s) })),
    { label: 'active', date: undefined, disk: image.active },
  ];
  const bands: TimelineBand[] = views.map((v, i) => ({
    label: v.label,
    date: v.date,
    size: v.disk.size,
    changed: i === 0 ? undefined : diffViews(views[i - 1]!.disk, v.disk, image.path).changed,
  }));
  const volume = openVolume(image.active);
  const partitions: TimelinePartition[] = (volume?.partitions ?? []).map((p) => ({
    label: `p${p.number}${p.name ? ` ${p.name}` : p.typeName ? ` ${p.typeName}` : ''}`,
    start: p.start,
    size: p.disk.size,
  }));
  return { title, bands, partitions };
}
