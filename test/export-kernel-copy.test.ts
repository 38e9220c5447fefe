/**
 * The kernel-side copy of qcow-export (native/src/copy-range.c through src/export/kernel-copy.ts): used
 * for a file output when no digest needs the bytes. Every view of every fixture with a full oracle is
 * exported that way and compared with QEMU's bytes, holes included; the host file each layer's data runs
 * are copied from is the right one, and none where the bytes need a transform (encryption).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openImage } from '../src/image.js';
import { exportToPath } from '../src/export/export-to-path.js';
import { kernelCopier } from '../src/export/kernel-copy.js';
import { selectView } from '../src/export/select-view.js';
import { type FixtureView, fixturePath, fixturesReady, loadManifest } from './support/fixtures.js';
import { cryptFixturesReady, cryptPath } from './support/crypt-fixtures.js';
import { toolsAvailable } from './support/tools.js';

const haveQemu = toolsAvailable('qemu-img', 'qemu-io');
const manifest = haveQemu && fixturesReady() ? loadManifest() : undefined;
if (haveQemu && !manifest) throw new Error('fixtures/manifest.json is missing: run `npm run fixtures` (vitest globalSetup builds it)');

// The addon is built by npm ci wherever the FUSE back-end is (a C compiler, node headers): under CI it must be there.
const probe = manifest ? await openImage(fixturePath(manifest.images.find((i) => i.name === 'v3-c64k')!.image)) : undefined;
const haveAddon = probe ? kernelCopier(probe.active) !== undefined : false;
probe?.close();
if (process.env.CI === 'true' && manifest && !haveAddon) throw new Error('native/build/Release/qcow_copy.node is missing: run `npm run build` (it builds the addon)');

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-kernel-copy-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});
afterEach(() => {
  delete process.env.QCOW_EXPORT_KERNEL_COPY;
});

function viewOf(image: Awaited<ReturnType<typeof openImage>>, v: FixtureView) {
  if (v.view === 'active') return selectView(image, {});
  return selectView(image, { snapshot: v.id ?? v.snapshot, vmstate: v.view === 'vmstate' });
}

describe.skipIf(!manifest || !haveAddon)('kernel-side copy against QEMU', () => {
  const images = manifest?.images.filter((i) => i.compare === 'full' && i.views.some((v) => v.oracle)) ?? [];

  for (const fx of images) {
    it(`${fx.name}: every view equals QEMU's, holes where QEMU's output has zeros`, async () => {
      const image = await openImage(fixturePath(fx.image));
      try {
        for (const v of fx.views.filter((x) => x.oracle)) {
          const what = `${fx.name} ${v.view} ${v.id ?? ''}`;
          const out = path.join(tmp, `${fx.name}-${v.view}-${v.id ?? 'a'}.raw`);
          const result = await exportToPath(viewOf(image, v).disk, out); // no digest: kernel copies
          expect(fs.readFileSync(out).equals(fs.readFileSync(fixturePath(v.oracle!))), what).toBe(true);
          expect(fs.statSync(out).blocks * 512, what).toBeLessThanOrEqual(result.written + 1024 * 1024);
          fs.rmSync(out);
        }
      } finally {
        image.close();
      }
    });
  }

  it('all-zero blocks inside data runs stay holes (prealloc-full: every cluster stored, mostly zeros)', async () => {
    const fx = manifest!.images.find((i) => i.name === 'prealloc-full')!;
    const image = await openImage(fixturePath(fx.image));
    try {
      const out = path.join(tmp, 'prealloc.raw');
      const extents = image.active.extents(0, image.active.size);
      const stored = extents.filter((e) => e.kind === 'data').reduce((n, e) => n + e.length, 0);
      const result = await exportToPath(image.active, out);
      expect(fs.readFileSync(out).equals(fs.readFileSync(fixturePath(fx.views.find((v) => v.view === 'active')!.oracle!)))).toBe(true);
      // The fixture must make the point: much more stored than non-zero.
      expect(stored).toBeGreaterThan(4 * result.written);
      expect(fs.statSync(out).blocks * 512).toBeLessThanOrEqual(result.written + 64 * 1024);
      fs.rmSync(out);
    } finally {
      image.close();
    }
  });

  it('copies from the file that stores each layer: the image, its data file, a raw backing file', async () => {
    const open = (name: string) => openImage(fixturePath(manifest!.images.find((i) => i.name === name)!.image));
    const plain = await open('v3-c64k');
    const datafile = await open('datafile-raw');
    const chain = await open('chain-raw-qcow2-qcow2');
    try {
      expect(kernelCopier(plain.active)!.hostFile(0)!.path).toBe(plain.path);
      expect(kernelCopier(datafile.active)!.hostFile(0)!.path).toBe(datafile.dataFilePath);
      const c = kernelCopier(chain.active)!;
      expect(c.hostFile(0)!.path).toBe(chain.path);
      chain.backingChain.forEach((link, i) => expect(c.hostFile(i + 1)!.path, `depth ${i + 1}`).toBe(link.path));
      process.env.QCOW_EXPORT_KERNEL_COPY = '0';
      expect(kernelCopier(plain.active)).toBeUndefined();
    } finally {
      plain.close();
      datafile.close();
      chain.close();
    }
  });

  it('/dev/null is not written: the view is only hashed', async () => {
    const fx = manifest!.images.find((i) => i.name === 'v3-c64k')!;
    const image = await openImage(fixturePath(fx.image));
    try {
      const { createHash } = await import('node:crypto');
      const hash = createHash('sha256');
      const r = await exportToPath(image.active, '/dev/null', { hash });
      expect(r.mode).toBe('discard');
      expect(r.written).toBe(0);
      expect(hash.digest('hex')).toBe(createHash('sha256').update(fs.readFileSync(fixturePath(fx.views.find((v) => v.view === 'active')!.oracle!))).digest('hex'));
    } finally {
      image.close();
    }
  });

  it.skipIf(!cryptFixturesReady())('never for encrypted data (stored bytes are not the guest bytes)', async () => {
    const image = await openImage(cryptPath('luks-aes256-xts/disk.qcow2'));
    try {
      expect(kernelCopier(image.active)!.hostFile(0)).toBeUndefined();
    } finally {
      image.close();
    }
  });
});
