/**
 * The native copy of qcow-export (native/src/copy-range.c through src/export/native-copy.ts): used
 * for a file output when no digest needs the bytes. Every view of every fixture with a full oracle is
 * exported that way and compared with QEMU's bytes, holes included; the host file each layer's data runs
 * are copied from is the right one, and none where the bytes need a transform (encryption).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { QcowError } from '../src/errors.js';
import { openImage } from '../src/image.js';
import { exportToPath } from '../src/export/export-to-path.js';
import { nativeCopier } from '../src/export/native-copy.js';
import { selectView } from '../src/export/select-view.js';
import { type FixtureView, fixturePath, fixturesReady, loadManifest } from './support/fixtures.js';
import { cryptFixturesReady, cryptPath } from './support/crypt-fixtures.js';
import { toolsAvailable } from './support/tools.js';

const haveQemu = toolsAvailable('qemu-img', 'qemu-io');
const manifest = haveQemu && fixturesReady() ? loadManifest() : undefined;
if (haveQemu && !manifest) throw new Error('fixtures/manifest.json is missing: run `npm run fixtures` (vitest globalSetup builds it)');

// The addon is built by npm ci wherever the FUSE back-end is (a C compiler, node headers): under CI it must be there.
const probe = manifest ? await openImage(fixturePath(manifest.images.find((i) => i.name === 'v3-c64k')!.image)) : undefined;
const haveAddon = probe ? nativeCopier(probe.active) !== undefined : false;
probe?.close();
if (process.env.CI === 'true' && manifest && !haveAddon) throw new Error('native/build/Release/qcow_copy.node is missing: run `npm run build` (it builds the addon)');

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-native-copy-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});
afterEach(() => {
  delete process.env.QCOW_EXPORT_NATIVE_COPY;
});

function viewOf(image: Awaited<ReturnType<typeof openImage>>, v: FixtureView) {
  if (v.view === 'active') return selectView(image, {});
  return selectView(image, { snapshot: v.id ?? v.snapshot, vmstate: v.view === 'vmstate' });
}

describe.skipIf(!manifest || !haveAddon)('native copy against QEMU', () => {
  const images = manifest?.images.filter((i) => i.compare === 'full' && i.views.some((v) => v.oracle)) ?? [];

  for (const fx of images) {
    it(`${fx.name}: every view equals QEMU's, holes where QEMU's output has zeros`, async () => {
      const image = await openImage(fixturePath(fx.image));
      try {
        for (const v of fx.views.filter((x) => x.oracle)) {
          const what = `${fx.name} ${v.view} ${v.id ?? ''}`;
          const out = path.join(tmp, `${fx.name}-${v.view}-${v.id ?? 'a'}.raw`);
          const result = await exportToPath(viewOf(image, v).disk, out); // no digest: native copies
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
      expect(nativeCopier(plain.active)!.hostFile(0)!.path).toBe(plain.path);
      expect(nativeCopier(datafile.active)!.hostFile(0)!.path).toBe(datafile.dataFilePath);
      const c = nativeCopier(chain.active)!;
      expect(c.hostFile(0)!.path).toBe(chain.path);
      chain.backingChain.forEach((link, i) => expect(c.hostFile(i + 1)!.path, `depth ${i + 1}`).toBe(link.path));
      process.env.QCOW_EXPORT_NATIVE_COPY = '0';
      expect(nativeCopier(plain.active)).toBeUndefined();
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
      expect(nativeCopier(image.active)!.hostFile(0)).toBeUndefined();
    } finally {
      image.close();
    }
  });
});

/*
 * The native copy reads 256 KiB windows from the start of each call (a 4 MiB chunk of a data run): with
 * 512-byte clusters a run starts off the 4 KiB grid, so windows end inside output blocks (an external
 * data file, so that QEMU stores the run in one piece, with no L2 tables in between). A QEMU-made image
 * with zeros around those boundaries and across a chunk boundary, exported natively and by JavaScript:
 * same bytes as `qemu-img convert`, and the same data/hole map of the output (`qemu-img map -f raw`,
 * which asks the file system with SEEK_DATA/SEEK_HOLE).
 */
describe.skipIf(!haveQemu || !haveAddon)('native copy: window and chunk boundaries against QEMU', () => {
  let dir: string;
  let image: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-windows-'));
    image = path.join(dir, 'c512.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=512,data_file=${image}.data`, image, '8M']);
    const win = 256 * 1024;
    const io = [
      'write -P 0xa5 512 5M', // one run from guest 512: windows end at 512 + k * 256 KiB
      `write -P 0 ${win} 4096`, // a whole zero block over the first window's end (262656)
      `write -P 0 ${2 * win} 512`, // the block over the second window's end: zeros before it only
      `write -P 0 ${3 * win + 512} 3584`, // the block over the third window's end: zeros after it only
      'write -P 0 1M 64k', // a zero run inside the data
      `write -P 0 ${4 * 1024 * 1024 - 4096} 8192`, // zeros over the 4 MiB chunk boundary
      `write -P 0 ${5 * 1024 * 1024 - 3584} 4096`, // zeros up to the run's end
      'write -P 0x5a 6M 300k', // a second run, data to its end
    ];
    execFileSync('qemu-io', ['-f', 'qcow2', ...io.flatMap((c) => ['-c', c]), image], { stdio: 'ignore' });
  });
  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const rawMap = (file: string) => JSON.parse(execFileSync('qemu-img', ['map', '--output=json', '-f', 'raw', file], { encoding: 'utf8' })) as unknown[];

  for (const how of ['native', 'JavaScript'] as const) {
    it(`${how}: bytes and holes as qemu-img convert's`, async () => {
      const qemuOut = path.join(dir, 'qemu.raw');
      if (!fs.existsSync(qemuOut)) execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, qemuOut]);
      if (how === 'JavaScript') process.env.QCOW_EXPORT_NATIVE_COPY = '0';
      const img = await openImage(image);
      const out = path.join(dir, `${how}.raw`);
      try {
        // The point of the image: a run off the 4 KiB grid, longer than a chunk.
        expect(img.active.extents(0, img.active.size).find((e) => e.kind === 'data')).toMatchObject({ start: 512, length: 5 * 1024 * 1024 });
        await exportToPath(img.active, out);
      } finally {
        img.close();
      }
      expect(fs.readFileSync(out).equals(fs.readFileSync(qemuOut))).toBe(true);
      const map = rawMap(out);
      expect(map).toEqual(rawMap(qemuOut));
      expect(map.length).toBeGreaterThan(6); // the holes are there to compare
      fs.rmSync(out);
    });
  }

  it('an image file that shrinks after it was opened: the copy stops, names the image, leaves no output', async () => {
    const copy = path.join(dir, 'shrinks.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', copy, '8M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xa5 0 6M', copy], { stdio: 'ignore' });
    const img = await openImage(copy);
    const out = path.join(dir, 'shrinks.raw');
    try {
      fs.truncateSync(copy, fs.statSync(copy).size - 1024 * 1024); // inside the data
      const err = await exportToPath(img.active, out).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QcowError);
      expect((err as QcowError).message).toContain(copy);
      expect((err as QcowError).message).toContain('ends early');
      expect(fs.readdirSync(dir).filter((f) => f.startsWith('shrinks.raw'))).toEqual([]);
    } finally {
      img.close();
    }
  });
});
