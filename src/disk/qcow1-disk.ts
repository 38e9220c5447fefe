import type { Qcow1Map } from '../translate/qcow1-map.js';
import type { ClusterReader } from './cluster-reader.js';
import type { Disk } from './disk.js';
import { MappedDisk } from './qcow2-disk.js';

/** The disk of a qcow version 1 file: read as a qcow2 view is, through its own (v1) map. */
export class Qcow1Disk extends MappedDisk {
  constructor(
    override readonly map: Qcow1Map,
    reader: ClusterReader,
    l1: () => Float64Array,
    size: number,
    backing: Disk | undefined,
    depth: number,
  ) {
    super(map, reader, l1, size, backing, depth);
  }
}
