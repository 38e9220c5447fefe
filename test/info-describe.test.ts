/**
 * describeImage (info.json, qcow-info --json) against what `qemu-img info --output=json` says about
 * every QEMU-made fixture: sizes, features, snapshots (ids, names, dates, VM clock, VM state, icount)
 * and the backing chain.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImageSync, type QcowImage } from '../src/index.js';
import { describeImage, formatVmClock } from '../src/info/describe.js';
import { fixturePath, fixturesReady, loadManifest } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

describe('formatVmClock', () => {
  it('prints HH:MM:SS.mmm like qemu-img snapshot -l', () => {
    expect(formatVmClock(0n)).toBe('00:00:00.000');
    expect(formatVmClock(404_338_474n)).toBe('00:00:00.404');
    expect(formatVmClock(3_723_004_999_999n)).toBe('01:02:03.004');
    expect(formatVmClock(360_000_000_000_000n)).toBe('100:00:00.000');
    expect(formatVmClock(2n ** 64n - 1n)).toMatch(/^\d+:\d\d:\d\d\.\d{3}$/);
  });
});

const ready = toolsAvailable('qemu-img') && fixturesReady();
const images = ready ? loadManifest().images : [];
const opened: QcowImage[] = [];
afterAll(() => opened.forEach((i) => i.close()));

interface QemuInfo {
  'virtual-size': number;
  'cluster-size': number;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  filename: string;
  format: string;
  'format-specific'?: { data: { compat: string; 'compression-type'?: string; 'refcount-bits': number; 'lazy-refcounts'?: boolean; 'extended-l2'?: boolean; corrupt?: boolean; 'data-file'?: string; bitmaps?: unknown[] } };
  snapshots?: { id: string; name: string; 'date-sec': number; 'date-nsec': number; 'vm-clock-sec': number; 'vm-clock-nsec': number; 'vm-state-size': number; icount?: number }[];
}

describe.skipIf(!ready)('describeImage agrees with qemu-img info', () => {
  it.each(images.map((i) => [i.name, i] as const))('%s', (_name, fx) => {
    const file = fixturePath(fx.image);
    const image = openImageSync(file);
    opened.push(image);
    const info = describeImage(image);
    // Plain JSON: survives a round trip unchanged (no bigint, Date or class instances).
    expect(JSON.parse(JSON.stringify(info))).toEqual(info);

    const r = spawnSync('qemu-img', ['info', '--output=json', '--backing-chain', '-U', file], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    expect(r.status, r.stderr).toBe(0);
    const chain = JSON.parse(r.stdout) as QemuInfo[];
    const q = chain[0]!;
    const data = q['format-specific']!.data;
    expect(info.image).toBe(path.resolve(file));
    expect(info.fileSize).toBe(fs.statSync(file).size);
    expect(info.virtualSize).toBe(q['virtual-size']);
    expect(info.clusterSize).toBe(q['cluster-size']);
    expect(info.version).toBe(data.compat === '0.10' ? 2 : 3);
    expect(info.refcountBits).toBe(data['refcount-bits']);
    expect(info.compressionType).toBe(data['compression-type'] ?? 'zlib');
    expect(info.lazyRefcounts).toBe(data['lazy-refcounts'] ?? false);
    expect(info.extendedL2).toBe(data['extended-l2'] ?? false);
    expect(info.corrupt).toBe(data.corrupt ?? false);
    expect(info.dirty).toBe(q['dirty-flag'] ?? false);
    expect(info.extensions.bitmaps?.count ?? 0).toBe(data.bitmaps?.length ?? 0);
    if (data['data-file']) expect(info.dataFile?.name).toBe(data['data-file']);
    else expect(info.dataFile).toBeNull();

    // Backing chain: names, resolved paths and formats, link by link.
    expect(info.backingFile).toBe(q['backing-filename'] ?? null);
    expect(info.backingChain).toHaveLength(chain.length - 1);
    info.backingChain.forEach((link, i) => {
      const above = chain[i]!;
      const below = chain[i + 1]!;
      expect(link.depth).toBe(i + 1);
      expect(link.name).toBe(above['backing-filename']);
      expect(link.path).toBe(path.resolve(below.filename));
      expect(link.format).toBe(below.format);
      expect(link.formatSource).toBe(above['backing-filename-format'] ? 'header' : 'probed');
      expect(link.size).toBe(below['virtual-size']);
    });

    // Snapshots, in table order.
    const qs = q.snapshots ?? [];
    expect(info.snapshots).toHaveLength(qs.length);
    info.snapshots.forEach((s, i) => {
      const e = qs[i]!;
      expect([s.id, s.name, s.vmStateSize]).toEqual([e.id, e.name, e['vm-state-size']]);
      expect(s.dateSeconds).toBe(e['date-sec']);
      expect(s.dateNanoseconds).toBe(e['date-nsec']);
      expect(s.date).toBe(new Date(e['date-sec'] * 1000 + Math.floor(e['date-nsec'] / 1e6)).toISOString());
      expect(s.vmClockNs).toBe((BigInt(e['vm-clock-sec']) * 1_000_000_000n + BigInt(e['vm-clock-nsec'])).toString());
      expect(s.icount).toBe(e.icount === undefined ? null : String(e.icount));
      expect(s.files.raw).toMatch(/^snapshots\/.+\.raw$/);
      expect(s.files.vmstate === null).toBe(s.vmStateSize === 0);
    });
    const names = info.snapshots.flatMap((s) => [s.files.raw, s.files.vmstate].filter(Boolean));
    expect(new Set(names).size).toBe(names.length);
  });
});
