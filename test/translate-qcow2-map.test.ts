/**
 * The translation layer alone: Qcow2Map.mapRun over hand-built images, the L2 table loader and the
 * shared caches. Expected runs are computed from where the builder put each cluster.
 */
import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeHeader } from '../src/format/header.js';
import { HostFile } from '../src/io/host-file.js';
import { loadL1Table } from '../src/translate/l1-table.js';
import { SharedCaches } from '../src/caches.js';
import { fileOffsetKey as cacheKey } from '../src/io/image-file.js';
import { compressedDescriptor } from '../src/format/l2.js';
import { Qcow2Map, Run, RunKind } from '../src/translate/qcow2-map.js';
import { QcowError } from '../src/errors.js';
import { openImage } from '../src/image.js';
import { COMPRESSED, COPIED, ImageBuilder, compressible, pattern, tempDir } from './support/build-image.js';

const tmp = tempDir();
const files: HostFile[] = [];
afterAll(() => {
  files.forEach((f) => f.close());
  tmp.cleanup();
});
let serial = 0;

interface Opened {
  map: Qcow2Map;
  l1: Float64Array;
  caches: SharedCaches;
}

function openMeta(b: ImageBuilder, caches = new SharedCaches(), dataFile?: string): Opened {
  const path = b.writeTo(tmp.file(`walk${serial++}.qcow2`));
  const file = HostFile.open(path);
  files.push(file);
  const first = Buffer.alloc(Math.min(file.size, b.clusterSize));
  file.readAt(first, 0, first.length, 0, 'header');
  const header = decodeHeader(first, path, file.size);
  let data = file;
  if (dataFile) {
    data = HostFile.open(dataFile);
    files.push(data);
  }
  const map = new Qcow2Map(header, file, data, caches);
  const l1 = loadL1Table(file, header.l1TableOffset, header.l1Size, header.clusterSize, 'active');
  return { map, l1, caches };
}

type RunT = [kind: string, ...args: number[]];

/**
 * The runs mapRun gives for a range, as tuples: data (dst, length, host), zero (dst, length),
 * unallocated (dst, length, view position), compressed (dst, length, stream offset, stream length,
 * offset in the cluster, view position).
 */
function runs(o: Opened, position: number, length: number, origin = 0): RunT[] {
  const out: RunT[] = [];
  const run = new Run();
  for (let dst = 0; dst < length; dst += run.length) {
    o.map.mapRun(o.l1, origin, position + dst, length - dst, run);
    if (run.kind === RunKind.Data) out.push(['data', dst, run.length, run.host]);
    else if (run.kind === RunKind.Zero) out.push(['zero', dst, run.length]);
    else if (run.kind === RunKind.Unallocated) out.push(['unallocated', dst, run.length, position + dst]);
    else out.push(['compressed', dst, run.length, run.host, run.hostLength, run.inCluster, position + dst]);
  }
  return out;
}

/**
 * Joins pieces that continue each other into the runs mapRun reports: zero and unallocated runs, and
 * data runs whose host offsets follow on. Compressed runs stay one cluster each.
 */
function merged(list: RunT[]): RunT[] {
  const out: RunT[] = [];
  for (const r of list) {
    const last = out[out.length - 1];
    const follows = last && last[0] === r[0] && last[1]! + last[2]! === r[1];
    if (follows && (r[0] === 'zero' || r[0] === 'unallocated' || (r[0] === 'data' && last[3]! + last[2]! === r[3]))) {
      last[2]! += r[2]!;
      continue;
    }
    out.push([...r]);
  }
  return out;
}

function eio(fn: () => unknown): QcowError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(QcowError);
    expect((err as QcowError).code).toBe('EIO');
    return err as QcowError;
  }
  throw new Error('expected EIO');
}

