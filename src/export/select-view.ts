import type { Disk } from '../disk/disk.js';
import { QcowError } from '../errors.js';
import type { QcowImage } from '../image.js';
import type { Snapshot } from '../snapshot.js';
import { snapshotStems } from '../names/snapshot-names.js';
import { openVolume } from '../volume/partitions.js';
import type { MemoryOptions } from '../memory/guest-memory.js';

export interface SelectedView {
  disk: Disk;
  /** The file the mount shows for this view: `active.raw`, `snapshots/NAME.raw`, `snapshots/NAME.vmstate`. */
  fileName: string;
  /** Words for messages: `the active disk`, `snapshot "NAME" (id 1)`, `the VM state of snapshot ...`. */
  label: string;
  snapshot?: Snapshot;
  /** With --partition: where the partition lies in the view's disk (workers cut the same window). */
  window?: { start: number; length: number };
}

/**
 * Finds a snapshot the way `qemu-img snapshot -a` does (unique ID first, then name), and failing that by
 * the file stem the mount shows for it (`NAME@ID`, `#INDEX`...), so that snapshots with shared or unusable
 * names can be named too.
 */
export function findSnapshot(image: QcowImage, idOrName: string): Snapshot | undefined {
  const found = image.findSnapshot(idOrName);
  if (found) return found;
  const stems = snapshotStems(image.snapshots);
  const bare = idOrName.replace(/^snapshots\//, '').replace(/\.(raw|vmstate|ram|core)$/, '');
  const i = stems.indexOf(bare);
  return i >= 0 ? image.snapshots[i] : undefined;
}

export interface ViewChoice {
  snapshot?: string;
  vmstate?: boolean;
  /** A snapshot's RAM: `raw` (flat guest-physical, the mount's NAME.ram) or `core` (ELF, NAME.core). */
  memory?: 'raw' | 'core';
  memoryOptions?: MemoryOptions;
}

/**
 * The view `qcow-export` writes: the active disk, a snapshot's disk, or a snapshot's VM state; with
 * `partition`, one partition (Linux number) of that disk.
 */
export function selectView(image: QcowImage, options: ViewChoice & { partition?: number }): SelectedView {
  const view = selectWholeView(image, options);
  if (options.partition === undefined) return view;
  if (options.vmstate || options.memory) throw new QcowError('EINVAL', image.path, `--partition and --${options.vmstate ? 'vmstate' : 'memory'} do not go together (only a disk has partitions)`);
  const volume = openVolume(view.disk);
  if (!volume) throw new QcowError('ENOENT', image.path, `${view.label} has no partition table (no MBR or GPT)`);
  const p = volume.partitions.find((x) => x.number === options.partition);
  if (!p) {
    const known = volume.partitions.map((x) => x.number).join(', ');
    throw new QcowError('ENOENT', image.path, `${view.label} has no partition ${options.partition} (${volume.table.scheme}: ${known === '' ? 'no partitions' : `partitions ${known}`})`);
  }
  return {
    disk: p.disk,
    fileName: view.fileName.replace(/\.raw$/, `.${p.suffix}`),
    label: `partition ${p.number} of ${view.label}`,
    snapshot: view.snapshot,
    window: { start: p.start, length: p.size },
  };
}

function selectWholeView(image: QcowImage, options: ViewChoice): SelectedView {
  if (options.snapshot === undefined) {
    if (options.vmstate) throw new QcowError('EINVAL', image.path, '--vmstate needs --snapshot NAME (VM state belongs to a snapshot)');
    return { disk: image.active, fileName: 'active.raw', label: 'the active disk' };
  }
  const s = findSnapshot(image, options.snapshot);
  if (!s) {
    const known = image.snapshots.map((x) => `${x.uniqueId} "${x.name}"`);
    const list = known.length === 0 ? 'it has no snapshots' : `it has ${known.length > 8 ? `${known.slice(0, 8).join(', ')}, ...` : known.join(', ')}`;
    throw new QcowError('ENOENT', image.path, `no snapshot with ID or name "${options.snapshot}" (${list})`);
  }
  const stem = snapshotStems(image.snapshots)[image.snapshots.indexOf(s)]!;
  const label = `snapshot "${s.name}" (id ${s.uniqueId})`;
  if (options.memory) {
    const memory = image.memory(s, options.memoryOptions);
    if (!memory) throw new QcowError('ENOENT', image.path, `${label} has no saved VM state (vm_state_size is 0)`);
    const disk = options.memory === 'raw' ? memory.ram : memory.core;
    if (!disk) throw new QcowError('EUNSUPPORTED', image.path, `the RAM of ${label} cannot be laid out in physical memory: ${memory.layout.problem}`);
    const suffix = options.memory === 'raw' ? 'ram' : 'core';
    return { disk, fileName: `snapshots/${stem}.${suffix}`, label: `the RAM of ${label}${options.memory === 'core' ? ' (ELF core)' : ''}`, snapshot: s };
  }
  if (options.vmstate) {
    const disk = image.vmState(s);
    if (!disk) throw new QcowError('ENOENT', image.path, `${label} has no saved VM state (vm_state_size is 0)`);
    return { disk, fileName: `snapshots/${stem}.vmstate`, label: `the VM state of ${label}`, snapshot: s };
  }
  return { disk: image.snapshotDisk(s), fileName: `snapshots/${stem}.raw`, label, snapshot: s };
}
