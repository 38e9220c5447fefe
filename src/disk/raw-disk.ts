import type { ImageFile } from '../io/image-file.js';
import { type Disk, type Extent, clampLength, readAsPromise } from './disk.js';

/**
 * A raw file as a disk (a raw backing file). Like QEMU's file driver it counts whole 512-byte sectors:
 * a 1000000-byte file is a 1000448-byte disk whose last 448 bytes read as zeros.
 */
export class RawDisk implements Disk {
  readonly size: number;

  constructor(
    readonly file: ImageFile,
    readonly depth: number,
  ) {
    this.size = Math.ceil(file.size / 512) * 512;
  }

  readSync(into: Uint8Array, position: number): number {
    const length = clampLength(this.size, into.length, position);
    if (length > 0) this.file.readAt(into, 0, length, position, 'raw data');
    return length;
  }

  read(into: Uint8Array, position: number): Promise<number> {
    return readAsPromise(this, into, position);
  }

  extents(start: number, length: number): Extent[] {
    const n = clampLength(this.size, length, start);
    return n === 0 ? [] : [{ start, length: n, kind: 'data', depth: this.depth, host: start }];
  }
}
