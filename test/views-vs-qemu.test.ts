/**
 * QEMU is the oracle: every view of every QEMU-made fixture must hold exactly the bytes QEMU gives
 * for it (qemu-img convert -O raw of the image, or of a copy reverted with qemu-img snapshot -a).
 */
import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage, type Disk, type QcowImage } from '../src/index.js';
import { fixturePath, fixturesReady, loadManifest, type FixtureImage, type FixtureView } from './support/fixtures.js';
import { prng } from './support/prng.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'qemu-io') && fixturesReady();
const images = ready ? loadManifest().images : [];
const CHUNK = 4 * 1024 * 1024;

function viewDisk(image: QcowImage, view: FixtureView): Disk {
  if (view.view === 'active') return image.active;
  const snap = image.snapshots.find((s) => (view.id !== undefined ? s.uniqueId === view.id : s.name === view.snapshot));
  if (!snap) throw new Error(`snapshot ${view.id ?? view.snapshot} not found`);
  if (view.view === 'snapshot') return image.snapshotDisk(snap);
  const vm = image.vmState(snap);
  if (!vm) throw new Error(`snapshot ${snap.name} has no VM state`);
  return vm;
}

function oracleRead(fd: number, length: number, position: number, size: number): Buffer {
  const n = Math.max(0, Math.min(length, size - position));
  const buf = Buffer.alloc(n);
  let done = 0;
  while (done < n) {
    const r = fs.readSync(fd, buf, done, n - done, position + done);
    if (r === 0) break; // a sparse oracle shorter than the view: the rest is zeros
    done += r;
  }
  return buf;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

const opened: QcowImage[] = [];
afterAll(() => {
  for (const i of opened) i.close();
});

describe.skipIf(!ready)('every view equals QEMU output', () => {
  it('has fixtures', () => {
    expect(images.length).toBeGreaterThan(10);
  });

  describe.each(images.map((i) => [i.name, i] as [string, FixtureImage]))('%s', (_name, fixture) => {
    const views = fixture.views.filter((v) => typeof v.oracle === 'string');

    it.each(views.map((v) => [`${v.view}${v.snapshot !== undefined ? ` ${v.snapshot}` : ''}`, v] as [string, FixtureView]))(
      '%s: size and bytes',
      async (_label, view) => {
        const image = await openImage(fixturePath(fixture.image));
        opened.push(image);
        const disk = viewDisk(image, view);
        expect(disk.size).toBe(view.size);
        const fd = fs.openSync(fixturePath(view.oracle as string), 'r');
        try {
          const oracleSize = fs.fstatSync(fd).size;
          expect(oracleSize).toBe(view.size);
          const ours = Buffer.alloc(CHUNK);
          const ranges: [number, number][] =
            fixture.compare === 'full' ? [[0, disk.size]] : (fixture.written ?? []).map(([o, l]) => [Math.max(0, o - 65536), l + 131072]);
          for (const [start, length] of ranges) {
            const end = Math.min(disk.size, start + length);
            for (let pos = start; pos < end; pos += CHUNK) {
              const n = Math.min(CHUNK, end - pos);
              const view = ours.subarray(0, n);
              expect(disk.readSync(view, pos)).toBe(n);
              const theirs = oracleRead(fd, n, pos, view.length + pos);
              const diff = firstDifference(view, theirs);
              if (diff >= 0) expect.fail(`first difference at byte ${pos + diff} (ours ${view[diff]}, QEMU ${theirs[diff]})`);
            }
          }
        } finally {
          fs.closeSync(fd);
        }
      },
    );

    it.each(views.map((v) => [`${v.view}${v.snapshot !== undefined ? ` ${v.snapshot}` : ''}`, v] as [string, FixtureView]))(
      '%s: random unaligned reads across cluster, subcluster and L2 boundaries and the end',
      async (_label, view) => {
        const image = await openImage(fixturePath(fixture.image));
        opened.push(image);
        const disk = viewDisk(image, view);
        const cluster = image.header.clusterSize;
        const l2Span = (cluster / (image.header.extendedL2 ? 16 : 8)) * cluster;
        const sub = image.header.extendedL2 ? cluster / 32 : cluster;
        const fd = fs.openSync(fixturePath(view.oracle as string), 'r');
        const random = prng(0x5eed ^ view.size);
        const boundaries = [sub, cluster, l2Span].filter((b) => b < disk.size);
        try {
          for (let i = 0; i < 300; i++) {
            let pos: number;
            const pick = random();
            if (pick < 0.5 && boundaries.length > 0) {
              // straddle a boundary: a few bytes before one to a few after
              const b = boundaries[Math.floor(random() * boundaries.length)]!;
              const k = 1 + Math.floor(random() * Math.max(1, Math.floor(disk.size / b) - 1));
              pos = Math.max(0, k * b - 1 - Math.floor(random() * 700));
            } else if (pick < 0.6) {
              pos = Math.max(0, disk.size - Math.floor(random() * 3 * cluster)); // near or at the end
            } else if (fixture.compare === 'sampled' && fixture.written?.length) {
              const [o, l] = fixture.written[Math.floor(random() * fixture.written.length)]!;
              pos = o + Math.floor(random() * l);
            } else {
              pos = Math.floor(random() * disk.size);
            }
            const len = 1 + Math.floor(random() * Math.min(3 * cluster + 517, 1 << 20));
            const ours = Buffer.alloc(len, 0xa5);
            const n = disk.readSync(ours, pos);
            const expected = Math.max(0, Math.min(len, disk.size - pos));
            expect(n, `read of ${len} at ${pos}`).toBe(expected);
            const theirs = oracleRead(fd, n, pos, disk.size);
            const padded = Buffer.alloc(n);
            theirs.copy(padded);
            const diff = firstDifference(ours.subarray(0, n), padded);
            if (diff >= 0) expect.fail(`read of ${len} at ${pos}: first difference at byte ${pos + diff}`);
          }
        } finally {
          fs.closeSync(fd);
        }
      },
    );

    it.each(views.map((v) => [`${v.view}${v.snapshot !== undefined ? ` ${v.snapshot}` : ''}`, v] as [string, FixtureView]))(
      '%s: extents tile the view and zero/unallocated runs read as zeros in QEMU output',
      async (_label, view) => {
        const image = await openImage(fixturePath(fixture.image));
        opened.push(image);
        const disk = viewDisk(image, view);
        const extents = disk.extents(0, disk.size);
        let at = 0;
        for (const e of extents) {
          expect(e.start).toBe(at);
          expect(e.length).toBeGreaterThan(0);
          at += e.length;
        }
        expect(at).toBe(disk.size);
        if (fixture.compare !== 'full') return;
        const fd = fs.openSync(fixturePath(view.oracle as string), 'r');
        const zeros = Buffer.alloc(CHUNK);
        try {
          for (const e of extents) {
            if (e.kind !== 'zero' && e.kind !== 'unallocated') continue;
            for (let pos = e.start; pos < e.start + e.length; pos += CHUNK) {
              const n = Math.min(CHUNK, e.start + e.length - pos);
              const theirs = oracleRead(fd, n, pos, disk.size);
              if (!theirs.equals(zeros.subarray(0, theirs.length))) {
                expect.fail(`${e.kind} extent at ${e.start} (+${e.length}) but QEMU has data at ${pos + theirs.findIndex((b) => b !== 0)}`);
              }
            }
          }
        } finally {
          fs.closeSync(fd);
        }
      },
    );

    it.skipIf(typeof fixture.map !== 'string')('active: extents agree with qemu-img map (data, depth, host offset)', async () => {
      const image = await openImage(fixturePath(fixture.image));
      opened.push(image);
      const map = JSON.parse(fs.readFileSync(fixturePath(fixture.map as string), 'utf8')) as QemuMapEntry[];
      const ours = image.active.extents(0, image.active.size);
      let i = 0;
      let compared = 0;
      for (const q of map) {
        // Walk our extents overlapping [q.start, q.start + q.length).
        while (i < ours.length && ours[i]!.start + ours[i]!.length <= q.start) i++;
        for (let j = i; j < ours.length && ours[j]!.start < q.start + q.length; j++) {
          const e = ours[j]!;
          const label = `QEMU ${JSON.stringify(q)} vs ours ${JSON.stringify(e)}`;
          const isData = e.kind === 'data' || e.kind === 'compressed';
          compared++;
          expect(isData, label).toBe(q.data);
          if (q.data) {
            expect(e.depth, label).toBe(q.depth);
            if (e.kind === 'data' && q.offset !== undefined && e.host !== undefined) {
              expect(e.host + (Math.max(q.start, e.start) - e.start), label).toBe(q.offset + (Math.max(q.start, e.start) - q.start));
            }
          }
        }
      }
      expect(compared).toBeGreaterThanOrEqual(map.length);
    });
  });
});

interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  compressed?: boolean;
  offset?: number;
}
