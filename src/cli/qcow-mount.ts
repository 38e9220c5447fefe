#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS QCOW_NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS} node
/**
 * qcow-mount [options] IMAGE MOUNTPOINT   mount a qcow2 image read-only (background daemon)
 * qcow-mount -u [-z] MOUNTPOINT           unmount it and wait for the daemon to exit
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { commandScript } from '../package-files.js';
import { Command, Option } from 'commander';
import { type RemoteOpenOptions, openImageSync } from '../image.js';
import { isRemoteName, redactUrl } from '../io/remote-url.js';
import { KEY_FILE_HELP, KEY_HELP_AFTER, collectKeyFile, forgetKeys, keyOptions, refuseLocked } from './keys.js';
import { CliError, EXIT, type ExitCode, errorMessage, exitCodeFor } from '../exit.js';
import { parseSize } from '../units.js';
import { configureProgram, printError } from './common.js';
import type { DaemonConfig } from '../mount/daemon.js';
import type { MountOptions } from '../mount/options.js';
import { parseMountOptions } from './mount-options.js';
import { addRemoteOptions, remoteOpenOptions } from './remote-options.js';
import { type ImageCliOptions, addImageOptions, imageArgs, openOptionsFrom, warnProblems, withNoBackingHint } from './image-options.js';
import type { OpenOptions } from '../image.js';
import { mountProblem } from '../mount/preflight.js';
import { FUSE_SUBTYPE, defaultLogPath, ensureStateDir, findMount, pidFilePath, resolveMountPoint, unmountSync } from '../mount/system.js';
import { unmountMountPoint } from '../mount/unmount.js';

const PROG = 'qcow-mount';
/** Longest wait for the background daemon to report that the mount answers. */
const READY_TIMEOUT_MS = 60_000;

interface CliOptions extends ImageCliOptions {
  foreground?: boolean;
  debug?: boolean;
  log?: string;
  o?: string[];
  l2Cache?: string;
  clusterCache?: string;
  unmount?: boolean;
  lazy?: boolean;
  daemonChild?: boolean;
  /** Internal: the image URL and headers come over the IPC channel, not argv (they may hold secrets). */
  remoteFromParent?: boolean;
  header?: string[];
  caFile?: string;
  keysOnIpc?: boolean;
  keyFile?: string[];
}

