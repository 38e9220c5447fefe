import fs from 'node:fs';
import { CliError, EXIT } from '../exit.js';
import { loopDevicesUnder } from './loop-devices.js';
import { findMount, pidFileAlive, pidFilePath, readPidFile, resolveMountPoint, unmountSync } from './system.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls every 10 ms: a daemon exits a few ms after its unmount, and the command waits for it. */
async function waitForExit(isAlive: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (isAlive()) {
    if (Date.now() >= deadline) return false;
    await sleep(10);
  }
  return true;
}

export interface UnmountOutcome {
  /** A note for the user (printed on stderr), when there is something to say. */
  note?: string;
}

/**
 * `qcow-mount -u MOUNTPOINT [-z]`: unmounts a FUSE mount and waits for its daemon (found by its pid
 * file) to exit. A busy mount fails with a clear message unless `lazy`, which detaches it at once and
 * lets the daemon finish serving files still open. Throws a CliError (exit code 4) on failure.
 */
export async function unmountMountPoint(display: string, lazy: boolean): Promise<UnmountOutcome> {
  const mountPoint = resolveMountPoint(display);
  const pidFile = pidFilePath(mountPoint);
  const daemon = readPidFile(pidFile);
  const alive = () => daemon !== undefined && pidFileAlive(daemon);
  const entry = findMount(mountPoint);

  if (!entry) {
    if (alive()) {
      // Detached already (a lazy unmount) but the daemon still serves open files, or it lost its mount.
      process.kill(daemon!.pid, 'SIGTERM');
      if (await waitForExit(alive, 10_000)) return { note: `${display} was not mounted; stopped its daemon (pid ${daemon!.pid})` };
      throw new CliError(`${display}: not mounted, and its daemon (pid ${daemon!.pid}) did not exit on SIGTERM`, EXIT.UNMOUNT);
    }
    if (daemon) fs.rmSync(pidFile, { force: true });
    if (!fs.existsSync(mountPoint)) throw new CliError(`${display}: no such folder`, EXIT.UNMOUNT);
    throw new CliError(`${display}: not mounted`, EXIT.UNMOUNT);
  }
  if (!entry.fsType.startsWith('fuse')) {
    throw new CliError(`${display}: not a FUSE mount (${entry.fsType}); qcow-mount -u only unmounts FUSE mounts`, EXIT.UNMOUNT);
  }

  const result = unmountSync(mountPoint, lazy);
  const stillMounted = () => findMount(mountPoint)?.id === entry.id;
  if (!result.ok && stillMounted()) {
    if (result.busy) {
      const loops = loopDevicesUnder(mountPoint);
      if (loops.length > 0) {
        const list = loops.map((l) => `${l.device} (${l.backingFile})`).join(', ');
        const devices = loops.map((l) => l.device).join(' ');
        throw new CliError(
          `${display}: busy: loop device${loops.length > 1 ? 's' : ''} ${list} read${loops.length > 1 ? '' : 's'} from it; ` +
            `unmount what is mounted from ${loops.length > 1 ? 'them' : 'it'}, detach with losetup -d ${devices}, then run qcow-mount -u again`,
          EXIT.UNMOUNT,
        );
      }
      throw new CliError(
        `${display}: busy: a process has a file open there or its working folder inside (fuser -vm ${display} shows which); ` +
          'close it, or detach now with qcow-mount -u -z',
        EXIT.UNMOUNT,
      );
    }
    throw new CliError(`${display}: unmount failed: ${result.message}`, EXIT.UNMOUNT);
  }

  if (!daemon) return {};
  if (!alive()) {
    // The daemon was gone before (killed): its pid file is stale.
    fs.rmSync(pidFile, { force: true });
    return {};
  }
  if (lazy) {
    if (await waitForExit(alive, 3000)) return {};
    return { note: `${display} detached; its daemon (pid ${daemon.pid}) exits when the last file open there is closed` };
  }
  if (await waitForExit(alive, 10_000)) return {};
  process.kill(daemon.pid, 'SIGTERM');
  if (await waitForExit(alive, 5000)) return { note: `the daemon (pid ${daemon.pid}) did not exit after the unmount; stopped it with SIGTERM` };
  throw new CliError(`${display}: unmounted, but its daemon (pid ${daemon.pid}) did not exit`, EXIT.UNMOUNT);
}