describe('Qcow2Map.mapRun', () => {
  const C = 4096;
  const SPAN = 512 * C;

  it('maps a range into runs with host offsets, never reading guest data', () => {
    const b = new ImageBuilder({ clusterBits: 12, size: 3 * SPAN });
    const h0 = b.active.dataCluster(0, pattern(C, 1));
    b.active.zeroCluster(1);
    const comp = b.active.compressedCluster(3, compressible(C, 3));
    const h4 = b.active.dataCluster(4, pattern(C, 4));
    // Cluster 511 is the last of L1 index 0; 512 the first of index 1 (its own L2 table).
    const h511 = b.active.dataCluster(511, pattern(C, 5));
    const h512 = b.active.dataCluster(512, pattern(C, 6));
    const o = openMeta(b);
    const desc = compressedDescriptor(Number(comp.entry >> 32n), Number(comp.entry & 0xffff_ffffn), 12);
    expect(runs(o, 100, 5 * C - 150)).toEqual(merged([
      ['data', 0, C - 100, h0 + 100],
      ['zero', C - 100, C],
      ['unallocated', 2 * C - 100, C, 2 * C],
      ['compressed', 3 * C - 100, C, desc.offset, desc.length, 0, 3 * C],
      ['data', 4 * C - 100, C - 50, h4],
    ]));
    expect(runs(o, 511 * C + 10, C)).toEqual(merged([
      ['data', 0, C - 10, h511 + 10],
      ['data', C - 10, 10, h512],
    ]));
    // L1 index 2 has no L2 table: one run for the whole span, whatever its length.
    expect(runs(o, 2 * SPAN - 5, SPAN + 5)).toEqual(merged([
      ['unallocated', 0, 5, 2 * SPAN - 5],
      ['unallocated', 5, SPAN, 2 * SPAN],
    ]));
    expect(runs(o, 0, 0)).toEqual([]);
  });

  it('follows long runs through a table and into the next, ending each where an entry breaks it', () => {
    const b = new ImageBuilder({ clusterBits: 12, size: 3 * SPAN });
    // Guest clusters 0-699 on consecutive host clusters (across the first table's end at 512), except 300
    // (elsewhere) and 301 (the next host cluster after 300's: a run restarts there); 700-899 zero flags
    // (one preallocated); 900-1099 unallocated; 1100 data again.
    const base = b.allocClusters(700);
    const pieces: RunT[] = [];
    for (let i = 0; i < 700; i++) {
      if (i === 300 || i === 301) continue;
      b.active.dataCluster(i, pattern(C, i), base + i * C);
      pieces.push(['data', i * C, C, base + i * C]);
    }
    const moved = b.allocClusters(2);
    b.active.dataCluster(300, pattern(C, 300), moved);
    b.active.dataCluster(301, pattern(C, 301), moved + C);
    pieces.splice(300, 0, ['data', 300 * C, C, moved], ['data', 301 * C, C, moved + C]);
    for (let i = 700; i < 900; i++) {
      b.active.zeroCluster(i, i === 800 ? b.allocClusters(1) : 0);
      pieces.push(['zero', i * C, C]);
    }
    pieces.push(['unallocated', 900 * C, 200 * C, 900 * C]);
    const h1100 = b.active.dataCluster(1100, pattern(C, 1100));
    pieces.push(['data', 1100 * C, C, h1100]);
    const o = openMeta(b);
    const all = runs(o, 0, 1101 * C);
    expect(all).toEqual(merged(pieces));
    expect(all.map((r) => r[0])).toEqual(['data', 'data', 'data', 'zero', 'unallocated', 'data']);
    // Starting inside a cluster and ending inside one: the same runs, cut at both ends.
    expect(runs(o, 10 * C + 7, 289 * C)).toEqual([['data', 0, 289 * C, base + 10 * C + 7]]);
    expect(runs(o, 650 * C, 100 * C + 9)).toEqual([
      ['data', 0, 50 * C, base + 650 * C],
      ['zero', 50 * C, 50 * C + 9],
    ]);
  });

  it('checks every entry a long run passes: a data cluster past the end of the file stops the read (EIO)', () => {
    const b = new ImageBuilder({ clusterBits: 12, size: SPAN });
    b.active.dataCluster(0, pattern(C, 0)); // the L2 table comes first, before the run's clusters
    const base = b.allocClusters(299);
    for (let i = 1; i < 300; i++) b.active.dataCluster(i, pattern(C, i), base + (i - 1) * C);
    // Guest 300 and 301 go on with the run: build() puts the L1 table on 300's host cluster and the file
    // ends before 301's. Guest 350 is off any run and past the end.
    b.active.setEntry(300, BigInt(base + 299 * C) | COPIED);
    b.active.setEntry(301, BigInt(base + 300 * C) | COPIED);
    b.active.setEntry(350, BigInt(2 ** 40) | COPIED);
    const o = openMeta(b);
    expect(runs(o, C, 300 * C)).toEqual([['data', 0, 300 * C, base]]);
    expect(eio(() => runs(o, C, 301 * C)).message).toMatch(/past the end of the file/);
    expect(eio(() => runs(o, C, 301 * C)).message).toContain('guest offset 0x12d000');
    expect(runs(o, 302 * C, 48 * C)).toEqual([['unallocated', 0, 48 * C, 302 * C]]);
    expect(eio(() => runs(o, 302 * C, 100 * C)).message).toContain('guest offset 0x15e000');
  });

  it('treats L1 indexes past the end of the L1 table as unallocated', () => {
    const b = new ImageBuilder({ clusterBits: 12, size: SPAN });
    b.active.dataCluster(0, pattern(C, 1));
    const o = openMeta(b);
    expect(o.l1.length).toBe(1);
    expect(runs(o, SPAN - 10, 20)).toEqual(merged([
      ['unallocated', 0, 10, SPAN - 10],
      ['unallocated', 10, 10, SPAN],
    ]));
  });

  it('shifts the view by an origin (a VM state window) and reports view positions', () => {
    const b = new ImageBuilder({ clusterBits: 12, size: 3 * SPAN });
    const h = b.active.dataCluster(512, pattern(C, 1));
    b.active.zeroCluster(514);
    const o = openMeta(b);
    expect(runs(o, 10, 3 * C, SPAN)).toEqual(merged([
      ['data', 0, C - 10, h + 10],
      ['unallocated', C - 10, C, C],
      ['zero', 2 * C - 10, C],
      ['unallocated', 3 * C - 10, 10, 3 * C],
    ]));
    // Across the end of an L2 span with an origin that is not span-aligned.
    expect(runs(o, SPAN - C - 4, 8, C)).toEqual(merged([
      ['unallocated', 0, 4, SPAN - C - 4],
      ['data', 4, 4, h],
    ]));
  });
});