const HELP_AFTER = `
Files in the mount (all read-only; files 0444, folders 0555):
  active.raw                 the disk as it is now, merged with its backing chain
  info.json                  header, features, backing chain, snapshots and their file names
  snapshots/NAME.raw         the disk as it was at each internal snapshot (its own size)
  snapshots/NAME.vmstate     the VM state a snapshot saved, where it saved one
  snapshots/NAME.ram         its guest-physical RAM as one flat file (holes read as zeros), x86 pc/q35
  snapshots/NAME.core        the same RAM as an ELF64 core (one PT_LOAD per physical range), for
                             Volatility 3, crash, gdb; info.json says why a VM state has neither
  Where a snapshot name is empty, unusable as a file name or shared, the file is NAME@ID (or @ID),
  else NAME#INDEX, with / in NAME shown as ∕ (snap 3/odd -> snap 3∕odd@3.raw); info.json maps
  every snapshot to its files.

Mount options (-o, comma-separated; several -o add up):
  allow_other                let other users see the mount (non-root: needs user_allow_other in /etc/fuse.conf)
  uid=N, gid=N               owner shown for every file (default: you)
  ro                         accepted; the mount is always read-only
  l2_cache_size=SIZE         L2 table cache (default 32M); K, M, G suffixes
  cluster_cache_size=SIZE    decompressed cluster cache (default 32M)
  remote_cache_size=SIZE     for an http(s) URL: cache of fetched blocks (default 256M)
  fuse=native|compat         FUSE back-end: native (libfuse 3 addon; the default when built) or
                             compat (fuse-native); $QCOW_MOUNT_FUSE sets the default
  direct_io                  (native) no page cache: reads of 64 KiB and more 1.3-2.5x faster, smaller
                             ones each a round trip (4 KiB: 7x slower; dd without bs= far worse),
                             nothing cached: for imaging and hashing in big reads
  fuse_uring                 native back-end: FUSE over io_uring when the kernel offers it (root sets
                             /sys/module/fuse/parameters/enable_uring to Y first), else /dev/fuse
                             with one warning line; info.json's fuseTransport says which
  ram_below_4g=SIZE          the VM's max-ram-below-4g machine option, for .ram/.core (the VM state
                             does not record it; default: QEMU's rule for the machine type and RAM size)

An image given by http(s) URL is read with Range requests (presigned S3/GCS/Azure URLs work as
given); its backing files resolve against the URL. --header and the URL's credentials and query
string are never logged, shown in info.json, or put on the daemon's command line.

The daemon's log (background mode) defaults to STATE/<key>.log and its pid file is STATE/<key>.pid,
where STATE is $QCOW_MOUNT_STATE_DIR, else $XDG_RUNTIME_DIR/qcow-mount, else /tmp/qcow-mount-<uid>,
and <key> is the first 16 hex digits of the SHA-256 of the resolved mount point path.

Exit codes: 0 ok, 1 usage, 2 image cannot be used (also: encrypted without -k, wrong LUKS passphrase), 3 mount failed, 4 unmount failed, 70 internal error.

Examples:
  qcow-mount disk.qcow2 /mnt/x && ls -l /mnt/x /mnt/x/snapshots
  qcow-mount --header 'Authorization: Bearer TOKEN' https://images.example/vm/disk.qcow2 /mnt/x
  mount -o loop,ro /mnt/x/snapshots/before-upgrade.p1 /mnt/guest        (a partition file)
  mount -o loop,ro,offset=$((2048*512)) /mnt/x/active.raw /mnt/guest2   (or an offset: start sector x 512)
  qcow-mount -u /mnt/x
  qcow-mount -k disk.key luks.qcow2 /mnt/x
${KEY_HELP_AFTER}
`;

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function buildProgram(): Command {
  const program = addImageOptions(configureProgram(new Command(), PROG, 'Mount a QEMU qcow2 or qcow (version 1) image, encrypted or not, read-only with FUSE: the active disk, each internal snapshot and its VM state as raw files.'))
    .usage('[options] IMAGE MOUNTPOINT\n       qcow-mount -u [-z] MOUNTPOINT')
    .argument('[IMAGE]', 'the qcow2 image')
    .argument('[MOUNTPOINT]', 'an empty folder to mount on')
    .option('-f, --foreground', 'stay attached; log to stderr; Ctrl-C unmounts')
    .option('-d, --debug', 'log every FUSE request (to stderr with -f, else to the log file)')
    .option('--log <FILE>', 'log file of the background daemon (default: see below)')
    .option('-o <OPTIONS>', 'mount options, comma-separated (see below)', collect)
    .option('--l2-cache <SIZE>', 'L2 table cache size, same as -o l2_cache_size=SIZE')
    .option('--cluster-cache <SIZE>', 'decompressed cluster cache size, same as -o cluster_cache_size=SIZE')
    .option('-u, --unmount', 'unmount MOUNTPOINT and wait for its daemon to exit')
    .option('-z, --lazy', 'with -u: detach a busy mount now; the daemon exits when its last open file closes')
    .addOption(new Option('--daemon-child', 'internal: run as the background daemon').hideHelp())
    .addOption(new Option('--remote-from-parent', 'internal: the image URL and headers come over the IPC channel').hideHelp())
    .addOption(new Option('--keys-on-ipc', 'internal: the daemon gets its passphrases over the IPC channel').hideHelp())
    .option('-k, --key-file <FILE>', KEY_FILE_HELP, collectKeyFile)
    .addHelpText('after', HELP_AFTER)
    .allowExcessArguments(false);
  addRemoteOptions(program);
  return program;
}

function mountOptionsFrom(opts: CliOptions): MountOptions {
  const options = parseMountOptions(opts.o ?? []);
  if (opts.l2Cache !== undefined) options.l2CacheBytes = parseSize(opts.l2Cache, '--l2-cache');
  if (opts.clusterCache !== undefined) options.clusterCacheBytes = parseSize(opts.clusterCache, '--cluster-cache');
  return options;
}

/** The -o list that gives the same options to the background child. */
function serialiseOptions(o: MountOptions): string {
  const parts: string[] = [];
  if (o.allowOther) parts.push('allow_other');
  if (o.uid !== undefined) parts.push(`uid=${o.uid}`);
  if (o.gid !== undefined) parts.push(`gid=${o.gid}`);
  if (o.l2CacheBytes !== undefined) parts.push(`l2_cache_size=${o.l2CacheBytes}`);
  if (o.clusterCacheBytes !== undefined) parts.push(`cluster_cache_size=${o.clusterCacheBytes}`);
  if (o.remoteCacheBytes !== undefined) parts.push(`remote_cache_size=${o.remoteCacheBytes}`);
  if (o.fuse !== undefined) parts.push(`fuse=${o.fuse}`);
  if (o.directIo) parts.push('direct_io');
  if (o.fuseUring) parts.push('fuse_uring');
  if (o.ramBelow4g !== undefined) parts.push(`ram_below_4g=${o.ramBelow4g}`);
  return parts.join(',');
}

