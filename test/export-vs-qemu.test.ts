/**
 * The export path (copyDisk / exportToPath, in process) against QEMU's own bytes: every view of every
 * fixture that has a full oracle is exported sparse and compared byte for byte, its digest compared
 * with the oracle's, and a stream export compared too. The 2 TiB fixture is exported sparse and compared
 * at its written ranges and at random offsets.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImage, type QcowImage } from '../src/image.js';
import { copyDisk } from '../src/export/copy-disk.js';
import { exportToPath } from '../src/export/export-to-path.js';
import { selectView } from '../src/export/select-view.js';
import { type FixtureImage, type FixtureView, fixturePath, fixturesReady, loadManifest } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const haveQemu = toolsAvailable('qemu-img', 'qemu-io');
const manifest = haveQemu && fixturesReady() ? loadManifest() : undefined;
if (haveQemu && !manifest) throw new Error('fixtures/manifest.json is missing: run `npm run fixtures` (vitest globalSetup builds it)');

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-export-test-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** Compares two files chunk by chunk, reporting the first differing offset. */
function firstDifference(a: string, b: string): number | undefined {
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  try {
    const sa = fs.fstatSync(fa).size;
    const sb = fs.fstatSync(fb).size;
    const ba = Buffer.allocUnsafe(1 << 22);
    const bb = Buffer.allocUnsafe(1 << 22);
    for (let pos = 0; pos < Math.min(sa, sb); pos += ba.length) {
      const n = fs.readSync(fa, ba, 0, ba.length, pos);
      const m = fs.readSync(fb, bb, 0, bb.length, pos);
      if (n !== m) return pos + Math.min(n, m);
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) {
        for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return pos + i;
      }
    }
    return sa === sb ? undefined : Math.min(sa, sb);
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(1 << 22);
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

function viewOf(image: QcowImage, v: FixtureView) {
  if (v.view === 'active') return selectView(image, {});
  return selectView(image, { snapshot: v.id ?? v.snapshot, vmstate: v.view === 'vmstate' });
}

const fullImages: FixtureImage[] = manifest?.images.filter((i) => i.compare === 'full' && i.views.some((v) => v.oracle)) ?? [];

describe.skipIf(!manifest)('export equals QEMU for every fixture view', () => {
  for (const fx of fullImages) {
    it(`${fx.name}: every view, sparse file and digest`, async () => {
      const image = await openImage(fixturePath(fx.image));
      try {
        for (const v of fx.views) {
          if (!v.oracle) continue;
          const what = `${fx.name} ${v.view} ${v.id ?? ''} ${v.snapshot ?? ''}`;
          const oracle = fixturePath(v.oracle);
          const view = viewOf(image, v);
          expect(view.disk.size, what).toBe(fs.statSync(oracle).size);
          const out = path.join(tmp, `${fx.name}-${v.view}-${v.id ?? 'a'}.raw`);
          const hash = createHash('sha256');
          const result = await exportToPath(view.disk, out, { hash });
          expect(result.mode).toBe('file');
          expect(firstDifference(out, oracle), what).toBeUndefined();
          expect(hash.digest('hex'), what).toBe(sha256File(oracle));
          // Never more bytes written than the view holds, and a hole wherever nothing was written.
          expect(result.written, what).toBeLessThanOrEqual(view.disk.size);
          expect(fs.statSync(out).blocks * 512, what).toBeLessThanOrEqual(result.written + 1024 * 1024);
          fs.rmSync(out);
        }
      } finally {
        image.close();
      }
    });
  }

  it('a stream export (every byte written, zeros included) equals the oracle too', async () => {
    const fx = fullImages.find((i) => i.name === 'zero-discard-backing') ?? fullImages[0]!;
    const image = await openImage(fixturePath(fx.image));
    try {
      for (const v of fx.views.filter((x) => x.oracle)) {
        const out = path.join(tmp, 'stream.raw');
        const fd = fs.openSync(out, 'w');
        try {
          const r = await copyDisk(viewOf(image, v).disk, { fd, sparse: false });
          expect(r.written).toBe(v.size);
        } finally {
          fs.closeSync(fd);
        }
        expect(firstDifference(out, fixturePath(v.oracle!))).toBeUndefined();
        fs.rmSync(out);
      }
    } finally {
      image.close();
    }
  });

  it('small chunks (not a multiple of the cluster size) give the same bytes', async () => {
    const fx = fullImages.find((i) => i.name === 'zlib-c64k') ?? fullImages[0]!;
    const image = await openImage(fixturePath(fx.image));
    try {
      for (const v of fx.views.filter((x) => x.oracle)) {
        const out = path.join(tmp, 'small.raw');
        await exportToPath(viewOf(image, v).disk, out, { chunkBytes: 12288 + 512 });
        expect(firstDifference(out, fixturePath(v.oracle!))).toBeUndefined();
        fs.rmSync(out);
      }
    } finally {
      image.close();
    }
  });
});

describe.skipIf(!manifest?.images.some((i) => i.name === 'huge-2t'))('a 2 TiB image', () => {
  it('exports sparse in seconds, with the written ranges and random samples equal to QEMU', async () => {
    const fx = manifest!.images.find((i) => i.name === 'huge-2t')!;
    const image = await openImage(fixturePath(fx.image));
    try {
      for (const v of fx.views.filter((x) => x.oracle)) {
        const out = path.join(tmp, `huge-${v.view}.raw`);
        const started = Date.now();
        const result = await exportToPath(viewOf(image, v).disk, out);
        expect(Date.now() - started).toBeLessThan(30_000);
        const st = fs.statSync(out);
        expect(st.size).toBe(2 ** 41);
        expect(st.blocks * 512).toBeLessThan(16 * 1024 * 1024);
        expect(result.written).toBeLessThan(16 * 1024 * 1024);
        const ranges: [number, number][] = [...(fx.written ?? [])];
        let seed = 12345;
        const rand = () => {
          seed = (seed * 1103515245 + 12345) % 2 ** 31;
          return seed / 2 ** 31;
        };
        for (let i = 0; i < 64; i++) ranges.push([Math.floor(rand() * (2 ** 41 - 70000)), 65536]);
        ranges.push([2 ** 41 - 4096, 4096], [2 ** 40 - 4096, 8192]);
        const fa = fs.openSync(out, 'r');
        const fb = fs.openSync(fixturePath(v.oracle!), 'r');
        try {
          for (const [start, length] of ranges) {
            const n = Math.min(length, 2 ** 41 - start);
            const a = Buffer.alloc(n);
            const b = Buffer.alloc(n);
            fs.readSync(fa, a, 0, n, start);
            fs.readSync(fb, b, 0, n, start);
            expect(a.equals(b), `range ${start}+${n}`).toBe(true);
          }
        } finally {
          fs.closeSync(fa);
          fs.closeSync(fb);
        }
        fs.rmSync(out);
      }
    } finally {
      image.close();
    }
  });
});
