/**
 * Oracle: `sfdisk --json` over QEMU's raw output of each view (through a 4096-byte-sector loop device for
 * the 4K image), and the bytes of QEMU's raw output for each partition file.
 */
import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage, type Disk, type QcowImage } from '../src/index.js';
import { openVolume } from '../src/volume/partitions.js';
import {
  loadPartitionManifest,
  loadSfdisk,
  partitionFixture,
  partitionFixturesReady,
  sfdiskNumber,
  type PartitionFixtureView,
} from './support/partition-fixtures.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'sfdisk', 'sgdisk', 'jq', 'losetup', 'mkfs.ext4') && partitionFixturesReady();
const views = ready ? loadPartitionManifest().views : [];
const EXTENDED = new Set([0x05, 0x0f, 0x85]);

const opened: QcowImage[] = [];
afterAll(() => {
  for (const i of opened) i.close();
});

async function viewDisk(view: PartitionFixtureView): Promise<Disk> {
  const image = await openImage(partitionFixture(view.image));
  opened.push(image);
  if (view.view === 'active') return image.active;
  const snap = image.snapshots.find((s) => s.name === view.snapshot);
  if (!snap) throw new Error(`snapshot ${view.snapshot} not found`);
  return image.snapshotDisk(snap);
}

describe.skipIf(!ready)('partitions equal sfdisk over QEMU output', () => {
  it('has the four images and a snapshot view', () => {
    expect(new Set(views.map((v) => v.name))).toEqual(new Set(['mbr', 'gpt512', 'gpt4k', 'repart']));
    expect(views.some((v) => v.view === 'snapshot')).toBe(true);
  });

  it.each(views.map((v) => [`${v.name} ${v.snapshot ?? v.view}`, v] as [string, PartitionFixtureView]))('%s', async (_label, view) => {
    const disk = await viewDisk(view);
    expect(disk.size).toBe(view.size);
    const sf = loadSfdisk(view);
    const volume = openVolume(disk);
    expect(volume).toBeDefined();
    const { table, partitions } = volume!;
    expect(table.problems).toEqual([]);
    expect(table.scheme).toBe(sf.label === 'dos' ? 'mbr' : 'gpt');
    expect(table.sectorSize).toBe(sf.sectorsize);
    expect(table.diskId?.toLowerCase()).toBe(sf.id.toLowerCase());
    const ss = sf.sectorsize;

    const expected = sf.partitions
      .filter((p) => sf.label === 'gpt' || !EXTENDED.has(parseInt(p.type, 16)))
      .map((p) => ({
        number: sfdiskNumber(p.node),
        start: p.start * ss,
        size: p.size * ss,
        type: sf.label === 'gpt' ? p.type : `0x${parseInt(p.type, 16).toString(16).padStart(2, '0')}`,
        bootable: sf.label === 'gpt' ? (p.attrs ?? '').includes('LegacyBIOSBootable') : p.bootable === true,
        ...(sf.label === 'gpt' ? { name: p.name ?? '', uniqueGuid: p.uuid } : {}),
      }));
    const ours = partitions.map((p) => ({
      number: p.number,
      start: p.start,
      size: p.size,
      type: p.type,
      bootable: p.bootable,
      ...(table.scheme === 'gpt' ? { name: p.name, uniqueGuid: p.uniqueGuid } : {}),
    }));
    expect(ours).toEqual(expected);
    expect(partitions.every((p) => p.suffix === `p${p.number}`)).toBe(true);

    const fd = fs.openSync(partitionFixture(view.raw), 'r');
    try {
      for (const p of partitions) {
        expect(p.disk.size).toBe(Math.min(p.size, disk.size - p.start));
        const ours = Buffer.alloc(p.disk.size);
        expect(p.disk.readSync(ours, 0)).toBe(p.disk.size);
        const qemu = Buffer.alloc(p.disk.size);
        fs.readSync(fd, qemu, 0, qemu.length, p.start);
        expect(ours.equals(qemu), `partition ${p.number} bytes`).toBe(true);
        const extents = p.disk.extents(0, p.disk.size);
        expect(extents[0]?.start).toBe(0);
        expect(extents.reduce((n, e) => n + e.length, 0)).toBe(p.disk.size);
      }
    } finally {
      fs.closeSync(fd);
    }
  });

  it('names the common types', async () => {
    const mbr = openVolume(await viewDisk(views.find((v) => v.name === 'mbr')!))!;
    expect(mbr.partitions.map((p) => p.typeName)).toEqual(['Linux', 'W95 FAT32 (LBA)', 'Linux', 'Linux swap / Solaris']);
    const gpt = openVolume(await viewDisk(views.find((v) => v.name === 'gpt512')!))!;
    expect(gpt.partitions.map((p) => p.typeName)).toEqual(['EFI System', 'Linux filesystem', 'Linux swap', 'Microsoft basic data']);
    expect(gpt.partitions.map((p) => p.name)).toEqual(['EFI System', 'root', 'swap', 'Données']);
    expect(gpt.table.gptCopy).toBe('primary');
  });

  it('reads the 4096-byte-sector GPT only with 4096-byte sectors', async () => {
    const disk = await viewDisk(views.find((v) => v.name === 'gpt4k')!);
    const forced = openVolume(disk, { sectorSize: 512 })!;
    // At 512 bytes a 4K disk shows what plain `fdisk -l` shows: one protective entry and no GPT.
    expect(forced.table.scheme).toBe('gpt');
    expect(forced.partitions).toEqual([]);
    expect(forced.table.problems.join('\n')).toMatch(/no valid GPT header/);
  });
});