/**
 * Refuses a bad image, a wrong LUKS passphrase or an encrypted image without one before anything is
 * spawned or mounted (exit 2). Returns the passphrases the daemon needs: the key files', then any typed
 * at the prompt.
 */
function checkImage(image: string, options: MountOptions, remote: RemoteOpenOptions, keyFiles: string[] | undefined, openOptions: OpenOptions, warn: boolean): Uint8Array[] {
  const keys = keyOptions(keyFiles);
  const typed: Uint8Array[] = [];
  const ask = keys.passphrase;
  if (ask) {
    keys.passphrase = (req) => {
      const p = ask(req);
      if (p !== undefined) typed.push(typeof p === 'string' ? Buffer.from(p) : p);
      return p;
    };
  }
  let opened;
  try {
    opened = openImageSync(image, { ...openOptions, l2CacheBytes: options.l2CacheBytes, clusterCacheBytes: options.clusterCacheBytes, remote, ...keys });
  } catch (err) {
    const hinted = withNoBackingHint(err, image, { ...openOptions, remote, passphrases: keys.passphrases });
    forgetKeys(keys);
    for (const p of typed) p.fill(0);
    throw hinted;
  }
  // In the foreground the daemon's log (stderr) says it.
  if (warn) warnProblems(PROG, opened);
  try {
    refuseLocked(opened);
  } catch (err) {
    forgetKeys(keys);
    throw err;
  } finally {
    opened.close();
  }
  return [...(keys.passphrases as Uint8Array[]), ...typed];
}

function daemonConfig(image: string, mountPoint: string, options: MountOptions, opts: CliOptions, logPath: string | null, remote?: RemoteOpenOptions): DaemonConfig {
  return { image: isRemoteName(image) ? image : path.resolve(image), mountPoint: resolveMountPoint(mountPoint), options, openOptions: openOptionsFrom(opts), debug: !!opts.debug, logPath, remote };
}

/** What the parent sends a background child whose image is a URL: the URL as given and the headers. */
interface RemoteSecrets {
  type: 'remote';
  image: string;
  remote: RemoteOpenOptions;
}

/** The child's half: waits for the parent's RemoteSecrets (they never travel in argv). */
function receiveSecrets(): Promise<RemoteSecrets> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new CliError('the image URL did not arrive from the parent process', EXIT.MOUNT)), 30_000);
    process.once('message', (m: RemoteSecrets) => {
      clearTimeout(timer);
      resolve(m);
    });
  });
}

async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  program.parse(argv);
  const opts = program.opts<CliOptions>();
  const args = program.args;

  if (opts.unmount) {
    if (args.length !== 1) throw new CliError('-u needs exactly one argument: the mount point', EXIT.USAGE);
    const outcome = await unmountMountPoint(args[0]!, !!opts.lazy);
    if (outcome.note) process.stderr.write(`${PROG}: ${outcome.note}\n`);
    return EXIT.OK;
  }
  if (opts.lazy) throw new CliError('-z/--lazy only goes with -u', EXIT.USAGE);
  if (args.length !== 2) throw new CliError(`expected IMAGE and MOUNTPOINT (got ${args.length} argument${args.length === 1 ? '' : 's'}); see --help`, EXIT.USAGE);
  const [image, mountPointArg] = args as [string, string];
  const options = mountOptionsFrom(opts);

  if (opts.daemonChild) {
    let config = daemonConfig(image, mountPointArg, options, opts, opts.log ?? null);
    if (opts.remoteFromParent) {
      const secrets = await receiveSecrets();
      config = daemonConfig(secrets.image, mountPointArg, options, opts, opts.log ?? null, secrets.remote);
    }
    const passphrases = opts.keysOnIpc ? await passphrasesFromParent() : undefined;
    return runChild({ ...config, passphrases });
  }

  const remote = remoteOpenOptions(opts, options.remoteCacheBytes);
  const passphrases = checkImage(image, options, remote, opts.keyFile, openOptionsFrom(opts), !opts.foreground);
  const problem = mountProblem(mountPointArg, options);
  if (problem) {
    for (const p of passphrases) p.fill(0);
    throw new CliError(problem, EXIT.MOUNT);
  }

  if (opts.foreground) return runForeground({ ...daemonConfig(image, mountPointArg, options, opts, null, remote), passphrases });
  return runBackground(image, mountPointArg, options, opts, remote, passphrases);
}

