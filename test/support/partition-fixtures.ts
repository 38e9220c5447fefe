import fs from 'node:fs';
import path from 'node:path';
import { fixturesDir } from './fixtures.js';

/** Where scripts/make-partition-fixtures.sh puts its images, QEMU's raw views and sfdisk's readings. */
export const partitionFixturesDir = path.join(fixturesDir, 'partitions');

export interface PartitionFixtureView {
  name: string;
  image: string;
  view: 'active' | 'snapshot';
  snapshot?: string;
  /** QEMU's raw output of this view. */
  raw: string;
  /** `sfdisk --json` of that raw output (through a 4096-byte-sector loop device where sectorSize is 4096). */
  sfdisk: string;
  sectorSize: 512 | 4096;
  size: number;
}

export interface PartitionFixtureManifest {
  views: PartitionFixtureView[];
  ext4: { name: string; partition: number; files: Record<string, string> };
  /** Images with known writes between snapshots s1, s2 and the active disk, and QEMU's raw output of each. */
  diff: { name: string; image: string; views: Record<'s1' | 's2' | 'active', string> }[];
}

export interface SfdiskPartition {
  node: string;
  start: number;
  size: number;
  type: string;
  uuid?: string;
  name?: string;
  bootable?: boolean;
  attrs?: string;
}

export interface SfdiskTable {
  label: 'dos' | 'gpt';
  id: string;
  sectorsize: number;
  partitions: SfdiskPartition[];
}

export function partitionFixturesReady(): boolean {
  return fs.existsSync(path.join(partitionFixturesDir, 'manifest.json'));
}

export function loadPartitionManifest(): PartitionFixtureManifest {
  return JSON.parse(fs.readFileSync(path.join(partitionFixturesDir, 'manifest.json'), 'utf8')) as PartitionFixtureManifest;
}

export function partitionFixture(relative: string): string {
  return path.join(partitionFixturesDir, relative);
}

export function loadSfdisk(view: PartitionFixtureView): SfdiskTable {
  return (JSON.parse(fs.readFileSync(partitionFixture(view.sfdisk), 'utf8')) as { partitiontable: SfdiskTable }).partitiontable;
}

/** The Linux partition number sfdisk shows in a node name (`img5`, `/dev/loop0p2`). */
export function sfdiskNumber(node: string): number {
  const m = /(\d+)$/.exec(node);
  if (!m) throw new Error(`no partition number in ${node}`);
  return Number(m[1]);
}
