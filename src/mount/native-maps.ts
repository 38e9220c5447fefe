/**
 * What the native back-end may serve by itself: for a disk file whose top layer is a qcow2 file read
 * from a local host file, the map of each table of clusters the reads touch, built from the same
 * translation JavaScript reads with (data and zero runs only; compressed clusters, backing files and
 * anything that fails to translate stay with JavaScript).
 */
import { Qcow2Disk } from '../disk/qcow2-disk.js';
import { HostFile } from '../io/host-file.js';
import { walkRange } from '../translate/walk.js';
import type { ViewMapper } from './fuse3-native.js';
import { MapTableBuilder } from './native-map-table.js';
import type { DiskNode } from './tree.js';

/** Host files the maps point into, by slot; shared by every view of a mount. */
export class HostSlots {
  readonly fds: number[] = [];
  private readonly bySlot = new Map<HostFile, number>();

  slotOf(file: HostFile): number | undefined {
    let slot = this.bySlot.get(file);
    if (slot === undefined) {
      if (this.fds.length >= 64) return undefined;
      slot = this.fds.length;
      this.fds.push(file.fd);
      this.bySlot.set(file, slot);
    }
    return slot;
  }
}

/** The mapper for a disk file, or undefined when every read of it must go through JavaScript. */
export function qcow2Mapper(node: DiskNode, slots: HostSlots): ViewMapper | undefined {
  const disk = node.disk;
  if (!(disk instanceof Qcow2Disk)) return undefined;
  const meta = disk.meta;
  // Encrypted clusters are decrypted in JS: never map an encrypted image's host bytes.
  if (meta.header.cryptMethod !== 'none') return undefined;
  if (!(meta.dataFile instanceof HostFile) || disk.origin % meta.clusterSize !== 0) return undefined;
  const slot = slots.slotOf(meta.dataFile);
  if (slot === undefined) return undefined;
  const l1 = (disk as unknown as { l1: () => Float64Array }).l1;
  const tableBits = Math.log2(meta.l2Entries);
  const span = meta.l2Span;
  const cs = meta.clusterSize;
  const hostSize = meta.dataFile.size;
  const done = new Set<number>();

  const build = (t: number): Float64Array => {
    const start = t * span;
    const limit = Math.min(span, disk.size - start);
    const b = new MapTableBuilder(start, meta.l2Entries, cs, limit, hostSize);
    const visit = (from: number) => ({
      data: (dst: number, len: number, host: number) => b.data(from + dst, len, host),
      zero: (dst: number, len: number) => b.zero(from + dst, len),
      unallocated: (dst: number, len: number) => (disk.backing ? b.other(from + dst, len) : b.zero(from + dst, len)),
      compressed: (dst: number, len: number) => b.other(from + dst, len),
    });
    try {
      walkRange(meta, l1(), disk.origin, start, limit, visit(start));
    } catch {
      // A bad entry somewhere in the table: map cluster by cluster, leaving the bad ones to JS.
      for (let at = start; at < start + limit; at += cs) {
        try {
          walkRange(meta, l1(), disk.origin, at, Math.min(cs, start + limit - at), visit(at));
        } catch {
          b.other(at, cs);
        }
      }
    }
    return b.finish();
  };

  return {
    clusterBits: meta.clusterBits,
    tableBits,
    fill(position, length, publish) {
      const last = Math.floor((Math.min(position + length, disk.size) - 1) / span);
      for (let t = Math.floor(position / span); t <= last; t++) {
        if (done.has(t)) continue;
        done.add(t);
        publish(t * meta.l2Entries, build(t), slot);
      }
    },
  };
}