/** The background child's passphrases: asked for and received over the IPC channel. */
function passphrasesFromParent(): Promise<Uint8Array[]> {
  return new Promise((resolve, reject) => {
    if (!process.send) return reject(new CliError('--keys-on-ipc needs an IPC channel', EXIT.USAGE));
    const onMessage = (m: { type?: string; passphrases?: Uint8Array[] }) => {
      if (m?.type !== 'keys') return;
      process.removeListener('message', onMessage);
      resolve((m.passphrases ?? []).map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength)));
    };
    process.on('message', onMessage);
    process.send({ type: 'want-keys' });
  });
}

/** The daemon (and with it fuse-native's native addon) is loaded only where a mount is served. */
async function loadDaemon(): Promise<typeof import('../mount/daemon.js')> {
  return import('../mount/daemon.js');
}

/** -f: serve in this process until unmounted or interrupted. */
async function runForeground(config: DaemonConfig): Promise<number> {
  const { runDaemon, stderrLogger } = await loadDaemon();
  const logger = stderrLogger();
  return new Promise((resolve) => {
    void runDaemon(
      config,
      {
        ready: () => logger.log(`mounted ${isRemoteName(config.image) ? redactUrl(config.image) : config.image} at ${config.mountPoint}; Ctrl-C (or qcow-mount -u) unmounts`),
        failed: (message, code) => {
          printError(PROG, message);
          resolve(code);
        },
      },
      logger,
    );
    // On success the daemon exits the process itself when unmounted.
  });
}

/** The background child: same as the foreground, reporting to the parent over the IPC channel. */
async function runChild(config: DaemonConfig): Promise<number> {
  const { runDaemon } = await loadDaemon();
  return new Promise((resolve) => {
    void runDaemon(config, {
      ready: (info) => {
        // If the parent is gone (killed while waiting), keep serving: qcow-mount -u ends the mount.
        process.send?.({ type: 'ready', pid: info.pid }, () => {
          if (process.connected) process.disconnect();
        });
      },
      failed: (message, code) => {
        process.stderr.write(`${new Date().toISOString()} ${PROG}[${process.pid}]: ${message}\n`);
        if (process.send) process.send({ type: 'failed', message, code }, () => resolve(code));
        else resolve(code);
      },
    });
  });
}

type ChildMessage = { type: 'ready'; pid: number } | { type: 'failed'; message: string; code: ExitCode };

