/**
 * Damaged images (made by QEMU, then cut or patched by scripts/make-damaged-fixtures.sh): a damaged
 * snapshot table, a snapshot's extra data or L1 table hides only the snapshots concerned, listed as
 * problems; the active disk and the other snapshots equal QEMU's bytes; `strict` refuses as before.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { openImageSync } from '../src/image.js';
import { QcowError } from '../src/errors.js';
import { fixturePath, fixturesDir, repoRoot } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

interface DamagedManifest {
  active: string;
  images: {
    name: string;
    image: string;
    qemu: string;
    description: string;
    problems: { what: string; offset: number }[];
    snapshots: { name: string; id: string; oracle: string }[];
  }[];
}

const ready = toolsAvailable('qemu-img', 'qemu-io') && fs.existsSync(path.join(fixturesDir, 'damaged/manifest.json'));
const manifest = ready ? (JSON.parse(fs.readFileSync(path.join(fixturesDir, 'damaged/manifest.json'), 'utf8')) as DamagedManifest) : undefined;
const images = manifest?.images ?? [];

const run = (cmd: string, args: string[]) =>
  spawnSync(process.execPath, [path.join(repoRoot, 'dist/cli', `${cmd}.js`), ...args], { encoding: 'buffer', maxBuffer: 1 << 27, timeout: 120_000 });

describe.skipIf(!ready)('damaged images', () => {
  it('the fixtures cover a cut table, a table at offset 0, a bad L1 table and bad extra data', () => {
    expect(images.map((i) => i.name)).toEqual(['cut-table', 'table-at-0', 'bad-l1', 'bad-extra']);
  });

  for (const f of images) {
    describe(f.name, () => {
      it('opens, lists exactly the expected problems, and keeps only the sound snapshots', () => {
        const image = openImageSync(fixturePath(f.image));
        try {
          expect(image.problems.map((p) => ({ what: p.what, offset: p.offset }))).toEqual(f.problems);
          for (const p of image.problems) {
            expect(p.where).toBe(`0x${p.offset.toString(16)}`);
            expect(p.why).not.toBe('');
            expect(p.why).not.toContain('\n');
          }
          expect(image.snapshots.map((s) => ({ name: s.name, id: s.uniqueId }))).toEqual(f.snapshots.map(({ name, id }) => ({ name, id })));
        } finally {
          image.close();
        }
      });

      it('the active disk and every shown snapshot equal QEMU\'s bytes', () => {
        const image = openImageSync(fixturePath(f.image));
        try {
          const read = (disk: { size: number; readSync(into: Uint8Array, position: number): number }) => {
            const buf = Buffer.alloc(disk.size);
            expect(disk.readSync(buf, 0)).toBe(disk.size);
            return buf;
          };
          expect(read(image.active).equals(fs.readFileSync(fixturePath(manifest!.active)))).toBe(true);
          for (const s of f.snapshots) {
            const snap = image.findSnapshot(s.id)!;
            expect(read(image.snapshotDisk(snap)).equals(fs.readFileSync(fixturePath(s.oracle)))).toBe(true);
          }
        } finally {
          image.close();
        }
      });

      it('strict refuses the image with one line naming the file', () => {
        let err: unknown;
        try {
          openImageSync(fixturePath(f.image), { strict: true }).close();
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(QcowError);
        expect((err as QcowError).message).toMatch(new RegExp(`^${fixturePath(f.image).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `));
      });

      it('qcow-info warns once per problem and lists them in --json; --strict exits 2', () => {
        const r = run('qcow-info', [fixturePath(f.image), '--json']);
        expect(r.status, r.stderr.toString()).toBe(0);
        const warnings = r.stderr.toString().trim().split('\n');
        expect(warnings).toHaveLength(f.problems.length);
        for (const w of warnings) expect(w).toMatch(/^qcow-info: warning: .* hidden$/);
        const info = JSON.parse(r.stdout.toString()) as { problems: { what: string; offset: number; where: string; why: string; hides: string }[]; snapshots: unknown[] };
        expect(info.problems.map((p) => ({ what: p.what, offset: p.offset }))).toEqual(f.problems);
        expect(info.snapshots).toHaveLength(f.snapshots.length);
        const strict = run('qcow-info', [fixturePath(f.image), '--strict']);
        expect(strict.status).toBe(2);
        expect(strict.stderr.toString().trim().split('\n')).toHaveLength(1);
      });
    });
  }

  it('qcow-export of a damaged image: the active disk equals QEMU\'s, with the warnings on stderr', () => {
    const f = images.find((i) => i.name === 'table-at-0')!;
    const r = run('qcow-export', [fixturePath(f.image), '-']);
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(r.stdout.equals(fs.readFileSync(fixturePath(manifest!.active)))).toBe(true);
    expect(r.stderr.toString()).toMatch(/^qcow-export: warning: .*snapshot table at 0x0: .*; all 65536 snapshots hidden\n$/);
  });
});