describe('QEMU refuses these entries when reading (EIO), and so do we', () => {
  const C = 16384;

  it('a zero flag in a version 2 image ("Zero cluster entry found in pre-v3 image")', async () => {
    const b = new ImageBuilder({ version: 2, clusterBits: 14, size: 4 * C });
    b.active.dataCluster(0, pattern(C, 1));
    b.active.zeroCluster(1);
    b.active.zeroCluster(2, b.allocClusters(1));
    const o = openMeta(b);
    expect(eio(() => runs(o, C, 10)).message).toMatch(/zero cluster entry in a version 2 image/i);
    eio(() => runs(o, 2 * C, 10));
    expect(runs(o, 0, 10)).toHaveLength(1);
  });

  it('a compressed cluster in an image with an external data file', () => {
    fs.writeFileSync(tmp.file('cdata.raw'), Buffer.alloc(4 * C));
    const b = new ImageBuilder({ clusterBits: 14, size: 4 * C, dataFile: 'cdata.raw' });
    b.active.externalCluster(0);
    b.active.setEntry(1, COMPRESSED | 0x10000n);
    const o = openMeta(b, new SharedCaches(), tmp.file('cdata.raw'));
    expect(eio(() => runs(o, C, 10)).message).toMatch(/compressed cluster .*external data file/i);
    expect(runs(o, 0, 10)).toEqual([['data', 0, 10, 0]]);
  });

  describe('extended L2: the host offset of a cluster is checked whenever the entry has one', () => {
    function image() {
      const b = new ImageBuilder({ clusterBits: 14, size: 8 * C, extendedL2: true });
      const good = b.allocClusters(1);
      // 0: all zero with a misaligned host offset (QEMU: ZERO_ALLOC, offset checked).
      b.active.setEntry(0, COPIED | BigInt(good + 512), 0xffff_ffffn << 32n);
      // 1: no bits, misaligned host offset (UNALLOCATED_ALLOC, offset checked).
      b.active.setEntry(1, COPIED | BigInt(good + 512), 0n);
      // 2: zero and unallocated subclusters, misaligned host offset.
      b.active.setEntry(2, COPIED | BigInt(good + 512), 0x0000_00ffn << 32n);
      // 3: the same three with an aligned offset: fine.
      b.active.setEntry(3, COPIED | BigInt(good), 0xffff_ffffn << 32n);
      b.active.setEntry(4, COPIED | BigInt(good), 0n);
      b.active.setEntry(5, COPIED | BigInt(good), 0x0000_00ffn << 32n);
      return openMeta(b);
    }

    it('all-zero, no-bits and zero/unallocated entries with a misaligned offset fail', () => {
      const o = image();
      for (const c of [0, 1, 2]) expect(eio(() => runs(o, c * C + 1000, 10)).message).toMatch(/not cluster aligned/);
    });

    it('the same entries with an aligned offset read as zeros and unallocated', () => {
      const o = image();
      expect(merged(runs(o, 3 * C, 3 * C))).toEqual([
        ['zero', 0, C],
        ['unallocated', C, C, 4 * C],
        ['zero', 2 * C, 8 * 512],
        ['unallocated', 2 * C + 8 * 512, C - 8 * 512, 5 * C + 8 * 512],
      ]);
    });
  });
});

