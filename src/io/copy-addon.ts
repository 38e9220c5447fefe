/**
 * The small native addon `qcow_copy` (native/src/copy-range.c), where it is built: qcow-export's copy of
 * stored data runs and the live-image lock probe. It loads without libfuse, apart from the FUSE back-end.
 */
import { createRequire } from 'node:module';
import { nativeAddonPath } from '../package-files.js';

export interface CopiedRange {
  /** Bytes of the range done: fewer only where the host file ends. */
  covered: number;
  /** Bytes written: all-zero blocks are left as holes. */
  written: number;
}

export interface CopyAddon {
  /** pread + pwrite of a host range into a fresh output file, all-zero blocks of `sparseBlock` bytes left as holes. */
  copyRange(outFd: number, outPos: number, inFd: number, inPos: number, length: number, sparseBlock: number): CopiedRange;
  /** Whether another open file description holds a lock covering `byte` (F_OFD_GETLK). */
  lockedByOthers(fd: number, byte: number): boolean;
}

let addon: CopyAddon | null | undefined;

/** The addon, or null where it is not built. */
export function copyAddon(): CopyAddon | null {
  if (addon === undefined) {
    try {
      addon = createRequire(import.meta.url)(nativeAddonPath('qcow_copy')) as CopyAddon;
    } catch {
      addon = null;
    }
  }
  return addon;
}
