#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS QCOW_NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS} node
/**
 * qcow-info IMAGE: what `qemu-img info` and `qemu-img snapshot -l` tell, plus the backing chain, feature
 * names and the files a mount shows. `--json` prints the same description the mount serves as info.json.
 */
import fs from 'node:fs';
import { Command } from 'commander';
import { type OpenOptions, type QcowImage, openImage } from '../image.js';
import { type RemoteCliOptions, addRemoteOptions, remoteOpenOptions } from './remote-options.js';
import { QcowError } from '../errors.js';
import { describeImage, describeSnapshotMemory, describeSnapshots } from '../info/describe.js';
import { parseSize } from '../units.js';
import { formatExtents, formatInfoText, formatSnapshotDetail } from '../info/format-text.js';
import { findSnapshot } from '../export/select-view.js';
import { CliError, EXIT } from '../exit.js';
import { type ImageCliOptions, addImageOptions, openOptionsFrom, warnProblems } from './image-options.js';
import { configureProgram, parseArguments, printError, runMain } from './common.js';
import { KEY_FILE_HELP, KEY_HELP_AFTER, collectKeyFile, forgetKeys, keyOptions } from './keys.js';
import type { KeyOptions } from '../encryption.js';

const PROG = 'qcow-info';

interface Options extends RemoteCliOptions, ImageCliOptions {
  json?: boolean;
  snapshot?: string;
  extents?: boolean;
  ramBelow4g?: string;
  keyFile?: string[];
}

function buildProgram(): Command {
  const program = addImageOptions(configureProgram(
    new Command(),
    PROG,
    'Describe a qcow2 or qcow (version 1) image: what `qemu-img info` and `qemu-img snapshot -l` show (version, sizes, cluster size, compression, refcount bits, lazy refcounts, extended L2, corrupt/dirty, backing and data files, snapshots), plus the backing chain, feature names and the file names a qcow-mount would show.',
  ))
    .argument('<image>', 'the qcow2 image, a path or an http(s) URL (opened read-only)')
    .option('--json', 'print the description as JSON (the same as a mount\'s info.json)')
    .option('-s, --snapshot <name>', 'describe one snapshot (by ID or name, as `qemu-img snapshot -a` finds it, or by its file name in a mount)')
    .option('--ram-below-4g <SIZE>', "the VM's max-ram-below-4g machine option, for the physical memory map of VM states (the VM state does not record it)")
    .option('-k, --key-file <FILE>', `${KEY_FILE_HELP}; not needed to describe an encrypted image (its cipher and key slots are shown without it)`, collectKeyFile)
    .option('--extents', "list the view's runs (data, compressed, zero, unallocated) with their host offsets, like `qemu-img map`; the active disk, or the snapshot given with --snapshot")
    .addHelpText(
      'after',
      `
Examples:
  $ qcow-info disk.qcow2
  $ qcow-info disk.qcow2 --json | jq '.snapshots[].files'
  $ qcow-info disk.qcow2 --snapshot before-upgrade --extents
  $ qcow-info --header 'Authorization: Bearer TOKEN' https://images.example/vm/disk.qcow2

Exit codes:
  0 success; 1 usage error; 2 the image cannot be read (missing, not qcow2, corrupt, unsupported,
  unknown snapshot, wrong LUKS passphrase); 70 internal error.
${KEY_HELP_AFTER}`,
    );
  return addRemoteOptions(program);
}

async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  const stop = parseArguments(program, argv);
  if (stop !== undefined) return stop;
  const imagePath = program.args[0]!;
  const opts = program.opts<Options>();

  // No prompt here: an encrypted image is described without its key.
  const keys: KeyOptions = { passphrases: keyOptions(opts.keyFile, { prompt: false }).passphrases };
  let image: QcowImage;
  try {
    image = await openWithFallback(imagePath, { ...openOptionsFrom(opts), remote: remoteOpenOptions(opts), ...keys });
  } finally {
    forgetKeys(keys);
  }
  warnProblems(PROG, image);
  try {
    const write = (text: string) => process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
    const snapshot = opts.snapshot === undefined ? undefined : findSnapshot(image, opts.snapshot);
    if (opts.snapshot !== undefined && !snapshot) {
      const known = image.snapshots.map((s) => `${s.uniqueId} "${s.name}"`);
      const list = known.length === 0 ? 'it has no snapshots' : `it has ${known.length > 8 ? `${known.slice(0, 8).join(', ')}, ...` : known.join(', ')}`;
      throw new QcowError('ENOENT', image.path, `no snapshot with ID or name "${opts.snapshot}" (${list})`);
    }

    if (opts.extents) {
      const disk = snapshot ? image.snapshotDisk(snapshot) : image.active;
      const chainFiles = [image.dataFilePath ?? image.path, ...image.backingChain.map((l) => l.path)];
      const extents = [];
      // In windows, so that a huge disk is walked a piece at a time.
      const window = 1024 * 1024 * 1024;
      for (let w = 0; w < disk.size; w += window) {
        for (const e of disk.extents(w, Math.min(window, disk.size - w))) {
          const last = extents[extents.length - 1];
          if (last && last.kind === e.kind && last.depth === e.depth && last.start + last.length === e.start && (last.host === undefined ? e.host === undefined : last.host + last.length === e.host)) {
            last.length += e.length;
          } else extents.push({ ...e });
        }
      }
      if (opts.json) write(JSON.stringify(extents.map((e) => ({ ...e, file: e.kind === 'data' || e.kind === 'compressed' ? chainFiles[e.depth] : undefined })), null, 2));
      else write(formatExtents(extents, chainFiles));
      return EXIT.OK;
    }

    const memory = { maxRamBelow4g: opts.ramBelow4g === undefined ? undefined : parseSize(opts.ramBelow4g, '--ram-below-4g') };
    if (snapshot) {
      const info = describeSnapshotMemory(image, [describeSnapshots(image.snapshots)[image.snapshots.indexOf(snapshot)]!], memory)[0]!;
      write(opts.json ? JSON.stringify(info, null, 2) : formatSnapshotDetail(info));
      return EXIT.OK;
    }

    // Only the JSON form describes each VM state's RAM (it reads each one): it is what a mount's info.json says.
    const info = describeImage(image, undefined, opts.json ? { memory } : {});
    if (opts.json) write(JSON.stringify(info, null, 2));
    else {
      let allocatedBytes: number | undefined;
      try {
        allocatedBytes = fs.statSync(image.path).blocks * 512;
      } catch {
        allocatedBytes = undefined;
      }
      write(formatInfoText(info, { allocatedBytes }));
    }
    return EXIT.OK;
  } finally {
    image.close();
  }
}

/**
 * Opens the image; where only its backing chain cannot be opened (a missing or refused backing file),
 * describes the image alone, as `qemu-img info` does, with a warning.
 */
async function openWithFallback(imagePath: string, options: OpenOptions): Promise<QcowImage> {
  try {
    return await openImage(imagePath, options);
  } catch (err) {
    if (!(err instanceof QcowError)) throw err;
    let alone: QcowImage;
    try {
      alone = await openImage(imagePath, { ...options, noBacking: true });
    } catch {
      throw err;
    }
    if (alone.header.backingFile === undefined) {
      alone.close();
      throw err;
    }
    printError(
      PROG,
      new CliError(`warning: the backing chain cannot be opened (${err.message}); describing the image alone: qcow-mount and qcow-export need --no-backing to read it`, EXIT.IMAGE),
    );
    return alone;
  }
}

runMain(PROG, () => main(process.argv));
