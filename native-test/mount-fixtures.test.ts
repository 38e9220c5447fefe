/**
 * Mount every QEMU-made fixture with the real CLI and compare every file the mount shows with QEMU's
 * bytes: active.raw, each snapshots/NAME.raw, each NAME.vmstate.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesReady, loadManifest, type FixtureImage, type FixtureView } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, compareRange, ensureBuilt, isMounted, prng } from './mount-support.js';

const ready = toolsAvailable('qemu-img', '/dev/fuse') && (fixturesReady() || process.env.CI === 'true');
const images: FixtureImage[] = ready ? loadManifest().images : [];

interface InfoSnapshot {
  id: string;
  name: string;
  diskSize: number;
  vmStateSize: number;
  date: string;
  files: { raw: string; vmstate: string | null; ram?: string | null; core?: string | null };
}

let scratch: Scratch;
beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('fixtures');
});
afterAll(() => {
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

function mountedFile(mnt: string, snapshots: InfoSnapshot[], view: FixtureView): string {
  if (view.view === 'active') return path.join(mnt, 'active.raw');
  const s = snapshots.find((x) => (view.id !== undefined ? x.id === view.id : x.name === view.snapshot));
  if (!s) throw new Error(`snapshot ${view.id ?? view.snapshot} is not in info.json`);
  const rel = view.view === 'snapshot' ? s.files.raw : s.files.vmstate;
  if (!rel) throw new Error(`snapshot ${s.name} shows no ${view.view} file`);
  return path.join(mnt, rel);
}

describe.skipIf(!ready)('every file of every fixture equals QEMU output', () => {
  it.each(images.map((i) => [i.name, i] as const))('%s', (_name, fixture) => {
    const mnt = scratch.mountPoint(fixture.name);
    scratch.mount(fixturePath(fixture.image), mnt);
    try {
      const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { snapshots: InfoSnapshot[]; virtualSize: number };
      // Every snapshot has its own file, and nothing else is there.
      const listed = fs.readdirSync(path.join(mnt, 'snapshots')).sort();
      const expected = info.snapshots.flatMap((s) => [s.files.raw, s.files.vmstate, s.files.ram ?? null, s.files.core ?? null].filter((f): f is string => f !== null).map((f) => f.replace(/^snapshots\//, ''))).sort();
      expect(listed).toEqual(expected);
      expect(new Set(listed).size).toBe(listed.length);
      expect(info.snapshots.length).toBe(fixture.snapshot_count as number);
      expect(fs.readdirSync(mnt).sort()).toEqual(['active.raw', 'info.json', 'snapshots']);
      expect(fs.statSync(path.join(mnt, 'active.raw')).size).toBe(info.virtualSize);

      for (const view of fixture.views) {
        const file = mountedFile(mnt, info.snapshots, view);
        const label = `${fixture.name} ${view.view} ${view.snapshot ?? ''}`;
        expect(fs.statSync(file).size, label).toBe(view.size);
        if (!view.oracle) continue;
        const oracle = fixturePath(view.oracle);
        if (fixture.compare === 'full') {
          expect(compareRange(file, oracle, 0, view.size), `${label}: first difference`).toBe(-1);
        } else {
          // Sampled (a 2 TiB disk): the written regions, both ends, and random ranges.
          const ranges: [number, number][] = [...(fixture.written ?? []), [0, 65536], [view.size - 65536, 65536]];
          const rnd = prng(view.size % 100_000);
          for (let i = 0; i < 64; i++) ranges.push([Math.floor(rnd() * (view.size - 1_048_576)), 1 + Math.floor(rnd() * 1_048_576)]);
          for (const [off, len] of ranges) {
            const n = Math.min(len, view.size - off);
            expect(compareRange(file, oracle, off, n), `${label} [${off}, +${n})`).toBe(-1);
          }
        }
        if (view.view === 'vmstate') {
          const head = Buffer.alloc(4);
          const fd = fs.openSync(file, 'r');
          fs.readSync(fd, head, 0, 4, 0);
          fs.closeSync(fd);
          expect(head.toString('latin1')).toBe('QEVM');
        }
      }
    } finally {
      const r = scratch.unmount(mnt);
      expect(r.status, r.stderr).toBe(0);
      expect(isMounted(mnt)).toBe(false);
    }
  });
});
