#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS QCOW_NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS} node
/**
 * qcow-export IMAGE OUTPUT: writes one view of a qcow2 image (the active disk, a snapshot's disk, or a
 * snapshot's VM state) as a raw file, sparse, with an optional digest and a progress bar on a terminal.
 */
import fs from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { openImage } from '../image.js';
import { CliError, EXIT } from '../exit.js';
import { KEY_FILE_HELP, KEY_HELP_AFTER, collectKeyFile, forgetKeys, keyOptions, refuseLocked } from './keys.js';
import { configureProgram, parseArguments, runMain } from './common.js';
import { ExportError, exportToPath } from '../export/export-to-path.js';
import { selectView } from '../export/select-view.js';
import { QcowError, oneLine } from '../errors.js';
import type { BadRegion } from '../export/copy-disk.js';
import { type RemoteCliOptions, addRemoteOptions, remoteOpenOptions } from './remote-options.js';
import { parseSize } from '../units.js';
import { type ImageCliOptions, addImageOptions, openOptionsFrom, warnProblems, withNoBackingHint } from './image-options.js';
import { lazyCrypto, lazyTty } from '../lazy-builtins.js';

const PROG = 'qcow-export';
const HASHES = ['sha256', 'sha1', 'md5', 'sha512'] as const;
/**
 * An export reads each block of a remote image once, so its block cache only needs to hold the read-ahead
 * window (a quarter of the cache: 16 MiB). Against the mount's 256 MiB default, a 256 MiB image exported
 * from nginx on loopback took 849 against 947 ms (median of 5; fresh memory is what the bigger cache
 * costs) and the same at 20 ms latency (1223 against 1234 ms); 32 MiB was slower there (1659 ms).
 */
const EXPORT_REMOTE_CACHE_SIZE = 64 * 1024 * 1024;

interface Options extends RemoteCliOptions, ImageCliOptions {
  snapshot?: string;
  vmstate?: boolean;
  partition?: number;
  memory?: 'raw' | 'core';
  ramBelow4g?: string;
  force?: boolean;
  hash?: (typeof HASHES)[number];
  quiet?: boolean;
  bestEffort?: boolean;
  keyFile?: string[];
}

function buildProgram(): Command {
  const program = configureProgram(
    new Command(),
    PROG,
    'Write one view of a qcow2 or qcow (version 1) image, encrypted or not, as a raw file: the active disk (default), an internal snapshot\'s disk, or a snapshot\'s saved VM state. The file is sparse: zero and unallocated runs (and all-zero 4 KiB blocks) become holes. The bytes equal `qemu-img convert -O raw` (for a snapshot: after `qemu-img snapshot -a`).',
  );
  return addImageOptions(addRemoteOptions(program))
    .argument('<image>', 'the qcow2 image, a path or an http(s) URL (opened read-only; its backing chain is followed)')
    .argument('<output>', 'the raw file to write, or - for standard output (then zeros are written, not holes), or /dev/null (nothing written: with --hash, the digest only)')
    .option('-s, --snapshot <name>', 'export this internal snapshot (by ID or name, as `qemu-img snapshot -a` finds it, or by its file name in a mount)')
    .option('--vmstate', "with --snapshot: export the snapshot's saved VM state (QEMU's migration stream) instead of its disk")
    .option('-p, --partition <n>', "export one partition of the disk (its Linux number, as the mount's VIEW.pN shows it: MBR primaries 1-4, logicals from 5, GPT entry index + 1)", parsePartitionNumber)
    .addOption(new Option('--memory <form>', "with --snapshot: export the guest RAM its VM state holds, as a flat physical image (raw, the mount's NAME.ram) or an ELF64 core (core, NAME.core)").choices(['raw', 'core']))
    .option('--ram-below-4g <SIZE>', "with --memory: the VM's max-ram-below-4g machine option (the VM state does not record it)")
    .option('-f, --force', 'replace OUTPUT if it exists (atomically: the old file stays until the new one is complete)')
    .addOption(new Option('--hash <algorithm>', "print the view's digest as `HEX  OUTPUT` (on standard error when OUTPUT is -)").choices(HASHES))
    .option('-k, --key-file <FILE>', KEY_FILE_HELP, collectKeyFile)
    .option('--best-effort', 'where a region cannot be read (L2 table or cluster past the end of the file, corrupt compressed cluster, failed decryption): write zeros, keep going, list each region on stderr and in OUTPUT.badblocks.json; exit 6')
    .option('-q, --quiet', 'no progress bar (there is none anyway when standard error is not a terminal)')
    .addHelpText(
      'after',
      `
Examples:
  $ qcow-export disk.qcow2 disk.raw
  $ qcow-export disk.qcow2 before.raw --snapshot before-upgrade --hash sha256
  $ qcow-export disk.qcow2 vm.state --snapshot 1 --vmstate
  $ qcow-export disk.qcow2 root.img --partition 2
  $ qcow-export disk.qcow2 memory.core --snapshot 1 --memory core     # for Volatility 3, crash, gdb
  $ qcow-export disk.qcow2 - | gzip > disk.raw.gz
  $ qcow-export disk.qcow2 /dev/null --hash sha256                # the digest only, nothing written
  $ qcow-export 'https://bucket.s3.amazonaws.com/vm/disk.qcow2?X-Amz-Signature=...' disk.raw

Exit codes:
  0 success; 1 usage error; 2 the image cannot be read (missing, not qcow2, corrupt, unsupported,
  unknown snapshot); 5 the output cannot be written (exists without --force, disk full, ...);
  6 (--best-effort) completed with unreadable regions, written as zeros and listed;
  70 internal error. On any failure no output file is left behind.
${KEY_HELP_AFTER}`,
    );
}

