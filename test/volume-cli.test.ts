/**
 * Partitions in the app: qcow-export --partition writes QEMU's bytes at sfdisk's range, qcow-info and
 * info.json (describeImage) list every view's table, the mount tree has VIEW.pN beside each view.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage, type QcowImage } from '../src/index.js';
import { describeImage } from '../src/info/describe.js';
import { buildMountTree } from '../src/mount/tree.js';
import { repoRoot } from './support/fixtures.js';
import { loadPartitionManifest, loadSfdisk, partitionFixture, partitionFixturesReady, sfdiskNumber } from './support/partition-fixtures.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'sfdisk', 'sgdisk', 'jq', 'losetup', 'mkfs.ext4') && partitionFixturesReady();
const EXPORT = path.join(repoRoot, 'dist/cli/qcow-export.js');
const INFO = path.join(repoRoot, 'dist/cli/qcow-info.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'volume-cli-'));
const opened: QcowImage[] = [];
afterAll(() => {
  for (const i of opened) i.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe.skipIf(!ready)('partitions in the commands', () => {
  const views = ready ? loadPartitionManifest().views : [];
  const cases = views.flatMap((v) => {
    const sf = loadSfdisk(v);
    return sf.partitions
      .filter((p) => sf.label === 'gpt' || ![0x05, 0x0f, 0x85].includes(parseInt(p.type, 16)))
      .map((p) => [`${v.name} ${v.snapshot ?? 'active'} p${sfdiskNumber(p.node)}`, v, sfdiskNumber(p.node), p.start * sf.sectorsize, p.size * sf.sectorsize] as const);
  });

  it.each(cases)('qcow-export --partition: %s', (_label, view, number, start, size) => {
    const out = path.join(tmp, `${view.name}-${view.view}-${number}.img`);
    const args = [EXPORT, partitionFixture(view.image), out, '--partition', `${number}`, '--force', ...(view.snapshot ? ['--snapshot', view.snapshot] : [])];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const qemu = Buffer.alloc(size);
    const fd = fs.openSync(partitionFixture(view.raw), 'r');
    fs.readSync(fd, qemu, 0, size, start);
    fs.closeSync(fd);
    expect(fs.readFileSync(out).equals(qemu)).toBe(true);
    fs.rmSync(out);
  });

  it('qcow-export refuses a partition that is not there, in one line', () => {
    const r = spawnSync(process.execPath, [EXPORT, partitionFixture('mbr/mbr.qcow2'), path.join(tmp, 'x.img'), '--partition', '3'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^qcow-export: .*mbr\.qcow2: the active disk has no partition 3 \(mbr: partitions 1, 2, 5, 6\)$/)]);
    expect(fs.existsSync(path.join(tmp, 'x.img'))).toBe(false);
  });

  it('qcow-info lists every view\'s partitions', () => {
    const r = spawnSync(process.execPath, [INFO, partitionFixture('repart/repart.qcow2')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Partitions:$/m);
    expect(r.stdout).toMatch(/^active\s+1\s+gpt\/512\s+1048576\s+16 MiB\s+Linux filesystem \(0FC63DAF-8483-4772-8E79-3D69D8477DE4\)\s+new-root\s+active\.p1$/m);
    expect(r.stdout).toMatch(/^before-repartition\s+2\s+mbr\/512\s+11534336\s+10 MiB\s+HPFS\/NTFS\/exFAT \(0x07\)\s+snapshots\/before-repartition\.p2$/m);
  });

  it('info.json and the mount tree show the same partitions, per view', async () => {
    const image = await openImage(partitionFixture('repart/repart.qcow2'));
    opened.push(image);
    const info = describeImage(image);
    expect(info.partitions?.scheme).toBe('gpt');
    expect(info.partitions?.partitions.map((p) => [p.number, p.file, p.name])).toEqual([
      [1, 'active.p1', 'new-root'],
      [2, 'active.p2', 'new-data'],
    ]);
    expect(info.snapshots[0]!.partitions?.scheme).toBe('mbr');
    const tree = buildMountTree(image);
    const files = tree.files().map((f) => f.path).sort();
    expect(files).toEqual(['/active.p1', '/active.p2', '/active.raw', '/info.json', '/snapshots/before-repartition.p1', '/snapshots/before-repartition.p2', '/snapshots/before-repartition.raw']);
    const served = JSON.parse((tree.lookup('/info.json') as { bytes: Buffer }).bytes.toString('utf8')) as typeof info;
    expect(served.partitions).toEqual(info.partitions);
    expect(served.snapshots[0]!.partitions).toEqual(info.snapshots[0]!.partitions);
  });
});
