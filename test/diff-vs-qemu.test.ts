/**
 * Soundness: no byte outside the listed ranges differs between QEMU's raw outputs of the two views.
 * Tightness: on images with known writes, exactly the written granules (plus the one identical rewrite)
 * are listed, and --verify leaves exactly the granules whose bytes differ.
 */
import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage, type Disk, type QcowImage } from '../src/index.js';
import { type ByteRange, rangesContain } from '../src/diff/ranges.js';
import { verifyRanges } from '../src/diff/verify.js';
import { diffGranule, diffViews } from '../src/diff/view-diff.js';
import { fixturePath, fixturesReady, loadManifest, type FixtureView } from './support/fixtures.js';
import { loadPartitionManifest, partitionFixture, partitionFixturesReady } from './support/partition-fixtures.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'qemu-io', 'sfdisk', 'sgdisk', 'jq', 'losetup', 'mkfs.ext4') && fixturesReady() && partitionFixturesReady();
const opened: QcowImage[] = [];
afterAll(() => {
  for (const i of opened) i.close();
});

async function open(file: string): Promise<QcowImage> {
  const image = await openImage(file);
  opened.push(image);
  return image;
}

function viewOf(image: QcowImage, label: string, id?: string): Disk {
  if (label === 'active') return image.active;
  const s = image.snapshots.find((x) => (id !== undefined ? x.uniqueId === id : x.name === label));
  if (!s) throw new Error(`no snapshot ${label}`);
  return image.snapshotDisk(s);
}

/** Granules (of `granule` bytes) whose bytes differ between two raw files; a size change counts as differing. */
function truth(fileA: string, fileB: string, granule: number): ByteRange[] {
  const a = fs.readFileSync(fileA);
  const b = fs.readFileSync(fileB);
  const out: ByteRange[] = [];
  const n = Math.max(a.length, b.length);
  for (let g = 0; g < n; g += granule) {
    const end = Math.min(n, g + granule);
    if (end > a.length || end > b.length || !a.subarray(g, end).equals(b.subarray(g, end))) {
      const last = out[out.length - 1];
      if (last && last.start + last.length === g) last.length += end - g;
      else out.push({ start: g, length: end - g });
    }
  }
  return out;
}

/** Every byte where the raw files differ lies inside `ranges`. */
function expectSound(fileA: string, fileB: string, ranges: ByteRange[], label: string): void {
  const a = fs.readFileSync(fileA);
  const b = fs.readFileSync(fileB);
  const n = Math.min(a.length, b.length);
  const chunk = 4096;
  for (let p = 0; p < n; p += chunk) {
    const end = Math.min(n, p + chunk);
    if (a.subarray(p, end).equals(b.subarray(p, end))) continue;
    for (let i = p; i < end; i++) {
      if (a[i] !== b[i] && !rangesContain(ranges, i)) throw new Error(`${label}: byte ${i} differs but is not listed`);
    }
  }
  if (a.length !== b.length) expect(rangesContain(ranges, n), `${label}: size change listed`).toBe(true);
}

const M = 1 << 20;
const K = 1024;

describe.skipIf(!ready)('metadata diff', () => {
  const diffFixtures = ready ? loadPartitionManifest().diff : [];

  describe.each(diffFixtures.map((f) => [f.name, f] as const))('%s (known writes)', (name, fixture) => {
    const el2 = name === 'diff-el2';
    const granule = el2 ? 2 * K : 64 * K;
    const expected: Record<string, ByteRange[]> = {
      's1..s2': [
        { start: 1 * M, length: 64 * K },
        { start: 2 * M, length: 128 * K },
        { start: 3 * M, length: 64 * K },
        { start: 4 * M, length: 64 * K }, // rewritten with the same bytes: listed, dropped by --verify
        { start: 7 * M, length: 64 * K }, // a 4 KiB write: the copy on write moves the whole cluster, all 32 subclusters
        { start: 13 * M, length: 64 * K },
      ],
      's2..active': [
        { start: 6 * M, length: 64 * K },
        { start: 12 * M, length: 64 * K }, // compressed cluster rewritten as a whole
      ],
    };
    it.each([
      ['s1', 's2'],
      ['s2', 'active'],
      ['s1', 'active'],
      ['active', 's1'],
    ])('%s..%s', async (from, to) => {
      const image = await open(partitionFixture(fixture.image));
      const a = viewOf(image, from);
      const b = viewOf(image, to);
      expect(diffGranule(a)).toBe(granule);
      const d = diffViews(a, b);
      const rawA = partitionFixture(fixture.views[from as 's1']);
      const rawB = partitionFixture(fixture.views[to as 's1']);
      expectSound(rawA, rawB, d.changed, `${from}..${to}`);
      const key = `${from}..${to}`;
      if (expected[key]) expect(d.changed).toEqual(expected[key]);
      expect(d.changedBytes).toBe(d.changed.reduce((n, r) => n + r.length, 0));
      // Every L2 table at most once per side.
      expect(d.l2TablesRead).toBeLessThanOrEqual(2 * d.spansCompared);
      expect(verifyRanges(a, b, d.changed, granule)).toEqual(truth(rawA, rawB, granule));
    });
  });

  it('a view compared with itself has no changes and reads no L2 table', async () => {
    const image = await open(partitionFixture('diff/diff.qcow2'));
    const d = diffViews(image.active, image.active);
    expect(d).toMatchObject({ changed: [], changedBytes: 0, l2TablesRead: 0 });
  });

  const images = ready ? loadManifest().images.filter((i) => i.compare === 'full') : [];
  const pairsOf = (views: FixtureView[]) => {
    const disks = views.filter((v) => (v.view === 'active' || v.view === 'snapshot') && typeof v.oracle === 'string' && v.size <= 64 * M);
    const pairs: [FixtureView, FixtureView][] = [];
    for (let i = 0; i + 1 < disks.length && pairs.length < 12; i++) pairs.push([disks[i], disks[i + 1]]);
    if (disks.length > 2) pairs.push([disks[disks.length - 1], disks[1]]);
    return pairs;
  };
  const cases = images.flatMap((img) => pairsOf(img.views).map(([a, b]) => [`${img.name}: ${a.snapshot ?? a.view}..${b.snapshot ?? b.view}`, img, a, b] as const));

  it.each(cases)('sound on %s', async (_label, img, va, vb) => {
    const image = await open(fixturePath(img.image));
    const a = viewOf(image, va.view === 'active' ? 'active' : va.snapshot!, va.id);
    const b = viewOf(image, vb.view === 'active' ? 'active' : vb.snapshot!, vb.id);
    const d = diffViews(a, b);
    expectSound(fixturePath(va.oracle!), fixturePath(vb.oracle!), d.changed, _label);
  });
});