async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  const stop = parseArguments(program, argv);
  if (stop !== undefined) return stop;
  const [imagePath, output] = program.args as [string, string];
  const opts = program.opts<Options>();
  if (opts.vmstate && opts.snapshot === undefined) throw new CliError('--vmstate needs --snapshot NAME (VM state belongs to a snapshot)', EXIT.USAGE);
  if (opts.memory && opts.snapshot === undefined) throw new CliError('--memory needs --snapshot NAME (the RAM is in a snapshot\'s VM state)', EXIT.USAGE);
  if (opts.memory && opts.vmstate) throw new CliError('--memory and --vmstate are two different views; give one', EXIT.USAGE);
  if (opts.ramBelow4g !== undefined && !opts.memory) throw new CliError('--ram-below-4g only goes with --memory', EXIT.USAGE);
  const memoryOptions = { maxRamBelow4g: opts.ramBelow4g === undefined ? undefined : parseSize(opts.ramBelow4g, '--ram-below-4g') };
  if (opts.hash && !lazyCrypto().getHashes().includes(opts.hash)) throw new CliError(`this Node.js has no ${opts.hash} digest`, EXIT.USAGE);

  // tty.isatty, not process.stdout.isTTY: creating process.stdout would make a piped fd 1 non-blocking.
  if (output === '-' && lazyTty().isatty(1)) throw new CliError('standard output is a terminal; redirect it to a file or a pipe (or give an OUTPUT file)', EXIT.USAGE);

  const keys = keyOptions(opts.keyFile);
  const openOptions = { ...openOptionsFrom(opts), remote: remoteOpenOptions(opts, EXPORT_REMOTE_CACHE_SIZE) };
  let image;
  try {
    image = await openImage(imagePath, { ...openOptions, ...keys }).catch((err: unknown) => {
      // Passphrases given, never the prompt: the check must not ask at the terminal a second time.
      throw withNoBackingHint(err, imagePath, { ...openOptions, passphrases: keys.passphrases });
    });
  } finally {
    forgetKeys(keys);
  }
  try {
    refuseLocked(image);
  } catch (err) {
    image.close();
    throw err;
  }
  warnProblems(PROG, image);
  try {
    const view = selectView(image, { ...opts, memoryOptions });
    const encrypted = image.encryption !== undefined || image.backingChain.some((l) => l.encryption !== undefined);
    const hash = opts.hash ? lazyCrypto().createHash(opts.hash) : undefined;
    const toStdout = output === '-';
    const badRegions: BadRegion[] | undefined = opts.bestEffort ? [] : undefined;
    // cli-progress is loaded only where a bar is drawn: it costs start-up time.
    const progress = opts.quiet || !process.stderr.isTTY ? undefined : (await import('./progress.js')).startProgress(view.disk.size, view.fileName);
    const abort = new AbortController();
    const onSignal = (sig: NodeJS.Signals) => abort.abort(new CliError(`interrupted by ${sig}; nothing was written`, EXIT.OUTPUT));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    process.once('SIGHUP', onSignal);
    try {
      await exportToPath(view.disk, output, {
        force: opts.force,
        hash,
        signal: abort.signal,
        onProgress: progress?.update,
        ...(badRegions ? { bestEffort: { granularity: image.header.clusterSize, onBadRegion: (r: BadRegion) => addRegion(badRegions, r) } } : {}),
        // Over HTTP one reader in order is best: the remote file fetches ahead of it, several requests at once.
        // Memory views are rebuilt from a page index in this process: workers would have to index again.
        // Read workers reopen the image: an encrypted chain would cost each one a PBKDF2 run and need its
        // keys handed over, so it is read on the main thread too.
        parallel: image.remote || opts.memory || encrypted ? undefined : {
          // One pass in order: a worker never reads a cluster twice, so its inflated-cluster cache stays small.
          spec: { imagePath: image.path, snapshotIndex: view.snapshot?.index, vmstate: opts.vmstate === true, window: view.window, openOptions: { ...openOptionsFrom(opts), clusterCacheBytes: 2 * 1024 * 1024 } },
          // For measurements and tests: QCOW_EXPORT_WORKERS=0 reads on the main thread only; N > 0 uses
          // N workers whatever the view holds.
          ...workersFromEnv(process.env.QCOW_EXPORT_WORKERS),
        },
        protect: [image.path, ...image.backingChain.map((l) => l.path), ...(image.dataFilePath ? [image.dataFilePath] : [])],
      });
      progress?.stop(true);
    } catch (err) {
      progress?.stop(false);
      if (err instanceof ExportError) throw new CliError(err.message, EXIT.OUTPUT);
      if (err instanceof QcowError || err instanceof CliError) throw err;
      const e = err as NodeJS.ErrnoException;
      if (e.syscall && toStdout) throw new CliError(`standard output: ${e.code === 'EPIPE' ? 'broken pipe (the reader went away)' : e.message}`, EXIT.OUTPUT);
      throw err;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.off('SIGHUP', onSignal);
    }
    if (hash) {
      const line = `${hash.digest('hex')}  ${output}\n`;
      if (toStdout) process.stderr.write(line);
      else process.stdout.write(line);
    }
    if (badRegions && badRegions.length > 0) {
      for (const r of badRegions) process.stderr.write(`${PROG}: unreadable, written as zeros: guest offset ${r.offset} (0x${r.offset.toString(16)}), ${r.length} bytes: ${oneLine(r.reason)}\n`);
      if (!toStdout) {
        const list = `${output}.badblocks.json`;
        fs.writeFileSync(list, `${JSON.stringify({ image: image.path, view: view.fileName, output, regions: badRegions }, null, 2)}\n`);
        process.stderr.write(`${PROG}: ${badRegions.length} unreadable region${badRegions.length === 1 ? '' : 's'} listed in ${list}\n`);
      }
      return EXIT.PARTIAL;
    }
    return EXIT.OK;
  } finally {
    image.close();
  }
}

/** Adds a bad region, merged with the previous one where they touch and have the same reason. */
function addRegion(regions: BadRegion[], r: BadRegion): void {
  const last = regions[regions.length - 1];
  if (last && last.offset + last.length === r.offset && last.reason === r.reason) last.length += r.length;
  else regions.push({ ...r });
}

function parsePartitionNumber(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('not a partition number (1, 2, ... as in VIEW.pN)');
  return n;
}

function workersFromEnv(value: string | undefined): { workers?: number; minCompressedBytes?: number } {
  if (value === undefined || value === '') return {};
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 64) throw new CliError(`QCOW_EXPORT_WORKERS="${value}" is not a worker count (0-64)`, EXIT.USAGE);
  return n === 0 ? { workers: 0 } : { workers: n, minCompressedBytes: 0 };
}

runMain(PROG, () => main(process.argv));
