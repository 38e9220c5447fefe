/**
 * Damaged images through qcow-mount (fixtures by scripts/make-damaged-fixtures.sh): the mount serves
 * the active disk and every sound snapshot with QEMU's bytes, hides the damaged snapshots, says so in one
 * warning line each and in info.json's problems; --strict refuses the image as before.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixturePath, fixturesDir } from '../test/support/fixtures.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, ensureBuilt, isMounted } from './mount-support.js';

interface DamagedManifest {
  active: string;
  images: { name: string; image: string; problems: { what: string; offset: number }[]; snapshots: { name: string; id: string; oracle: string }[] }[];
}

const ready = toolsAvailable('qemu-img', '/dev/fuse', 'fusermount3') && (fs.existsSync(path.join(fixturesDir, 'damaged/manifest.json')) || process.env.CI === 'true');
let scratch: Scratch;
let manifest: DamagedManifest;

beforeAll(() => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('damaged');
  manifest = JSON.parse(fs.readFileSync(path.join(fixturesDir, 'damaged/manifest.json'), 'utf8')) as DamagedManifest;
});
afterAll(() => {
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

describe.skipIf(!ready)('damaged images through qcow-mount', () => {
  it('each mounts: active.raw and the sound snapshots equal QEMU\'s, the damaged ones are hidden and listed', () => {
    const active = fs.readFileSync(fixturePath(manifest.active));
    for (const f of manifest.images) {
      const mnt = scratch.mountPoint(f.name);
      const log = scratch.path(`${f.name}.log`);
      const r = scratch.cli(['--log', log, fixturePath(f.image), mnt]);
      expect(r.status, r.stderr).toBe(0);
      try {
        const warnings = r.stderr.trim().split('\n');
        expect(warnings, f.name).toHaveLength(f.problems.length);
        for (const w of warnings) expect(w).toMatch(/^qcow-mount: warning: .* hidden$/);
        expect(fs.readFileSync(log, 'utf8').split('\n').filter((l) => l.includes('warning:'))).toHaveLength(f.problems.length);

        expect(fs.readFileSync(path.join(mnt, 'active.raw')).equals(active), `${f.name} active.raw`).toBe(true);
        const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { problems: { what: string; offset: number; why: string }[] };
        expect(info.problems.map((p) => ({ what: p.what, offset: p.offset }))).toEqual(f.problems);
        expect(fs.readdirSync(path.join(mnt, 'snapshots')).sort()).toEqual(f.snapshots.map((s) => `${s.name}.raw`).sort());
        for (const s of f.snapshots) {
          expect(fs.readFileSync(path.join(mnt, 'snapshots', `${s.name}.raw`)).equals(fs.readFileSync(fixturePath(s.oracle)))).toBe(true);
        }
      } finally {
        expect(scratch.unmount(mnt).status).toBe(0);
      }
    }
  });

  it('--strict refuses a damaged image in one line, nothing mounted', () => {
    const f = manifest.images.find((i) => i.name === 'cut-table')!;
    const mnt = scratch.mountPoint('strict');
    const r = scratch.cli(['--strict', fixturePath(f.image), mnt]);
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^qcow-mount: .*cut-table\.qcow2: snapshot 1 of 2 .* is cut short/);
    expect(isMounted(mnt)).toBe(false);
  });
});
