import fs from 'node:fs';
import { FUSE_SUBTYPE, findMount, fuseDeviceProblem, pidFileAlive, pidFilePath, readPidFile, resolveMountPoint } from './system.js';

const DEAD = (display: string) => `${display}: a dead FUSE mount is there (its daemon is gone); clear it with qcow-mount -u ${display}`;

/**
 * Whether a qcow-mount mount found at `dir` has lost its daemon. Its pid file says so without touching
 * the mount; only then statfs (never cached by the kernel) confirms it: a dead session answers ENOTCONN
 * at once, so this cannot hang on a live daemon.
 */
function deadQcowMount(dir: string): boolean {
  const info = readPidFile(pidFilePath(dir));
  if (info && pidFileAlive(info)) return false;
  try {
    fs.statfsSync(dir);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOTCONN';
  }
}

/**
 * Checks a mount point before anything is mounted: it exists, is a folder, is empty, is not already
 * a mount point, and we may mount on it. Returns the one-line problem, or undefined when it is fine.
 * `display` is the path as the user wrote it.
 */
export function mountPointProblem(display: string): string | undefined {
  const resolved = resolveMountPoint(display);
  let st: fs.Stats;
  try {
    st = fs.statSync(resolved);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return `${display}: mount point does not exist`;
    if (code === 'ENOTCONN') return DEAD(display);
    if (code === 'EACCES') return `${display}: permission denied`;
    return `${display}: ${(err as Error).message}`;
  }
  if (!st.isDirectory()) return `${display}: mount point is not a folder`;
  const mounted = findMount(resolved);
  if (mounted && mounted.fsType === `fuse.${FUSE_SUBTYPE}` && deadQcowMount(resolved)) return DEAD(display);
  if (mounted) return `${display}: already a mount point (${mounted.fsType} from ${mounted.source}); unmount it first or choose another folder`;
  let entries: string[];
  try {
    entries = fs.readdirSync(resolved);
  } catch (err) {
    return `${display}: cannot list the mount point (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`;
  }
  if (entries.length > 0) return `${display}: mount point is not empty (${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}); mount on an empty folder`;
  if (process.getuid?.() !== 0) {
    try {
      fs.accessSync(resolved, fs.constants.W_OK);
    } catch {
      return `${display}: you need write permission on the mount point to mount there`;
    }
  }
  return undefined;
}

/** Where fusermount reads user_allow_other from. */
export const FUSE_CONF = '/etc/fuse.conf';

/** allow_other for a user other than root needs `user_allow_other` in /etc/fuse.conf (fusermount's rule). */
export function allowOtherProblem(allowOther: boolean, uid = process.getuid?.() ?? 0, conf = FUSE_CONF): string | undefined {
  if (!allowOther || uid === 0) return undefined;
  let text = '';
  try {
    text = fs.readFileSync(conf, 'utf8');
  } catch {
    // no file: not allowed
  }
  const allowed = text.split('\n').some((line) => line.replace(/#.*/, '').trim() === 'user_allow_other');
  return allowed ? undefined : `-o allow_other needs user_allow_other in ${conf} when not mounting as root`;
}

/** Everything checked before mounting, besides the image: the mount point, /dev/fuse, allow_other. */
export function mountProblem(display: string, options: { allowOther?: boolean } = {}): string | undefined {
  return mountPointProblem(display) ?? fuseDeviceProblem() ?? allowOtherProblem(!!options.allowOther);
}
