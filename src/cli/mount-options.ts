import { CliError, EXIT } from '../exit.js';
import type { MountOptions } from '../mount/options.js';
import { parseSize } from '../units.js';

/** The `-o` options qcow-mount knows; anything else is refused by name. */
export const KNOWN_MOUNT_OPTIONS = ['allow_other', 'uid=N', 'gid=N', 'ro', 'l2_cache_size=BYTES', 'cluster_cache_size=BYTES', 'remote_cache_size=BYTES', 'fuse=native|compat', 'direct_io', 'fuse_uring', 'ram_below_4g=SIZE'] as const;

function usage(message: string): CliError {
  return new CliError(message, EXIT.USAGE);
}

function parseId(name: string, value: string | undefined): number {
  if (value === undefined || !/^\d+$/.test(value)) throw usage(`mount option ${name} needs a numeric id (${name}=N), got "${name}${value === undefined ? '' : `=${value}`}"`);
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n > 0xffff_fffe) throw usage(`mount option ${name}=${value} is out of range`);
  return n;
}

/**
 * Parses `-o` lists (each a comma-separated list; several `-o` add up) into `into`. Later options win.
 * `ro` is accepted (the mount is always read-only); `rw` and anything unknown are refused by name.
 */
export function parseMountOptions(lists: readonly string[], into: MountOptions = { allowOther: false }): MountOptions {
  for (const list of lists) {
    for (const raw of list.split(',')) {
      const item = raw.trim();
      if (item === '') continue;
      const eq = item.indexOf('=');
      const name = eq < 0 ? item : item.slice(0, eq);
      const value = eq < 0 ? undefined : item.slice(eq + 1);
      const flag = () => {
        if (value !== undefined) throw usage(`mount option ${name} takes no value (got "${item}")`);
      };
      switch (name) {
        case 'allow_other':
          flag();
          into.allowOther = true;
          break;
        case 'ro':
          flag();
          break;
        case 'rw':
          throw usage('mount option rw is not possible: qcow-mount mounts read-only');
        case 'uid':
          into.uid = parseId('uid', value);
          break;
        case 'gid':
          into.gid = parseId('gid', value);
          break;
        case 'l2_cache_size':
          if (value === undefined || value === '') throw usage('mount option l2_cache_size needs a size (l2_cache_size=BYTES, K/M/G suffixes allowed)');
          into.l2CacheBytes = parseSize(value, 'l2_cache_size');
          break;
        case 'cluster_cache_size':
          if (value === undefined || value === '') throw usage('mount option cluster_cache_size needs a size (cluster_cache_size=BYTES, K/M/G suffixes allowed)');
          into.clusterCacheBytes = parseSize(value, 'cluster_cache_size');
          break;
        case 'remote_cache_size':
          if (value === undefined || value === '') throw usage('mount option remote_cache_size needs a size (remote_cache_size=BYTES, K/M/G suffixes allowed)');
          into.remoteCacheBytes = parseSize(value, 'remote_cache_size');
          break;
        case 'fuse':
          if (value !== 'native' && value !== 'compat') throw usage(`mount option fuse needs native or compat (fuse=native|compat), got "${item}"`);
          into.fuse = value;
          break;
        case 'direct_io':
          flag();
          into.directIo = true;
          break;
        case 'fuse_uring':
          flag();
          into.fuseUring = true;
          break;
        case 'ram_below_4g':
          if (value === undefined || value === '') throw usage('mount option ram_below_4g needs a size (ram_below_4g=SIZE, the VM\'s max-ram-below-4g, K/M/G suffixes allowed)');
          into.ramBelow4g = parseSize(value, 'ram_below_4g');
          break;
        default:
          throw usage(`unknown mount option "${name}" (known: ${KNOWN_MOUNT_OPTIONS.join(', ')})`);
      }
    }
  }
  return into;
}
