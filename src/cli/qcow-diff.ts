#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS QCOW_NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS} node
/**
 * qcow-diff IMAGE FROM TO: the guest ranges where two views of a qcow2 image may differ, from its L1/L2
 * tables alone; optionally verified against the data, as JSON, and as an SVG timeline of every snapshot.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import type { Disk } from '../disk/disk.js';
import { openImage, type QcowImage } from '../image.js';
import { QcowError } from '../errors.js';
import { renderTimelineSvg } from '../diff/svg.js';
import { imageTimeline } from '../diff/timeline.js';
import { verifyRanges } from '../diff/verify.js';
import { diffGranule, diffViews } from '../diff/view-diff.js';
import { totalBytes } from '../diff/ranges.js';
import { findSnapshot } from '../export/select-view.js';
import { CliError, EXIT } from '../exit.js';
import { configureProgram, parseArguments, runMain } from './common.js';

const PROG = 'qcow-diff';

interface Options {
  json?: boolean;
  svg?: string;
  verify?: boolean;
  stats?: boolean;
}

function buildProgram(): Command {
  const program = configureProgram(
    new Command(),
    PROG,
    'List the guest ranges where two views of a qcow2 image may differ (an internal snapshot or the active disk), from the L1/L2 tables alone: no data cluster is read. A difference is never missed; a range rewritten with the same bytes may be listed (--verify reads both sides and drops those). Views of different sizes differ in the tail.',
  );
  return program
    .argument('<image>', 'the qcow2 image (opened read-only)')
    .argument('<from>', 'a snapshot (by ID, else name, else its file name in a mount), or "active" for the current disk')
    .argument('<to>', 'the same for the other side')
    .option('--json', 'print {"from", "to", "size", "changed": [{"start", "length"}], "changedBytes"} instead of the table')
    .option('--svg <file>', 'also draw every snapshot in time order and the active disk as bands along the disk, marking what changed since the previous one (with partitions under the axis)')
    .option('--verify', 'read both sides of each listed range and keep only the clusters whose bytes differ')
    .option('--stats', 'also report how many L2 tables were read (in the JSON as "stats", else on standard error)')
    .addHelpText(
      'after',
      `
Examples:
  $ qcow-diff disk.qcow2 before-upgrade active
  $ qcow-diff disk.qcow2 1 2 --json > changes.json
  $ qcow-diff disk.qcow2 before-upgrade active --verify --svg timeline.svg

Output (text): one line per range, start and length in hex as \`qemu-img map\` prints them, then a total.
Exit codes:
  0 success (whether or not the views differ); 1 usage error; 2 the image cannot be read (missing, not
  qcow2, corrupt, unknown snapshot); 5 the SVG cannot be written; 70 internal error.`,
    );
}

interface ResolvedView {
  disk: Disk;
  label: string;
}

function resolveView(image: QcowImage, name: string): ResolvedView {
  if (name === 'active' || name === 'active.raw') return { disk: image.active, label: 'active' };
  const s = findSnapshot(image, name);
  if (!s) {
    const known = image.snapshots.map((x) => `${x.uniqueId} "${x.name}"`);
    const list = known.length === 0 ? 'it has no snapshots' : `it has ${known.length > 8 ? `${known.slice(0, 8).join(', ')}, ...` : known.join(', ')}`;
    throw new QcowError('ENOENT', image.path, `no snapshot with ID or name "${name}" and it is not "active" (${list})`);
  }
  return { disk: image.snapshotDisk(s), label: s.name };
}

const hex = (n: number) => `0x${n.toString(16)}`;

async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  const stop = parseArguments(program, argv);
  if (stop !== undefined) return stop;
  const [imagePath, fromName, toName] = program.args as [string, string, string];
  const opts = program.opts<Options>();

  const image = await openImage(imagePath);
  try {
    const from = resolveView(image, fromName);
    const to = resolveView(image, toName);
    const diff = diffViews(from.disk, to.disk, image.path);
    for (const p of diff.problems) process.stderr.write(`${PROG}: warning: ${p}\n`);
    const changed = opts.verify ? verifyRanges(from.disk, to.disk, diff.changed, diffGranule(from.disk, image.path)) : diff.changed;
    const changedBytes = totalBytes(changed);
    const size = Math.max(from.disk.size, to.disk.size);

    if (opts.svg) writeSvg(opts.svg, renderTimelineSvg(imageTimeline(image, path.basename(image.path))));

    if (opts.json) {
      const out = {
        from: from.label,
        to: to.label,
        size,
        fromSize: from.disk.size,
        toSize: to.disk.size,
        verified: opts.verify === true,
        changed,
        changedBytes,
        ...(opts.stats ? { stats: { l2TablesRead: diff.l2TablesRead, spansCompared: diff.spansCompared } } : {}),
      };
      process.stdout.write(`${JSON.stringify(out)}\n`);
    } else {
      const lines = [`${'Start'.padEnd(20)}Length`];
      for (const r of changed) lines.push(`${hex(r.start).padEnd(20)}${hex(r.length)}`);
      lines.push(
        `Total: ${changedBytes} bytes (${hex(changedBytes)}) in ${changed.length} range${changed.length === 1 ? '' : 's'}${opts.verify ? ', verified against the data' : ''}; ` +
          `${from.label} is ${from.disk.size} bytes, ${to.label} ${to.disk.size}`,
      );
      process.stdout.write(`${lines.join('\n')}\n`);
      if (opts.stats) process.stderr.write(`${PROG}: ${diff.l2TablesRead} L2 tables read, ${diff.spansCompared} L2 spans compared\n`);
    }
    return EXIT.OK;
  } finally {
    image.close();
  }
}

/** Writes the SVG whole or not at all (a temporary file renamed into place). */
function writeSvg(file: string, svg: string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    fs.writeFileSync(tmp, svg);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw new CliError(`${file}: cannot write the SVG: ${(err as Error).message}`, EXIT.OUTPUT);
  }
}

runMain(PROG, () => main(process.argv));
