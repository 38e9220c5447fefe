import { QcowError, hex } from '../errors.js';
import { MAX_L1_BYTES } from '../format/header.js';
import { l1EntryOffset } from '../format/l2.js';
import type { ImageFile } from '../io/image-file.js';

/** Checks where an L1 table lies (size bound, alignment, within the file) without reading it. */
export function checkL1Table(file: ImageFile, offset: number, entries: number, clusterSize: number, what: string): void {
  if (entries * 8 > MAX_L1_BYTES) {
    throw new QcowError('EIO', file.path, `${what}: l1_size ${entries} is too large (at most ${MAX_L1_BYTES / 8} entries)`);
  }
  if (entries === 0) return;
  if (offset % clusterSize !== 0) throw new QcowError('EIO', file.path, `${what}: L1 table offset ${hex(offset)} is not cluster aligned`);
  if (offset + entries * 8 > file.size) {
    throw new QcowError('EIO', file.path, `${what}: L1 table at ${hex(offset)} (${entries} entries) extends past the end of the file (size ${file.size})`);
  }
}

/** Reads and decodes an L1 table (offsets of L2 tables; 0 where none), checked against the file. */
export function loadL1Table(file: ImageFile, offset: number, entries: number, clusterSize: number, what: string): Float64Array {
  checkL1Table(file, offset, entries, clusterSize, what);
  const l1 = new Float64Array(entries);
  if (entries === 0) return l1;
  const bytes = file.readExact(offset, entries * 8, `${what} L1 table`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < entries; i++) l1[i] = l1EntryOffset(view.getUint32(i * 8), view.getUint32(i * 8 + 4));
  return l1;
}