describe('L2 tables and the shared caches', () => {
  it('cacheKey keeps (file, offset) pairs apart', () => {
    expect(cacheKey(1, 0x10000)).not.toBe(cacheKey(2, 0x10000));
    expect(cacheKey(1, 0x10000)).not.toBe(cacheKey(1, 0x20000));
    expect(cacheKey(3, 0x10000)).toBe(cacheKey(3, 0x10000));
    // Offsets or ids too large for an exact number key fall back to strings, still distinct.
    expect(cacheKey(1, 2 ** 52)).toBe('1:4503599627370496');
    expect(cacheKey(1025, 0x10000)).toBe('1025:65536');
    expect(cacheKey(1, 2 ** 52)).not.toBe(cacheKey(2, 2 ** 52));
  });

  it('loads each L2 table once, and again only after the byte-bounded cache drops it', () => {
    // 64 KiB clusters: a 2 MiB L2 cache (the floor) holds 32 tables.
    const C = 65536;
    const SPAN = 8192 * C;
    const b = new ImageBuilder({ clusterBits: 16, size: 40 * SPAN });
    for (let i = 0; i < 40; i++) b.active.dataCluster(i * 8192, pattern(64, i));
    const caches = new SharedCaches({ l2CacheBytes: 1 });
    const o = openMeta(b, caches);
    runs(o, 0, 10);
    runs(o, 5, 10);
    expect(caches.l2Loads).toBe(1);
    for (let i = 0; i < 40; i++) runs(o, i * SPAN, 10);
    expect(caches.l2Loads).toBe(40);
    expect(caches.l2.calculatedSize).toBeLessThanOrEqual(2 * 1024 * 1024);
    // Table 0 was the least recently used: it is loaded again.
    runs(o, 0, 10);
    expect(caches.l2Loads).toBe(41);
  });

  it('shares one cache between two images of a chain without mixing their tables', async () => {
    const C = 4096;
    const base = new ImageBuilder({ clusterBits: 12, size: 4 * C });
    base.active.dataCluster(0, Buffer.alloc(C, 0x11));
    base.writeTo(tmp.file('shared-base.qcow2'));
    // The top image's L2 table is at the same host offset as the base's, in another file.
    const top = new ImageBuilder({ clusterBits: 12, size: 4 * C, backingFile: 'shared-base.qcow2', backingFormat: 'qcow2' });
    top.active.dataCluster(1, Buffer.alloc(C, 0x22));
    expect(top.active.l2.get(0)).toBe(base.active.l2.get(0));
    const image = await openImage(top.writeTo(tmp.file('shared-top.qcow2')));
    try {
      const got = Buffer.alloc(3 * C);
      image.active.readSync(got, 0);
      expect(got.equals(Buffer.concat([Buffer.alloc(C, 0x11), Buffer.alloc(C, 0x22), Buffer.alloc(C)]))).toBe(true);
      expect(image.caches.l2Loads).toBe(2);
    } finally {
      image.close();
    }
  });
});
