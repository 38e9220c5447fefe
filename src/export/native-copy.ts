/**
 * Native copies for qcow-export: the bytes of a data run go from the host file (the image, its data
 * file, a raw backing file) into the output file in the native addon (native/src/copy-range.c): pread
 * into a buffer that stays in the CPU cache, all-zero blocks found there, pwrite of the rest, with no
 * JavaScript, no thread-pool hop and no large buffer in between. Only for bytes stored as they are read
 * (no decryption, no compression, no derived view); where the addon is not built every run is read and
 * written by JavaScript instead.
 */
import { type CopiedRange, copyAddon } from '../io/copy-addon.js';
import { HostFile } from '../io/host-file.js';
import type { ImageFile } from '../io/image-file.js';
import type { Disk } from '../disk/disk.js';
import { MappedDisk } from '../disk/qcow2-disk.js';
import { RawDisk } from '../disk/raw-disk.js';
import { SliceDisk } from '../disk/slice-disk.js';

/** Copies data runs of one disk natively; `hostFile` says where a data extent's bytes are. */
export interface NativeCopier {
  /**
   * The host file holding the data extents of chain depth `depth`, if their bytes are served as stored
   * (undefined: read them through the disk).
   */
  hostFile(depth: number): HostFile | undefined;
  /**
   * Copies `length` bytes at `inPos` of `file` to the fresh (truncated) file `outFd` at `outPos`; all-zero
   * blocks of `sparseBlock` bytes (aligned to the output offset) are left as holes.
   */
  copy(outFd: number, outPos: number, file: HostFile, inPos: number, length: number, sparseBlock: number): CopiedRange;
}

/**
 * A copier for `disk`, or undefined where native copies are off: the addon is not built, or
 * QCOW_EXPORT_NATIVE_COPY=0 (for measurements and tests).
 */
export function nativeCopier(disk: Disk): NativeCopier | undefined {
  if (process.env.QCOW_EXPORT_NATIVE_COPY === '0') return undefined;
  const a = copyAddon();
  if (!a) return undefined;
  const byDepth = new Map<number, HostFile | undefined>();
  return {
    hostFile(depth) {
      if (!byDepth.has(depth)) {
        const file = storedFileAt(disk, depth);
        byDepth.set(depth, file instanceof HostFile ? file : undefined);
      }
      return byDepth.get(depth);
    },
    copy: (outFd, outPos, file, inPos, length, sparseBlock) => a.copyRange(outFd, outPos, file.fd, inPos, length, sparseBlock),
  };
}

/**
 * The file (local or not) whose stored bytes are the data runs of chain depth `depth`, when they are
 * served untransformed (no decryption); undefined where they are not, or nothing at that depth stores data.
 */
export function storedFileAt(disk: Disk, depth: number): ImageFile | undefined {
  let d: Disk | undefined = disk;
  while (d instanceof SliceDisk) d = d.base;
  while (d) {
    if (d instanceof MappedDisk) {
      if (d.depth === depth) return d.reader.servesHostBytes ? d.reader.dataFile : undefined;
      d = d.backing;
    } else if (d instanceof RawDisk) {
      return d.depth === depth ? d.file : undefined;
    } else return undefined;
  }
  return undefined;
}