/** Starts the detached daemon and waits until its mount answers (or it failed). */
async function runBackground(image: string, mountPointArg: string, options: MountOptions, opts: CliOptions, remote: RemoteOpenOptions, passphrases: Uint8Array[]): Promise<number> {
  const mountPoint = resolveMountPoint(mountPointArg);
  let logPath: string;
  if (opts.log) logPath = path.resolve(opts.log);
  else logPath = defaultLogPath(mountPoint, ensureStateDir());
  let logFd: number;
  try {
    logFd = fs.openSync(logPath, 'a', 0o600);
  } catch (err) {
    throw new CliError(`cannot open the log file: ${errorMessage(err)}`, EXIT.MOUNT);
  }

  const script = commandScript(import.meta.url);
  const childArgs = [...process.execArgv, script, '--daemon-child', '--log', logPath];
  if (opts.debug) childArgs.push('--debug');
  // Passphrases go over the IPC channel when the child asks: never argv, environment or log.
  if (passphrases.length > 0) childArgs.push('--keys-on-ipc');
  const o = serialiseOptions(options);
  if (o) childArgs.push('-o', o);
  // A URL may hold credentials (its query string, userinfo) and the headers tokens: they go over the
  // IPC channel; argv (visible in ps) gets the URL without them.
  childArgs.push(...imageArgs(openOptionsFrom(opts)));
  const isUrl = isRemoteName(image);
  if (isUrl) childArgs.push('--remote-from-parent');
  childArgs.push('--', isUrl ? redactUrl(image) : path.resolve(image), mountPoint);

  let child: ChildProcess;
  try {
    // 'advanced' serialisation: passphrases cross as bytes (structured clone), not as JSON strings.
    child = spawn(process.execPath, childArgs, { detached: true, stdio: ['ignore', logFd, logFd, 'ipc'], cwd: '/', serialization: 'advanced' });
  } finally {
    fs.closeSync(logFd);
  }
  if (isUrl) child.send({ type: 'remote', image, remote } satisfies RemoteSecrets);

  type Outcome = ChildMessage | { type: 'exit'; code: number | null; signal: string | null } | { type: 'timeout' } | { type: 'interrupted'; signal: string };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const handlers: [NodeJS.Signals, () => void][] = [];
  const outcome = await new Promise<Outcome>((resolve) => {
    const timer = setTimeout(() => resolve({ type: 'timeout' }), READY_TIMEOUT_MS);
    const done = (o: Outcome) => {
      clearTimeout(timer);
      resolve(o);
    };
    child.on('message', (m: ChildMessage | { type: 'want-keys' }) => {
      if (m.type === 'want-keys') {
        child.send({ type: 'keys', passphrases }, () => {
          for (const p of passphrases) p.fill(0);
        });
        return;
      }
      done(m);
    });
    child.on('exit', (code, signal) => done({ type: 'exit', code, signal }));
    child.on('error', (err) => done({ type: 'failed', message: `cannot start the daemon: ${err.message}`, code: EXIT.MOUNT }));
    for (const sig of signals) {
      const h = () => done({ type: 'interrupted', signal: sig });
      handlers.push([sig, h]);
      process.once(sig, h);
    }
  });
  for (const [sig, h] of handlers) process.removeListener(sig, h);

  /** Stops a child that did not get ready and takes down any mount it made: nothing is left behind. */
  const cleanUp = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGKILL');
      await Promise.race([gone, new Promise((r) => setTimeout(r, 3000))]);
    }
    const left = findMount(mountPoint);
    if (left && left.fsType === `fuse.${FUSE_SUBTYPE}`) unmountSync(mountPoint, true);
    const pidFile = pidFilePath(mountPoint);
    try {
      if ((JSON.parse(fs.readFileSync(pidFile, 'utf8')) as { pid?: number }).pid === child.pid) fs.rmSync(pidFile, { force: true });
    } catch {
      // no pid file
    }
  };

  if (outcome.type === 'ready') {
    // The daemon says the kernel connected; check that the mount answers from another process.
    try {
      fs.statSync(path.join(mountPoint, 'info.json'));
    } catch (err) {
      await cleanUp();
      throw new CliError(`${mountPointArg}: the mount does not answer (${errorMessage(err)}); see ${logPath}`, EXIT.MOUNT);
    }
    if (child.connected) child.disconnect();
    child.unref();
    return EXIT.OK;
  }
  if (outcome.type === 'failed') {
    await new Promise<void>((r) => {
      if (child.exitCode !== null || child.signalCode !== null) return r();
      const t = setTimeout(r, 3000);
      child.once('exit', () => {
        clearTimeout(t);
        r();
      });
    });
    await cleanUp();
    throw new CliError(outcome.message, outcome.code);
  }
  await cleanUp();
  if (outcome.type === 'interrupted') throw new CliError(`interrupted (${outcome.signal}) before the mount was ready; nothing is mounted`, EXIT.MOUNT);
  if (outcome.type === 'timeout') throw new CliError(`${mountPointArg}: the daemon did not report ready within ${READY_TIMEOUT_MS / 1000} s; see ${logPath}`, EXIT.MOUNT);
  const how = outcome.signal ? `was killed by ${outcome.signal}` : `exited with code ${outcome.code}`;
  throw new CliError(`the daemon ${how} before the mount was ready; see ${logPath}`, EXIT.MOUNT);
}

const isMain = process.argv[1] !== undefined && fs.realpathSync(process.argv[1]) === commandScript(import.meta.url);
if (isMain) {
  main(process.argv).then(
    (code) => {
      // A successful foreground or child run never gets here before the daemon exits the process.
      process.exitCode = code;
      if (code !== EXIT.OK) setImmediate(() => process.exit(code));
    },
    (err: unknown) => {
      printError(PROG, err);
      if (process.env.QCOW_MOUNT_DEBUG_ERRORS && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
      process.exit(exitCodeFor(err, EXIT.INTERNAL));
    },
  );
}
