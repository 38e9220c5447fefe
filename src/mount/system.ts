import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { lazyChildProcess, lazyCrypto } from '../lazy-builtins.js';

/** FUSE type suffix: our mounts show as `fuse.qcow-mount` in /proc/self/mountinfo. */
export const FUSE_SUBTYPE = 'qcow-mount';

/** One line of /proc/self/mountinfo. */
export interface MountEntry {
  id: number;
  parentId: number;
  mountPoint: string;
  /** `fuse.qcow-mount` for our mounts (FUSE's type plus the subtype). */
  fsType: string;
  source: string;
  options: string;
}

/** Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash, ...). */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const fields = line.split(' ');
    const dash = fields.indexOf('-', 6);
    if (dash < 0 || fields.length < dash + 3) continue;
    entries.push({
      id: Number(fields[0]),
      parentId: Number(fields[1]),
      mountPoint: unescapeMountField(fields[4]!),
      options: fields[5]!,
      fsType: fields[dash + 1]!,
      source: unescapeMountField(fields[dash + 2]!),
    });
  }
  return entries;
}

export function readMountInfo(): MountEntry[] {
  try {
    return parseMountInfo(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
  } catch {
    return [];
  }
}

/** The mount whose mount point is exactly `dir` (an absolute, resolved path); the last one when stacked. */
export function findMount(dir: string, entries: MountEntry[] = readMountInfo()): MountEntry | undefined {
  let found: MountEntry | undefined;
  for (const e of entries) if (e.mountPoint === dir) found = e;
  return found;
}

/** Resolves a mount point path without touching a (possibly dead) FUSE mount at its end. */
export function resolveMountPoint(dir: string): string {
  const abs = path.resolve(dir);
  const parent = path.dirname(abs);
  let realParent = parent;
  try {
    realParent = fs.realpathSync(parent);
  } catch {
    // leave as is; the caller reports the missing folder
  }
  if (abs === '/') return '/';
  const joined = path.join(realParent, path.basename(abs));
  // The last component may itself be a symlink; follow it only when it is one (lstat does not enter a mount).
  try {
    if (fs.lstatSync(joined).isSymbolicLink()) return fs.realpathSync(joined);
  } catch {
    // missing: reported by the caller
  }
  return joined;
}

/**
 * Where the daemon keeps its pid file (and, by default, its log):
 * `$QCOW_MOUNT_STATE_DIR`, else `$XDG_RUNTIME_DIR/qcow-mount`, else `/tmp/qcow-mount-<uid>`.
 */
export function stateDir(): string {
  if (process.env.QCOW_MOUNT_STATE_DIR) return path.resolve(process.env.QCOW_MOUNT_STATE_DIR);
  if (process.env.XDG_RUNTIME_DIR) return path.join(process.env.XDG_RUNTIME_DIR, 'qcow-mount');
  return path.join(os.tmpdir(), `qcow-mount-${process.getuid?.() ?? 0}`);
}

/** Creates the state folder (0700) and checks it is ours: a shared /tmp must not let others plant files. */
export function ensureStateDir(dir = stateDir()): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir}: state folder is not a folder`);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) throw new Error(`${dir}: state folder belongs to uid ${st.uid}, not to you (uid ${uid})`);
  return dir;
}

/** A short key for a mount point: the first 16 hex digits of the SHA-256 of its resolved path. */
export function mountKey(mountPoint: string): string {
  return lazyCrypto().createHash('sha256').update(mountPoint).digest('hex').slice(0, 16);
}

export function pidFilePath(mountPoint: string, dir = stateDir()): string {
  return path.join(dir, `${mountKey(mountPoint)}.pid`);
}

export function defaultLogPath(mountPoint: string, dir = stateDir()): string {
  return path.join(dir, `${mountKey(mountPoint)}.log`);
}

export interface PidFile {
  pid: number;
  /** Field 22 of /proc/PID/stat: tells a reused pid from ours. */
  startTime: string;
  mountPoint: string;
  image: string;
  log: string | null;
  started: string;
}

/** Fields 3 (state) and 22 (start time) of /proc/PID/stat, or undefined when there is no such process. */
function procStat(pid: number): { state: string; startTime: string } | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0]!, startTime: rest[19]! };
  } catch {
    return undefined;
  }
}

export function processStartTime(pid: number): string | undefined {
  return procStat(pid)?.startTime;
}

export function writePidFile(file: string, info: Omit<PidFile, 'pid' | 'startTime'>): void {
  const data: PidFile = { pid: process.pid, startTime: processStartTime(process.pid) ?? '', ...info };
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(data)}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

export function readPidFile(file: string): PidFile | undefined {
  try {
    const data = JSON.parse(fs.readFileSync(file, 'utf8')) as PidFile;
    if (typeof data.pid !== 'number') return undefined;
    return data;
  } catch {
    return undefined;
  }
}

/** Removes the pid file only if it still names this process (a newer daemon may have replaced it). */
export function removeOwnPidFile(file: string): void {
  const data = readPidFile(file);
  if (data && data.pid !== process.pid) return;
  try {
    fs.unlinkSync(file);
  } catch {
    // already gone
  }
}

/** Whether the pid file's process is still the daemon that wrote it. */
export function pidFileAlive(info: PidFile): boolean {
  const st = procStat(info.pid);
  // A zombie has exited: it only waits for its parent (init, for a daemon) to reap it.
  if (!st || st.state === 'Z' || st.state === 'X') return false;
  return info.startTime === '' || st.startTime === info.startTime;
}

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir || '.', name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

/** The command that unmounts a FUSE mount: fusermount3 or fusermount (which users may run), else umount. */
export function unmountCommand(mountPoint: string, lazy: boolean): [string, string[]] {
  const fusermount = onPath('fusermount3') ?? onPath('fusermount');
  if (fusermount) return [fusermount, [lazy ? '-uz' : '-u', '--', mountPoint]];
  return [onPath('umount') ?? 'umount', lazy ? ['-l', mountPoint] : [mountPoint]];
}

export interface UnmountResult {
  ok: boolean;
  busy: boolean;
  message: string;
}

function unmountResult(err: unknown, stderr: string): UnmountResult {
  if (!err) return { ok: true, busy: false, message: '' };
  const text = (stderr || (err as Error).message || '').trim().split('\n').filter(Boolean).pop() ?? 'unmount failed';
  return { ok: false, busy: /busy/i.test(text), message: text.replace(/^(fusermount3?|umount): /, '') };
}

/** Unmounts synchronously: only from a process that is not the one serving the mount. */
export function unmountSync(mountPoint: string, lazy: boolean): UnmountResult {
  const [cmd, args] = unmountCommand(mountPoint, lazy);
  try {
    lazyChildProcess().execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    return unmountResult(undefined, '');
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? '';
    return unmountResult(err, stderr);
  }
}

/** Unmounts without blocking the event loop: the daemon must keep answering FUSE requests meanwhile. */
export function unmountAsync(mountPoint: string, lazy: boolean): Promise<UnmountResult> {
  const [cmd, args] = unmountCommand(mountPoint, lazy);
  return new Promise((resolve) => {
    lazyChildProcess().execFile(cmd, args, { timeout: 30_000 }, (err, _stdout, stderr) => resolve(unmountResult(err, String(stderr))));
  });
}

/** File descriptors of this process open on /dev/fuse. */
export function fuseDeviceFds(): number[] {
  const fds: number[] = [];
  let names: string[];
  try {
    names = fs.readdirSync('/proc/self/fd');
  } catch {
    return fds;
  }
  for (const name of names) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${name}`) === '/dev/fuse') fds.push(Number(name));
    } catch {
      // closed meanwhile
    }
  }
  return fds;
}

/** Checks /dev/fuse exists and can be opened read-write; returns a problem or undefined. */
export function fuseDeviceProblem(): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync('/dev/fuse');
  } catch {
    return '/dev/fuse does not exist: load the fuse kernel module (modprobe fuse), or in a container pass --device /dev/fuse';
  }
  if (!st.isCharacterDevice()) return '/dev/fuse is not a character device';
  try {
    fs.accessSync('/dev/fuse', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return '/dev/fuse: permission denied (is your user allowed to use FUSE?)';
  }
  return undefined;
}
