/**
 * The only module that imports fuse-native: mounts a set of FuseOps at a folder and reports when the
 * kernel has connected (FUSE INIT answered).
 */
import Fuse from 'fuse-native';
import type { FuseOps } from './fuse-ops.js';
import { FUSE_SUBTYPE } from './system.js';

export interface AdapterOptions {
  allowOther: boolean;
  /** Shown as the mount's source (`df`, `mount`); commas and backslashes are dropped. */
  fsname: string;
  /** Seconds the kernel may cache attributes and names: the tree never changes while mounted. */
  cacheSeconds?: number;
  /** Largest read request, in bytes. */
  maxRead?: number;
  /** How long to wait for the kernel's INIT before giving up (ms). */
  initTimeoutMs?: number;
}

export { FUSE_SUBTYPE };

export interface MountedFuse {
  mountPoint: string;
  /** The options string handed to libfuse, for the log. */
  optionString: string;
}

/**
 * Mounts `ops` at `mountPoint`. Resolves once FUSE INIT has been answered, so the mount answers
 * requests; rejects (with libfuse's failure) when the kernel refused the mount.
 *
 * Options, chosen for an immutable image:
 * - `ro`: the kernel refuses every write with EROFS before asking us (the ops answer EROFS too);
 * - `default_permissions`: the kernel checks the 0444/0555 modes, as for any file system;
 * - `kernel_cache` (and no `auto_cache`): page cache is kept across opens, since nothing changes;
 * - long `attr_timeout`/`entry_timeout`/`negative_timeout`: names and sizes never change;
 * - `max_read` of 128 KiB or more; no per-request timeout in fuse-native (it costs a timer per request).
 */
export function mountFuse(mountPoint: string, ops: FuseOps, options: AdapterOptions): Promise<MountedFuse> {
  const cache = options.cacheSeconds ?? 3600;
  const fuse = new Fuse(mountPoint, ops, {
    timeout: false,
    force: false, // the CLI checks the mount point itself; never unmount something found there
    mkdir: false,
    allowOther: options.allowOther,
    defaultPermissions: true,
    kernelCache: true,
    autoCache: false,
    attrTimeout: cache,
    entryTimeout: cache,
    maxRead: Math.max(131072, options.maxRead ?? 131072),
    fsname: options.fsname.replace(/[,\\]/g, '') || FUSE_SUBTYPE,
    subtype: FUSE_SUBTYPE,
  });
  const base = fuse._fuseOptions.bind(fuse);
  const optionString = `${base()},ro,negative_timeout=${cache}`;
  fuse._fuseOptions = () => optionString;

  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      reject(new Error(`the kernel did not start the FUSE session within ${(options.initTimeoutMs ?? 15000) / 1000} s`));
    }, options.initTimeoutMs ?? 15000);
    fuse.mount((err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve({ mountPoint: fuse.mnt, optionString });
    });
  });
}
