/**
 * Views of hand-built images: every byte placed by test/support/build-image.ts is known, so each read
 * is compared with the bytes put there (not with another read of ours).
 */
import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { type QcowImage, openImage } from '../src/image.js';
import type { Disk, Extent } from '../src/disk/disk.js';
import { QcowError } from '../src/errors.js';
import { ImageBuilder, compressible, pattern, tempDir } from './support/build-image.js';

const tmp = tempDir();
afterAll(() => tmp.cleanup());
let serial = 0;
const opened: QcowImage[] = [];
afterAll(() => opened.forEach((i) => i.close()));

async function open(builder: ImageBuilder, name = `img${serial++}.qcow2`): Promise<QcowImage> {
  const image = await openImage(builder.writeTo(tmp.file(name)));
  opened.push(image);
  return image;
}

function read(disk: Disk, position: number, length: number): Buffer {
  const into = Buffer.alloc(length, 0xcc);
  const n = disk.readSync(into, position);
  return into.subarray(0, n);
}

/** The QcowError a read throws. */
function readError(disk: Disk, position: number, length: number): QcowError {
  try {
    read(disk, position, length);
  } catch (err) {
    expect(err).toBeInstanceOf(QcowError);
    return err as QcowError;
  }
  throw new Error(`expected the read of ${length} bytes at ${position} to fail`);
}

/** Random reads compared with the expected bytes, including ranges running past the end. */
function checkRandomReads(disk: Disk, expected: Buffer, runs = 200): void {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: expected.length + 100 }), fc.integer({ min: 0, max: 3 * 65536 }), (position, length) => {
      const got = read(disk, position, length);
      expect(got.length).toBe(Math.max(0, Math.min(length, expected.length - position)));
      expect(got.equals(expected.subarray(position, position + got.length))).toBe(true);
    }),
    { numRuns: runs },
  );
}

// ---------------------------------------------------------------------------------------------------
// 512-byte clusters: 64 entries per L2 table, so an L2 table maps 32 KiB and boundaries are cheap.

describe('standard L2, 512-byte clusters', async () => {
  const C = 512;
  const SIZE = 200 * C + 300; // the last cluster is partly past the end of the disk
  const b = new ImageBuilder({ clusterBits: 9, size: SIZE });
  const s = b.active;
  const expected = Buffer.alloc(SIZE);
  const put = (guest: number, bytes: Buffer) => bytes.copy(expected, guest, 0, Math.max(0, Math.min(bytes.length, SIZE - guest)));

  // Clusters 0..9 written in order: host-contiguous.
  const first = pattern(10 * C, 1);
  s.write(0, first);
  put(0, first);
  // Clusters 10..13 allocated in descending order: not host-contiguous in guest order.
  for (let c = 13; c >= 10; c--) {
    const content = pattern(C, 100 + c);
    s.dataCluster(c, content);
    put(c * C, content);
  }
  // 14: zero; 15: zero with a preallocated cluster full of 0xaa that must not be read.
  s.zeroCluster(14);
  const prealloc = b.allocClusters(1);
  b.image.fill(0xaa, prealloc, prealloc + C);
  s.zeroCluster(15, prealloc);
  // 16..61 unallocated. 62..66 data across the first L2 table boundary (cluster 64 = 32 KiB).
  const across = pattern(5 * C, 2);
  s.write(62 * C, across);
  put(62 * C, across);
  // 70, 71: compressed (zlib), packed at unaligned offsets with bytes between and after them.
  const comp70 = compressible(C, 70);
  const comp71 = compressible(C, 71);
  s.compressedCluster(70, comp70, { skip: 100, trailing: pattern(50, 3) });
  s.compressedCluster(71, comp71, { skip: 3, trailing: pattern(700, 4) });
  put(70 * C, comp70);
  put(71 * C, comp71);
  // L1 index 2 (clusters 128..191) has no L2 table at all. 199 and 200 (the partial last one) hold data.
  const tail = pattern(2 * C, 5);
  s.write(199 * C, tail);
  put(199 * C, tail);

  // QEMU counts whole 512-byte sectors: the header's last 300 bytes are not part of the disk.
  const VIEW = SIZE - (SIZE % 512);
  const image = await open(b);
  const disk = image.active;

  it('has the header size, rounded down to whole sectors as QEMU counts it', () => {
    expect(image.header.size).toBe(SIZE);
    expect(disk.size).toBe(VIEW);
    expect(image.header.l1Size).toBe(4);
  });

  it('reads the whole disk as placed', () => {
    expect(read(disk, 0, VIEW).equals(expected.subarray(0, VIEW))).toBe(true);
  });

  it('reads across cluster and L2 table boundaries', () => {
    expect(read(disk, 500, 30).equals(expected.subarray(500, 530))).toBe(true);
    expect(read(disk, 64 * C - 10, 20).equals(across.subarray(2 * C - 10, 2 * C + 10))).toBe(true);
    expect(read(disk, 63 * C + 1, 3 * C).equals(expected.subarray(63 * C + 1, 66 * C + 1))).toBe(true);
    // From inside the last L2 table of index 1 through the table-less index 2 into index 3.
    expect(read(disk, 127 * C, 73 * C).equals(expected.subarray(127 * C, 200 * C))).toBe(true);
  });

  it('reads zero clusters as zeros, never the preallocated cluster', () => {
    expect(read(disk, 14 * C, 2 * C).equals(Buffer.alloc(2 * C))).toBe(true);
  });

  it('reads unallocated clusters as zeros without a backing file', () => {
    expect(read(disk, 16 * C, 46 * C).equals(Buffer.alloc(46 * C))).toBe(true);
    expect(read(disk, 128 * C, 64 * C).equals(Buffer.alloc(64 * C))).toBe(true);
  });

  it('reads compressed clusters, alone and mixed with data', () => {
    expect(read(disk, 70 * C, C).equals(comp70)).toBe(true);
    expect(read(disk, 70 * C + 511, 2).equals(Buffer.from([comp70[511]!, comp71[0]!]))).toBe(true);
    expect(read(disk, 69 * C, 4 * C).equals(expected.subarray(69 * C, 73 * C))).toBe(true);
  });

  it('reads short only at the end of the disk', () => {
    const into = Buffer.alloc(1000, 0xcc);
    expect(disk.readSync(into, VIEW - 300)).toBe(300);
    expect(into.subarray(0, 300).equals(expected.subarray(VIEW - 300, VIEW))).toBe(true);
    expect(into.subarray(300).equals(Buffer.alloc(700, 0xcc))).toBe(true); // untouched past the end
    expect(disk.readSync(Buffer.alloc(10), VIEW)).toBe(0);
    expect(disk.readSync(Buffer.alloc(10), VIEW + 12345)).toBe(0);
    expect(disk.readSync(Buffer.alloc(0), 0)).toBe(0);
    expect(disk.readSync(Buffer.alloc(1), VIEW - 1)).toBe(1);
  });

  it('refuses a negative or fractional position', () => {
    expect(() => disk.readSync(Buffer.alloc(1), -1)).toThrow(QcowError);
    expect(() => disk.readSync(Buffer.alloc(1), 1.5)).toThrow(/invalid read position 1.5/);
  });

  it('reads through the promise API too', async () => {
    const into = Buffer.alloc(3 * C);
    await expect(disk.read(into, 9 * C)).resolves.toBe(3 * C);
    expect(into.equals(expected.subarray(9 * C, 12 * C))).toBe(true);
    await expect(disk.read(Buffer.alloc(1), -5)).rejects.toBeInstanceOf(QcowError);
  });

  it('matches the placed bytes for random ranges', () => {
    checkRandomReads(disk, expected.subarray(0, VIEW), 300);
  });

  it('reports extents: kinds, hosts, and merging of contiguous runs', () => {
    const h = (c: number) => s.dataClusters.get(c)!;
    // The layout the builder made: contiguous 0..9, 62..63, 64..66 and 199..200.
    expect(h(9)).toBe(h(0) + 9 * C);
    expect(h(66)).toBe(h(64) + 2 * C);
    expect(h(200)).toBe(h(199) + C);
    const ext: Extent[] = [
      { start: 0, length: 10 * C, kind: 'data', depth: 0, host: h(0) },
      { start: 10 * C, length: C, kind: 'data', depth: 0, host: h(10) },
      { start: 11 * C, length: C, kind: 'data', depth: 0, host: h(11) },
      { start: 12 * C, length: C, kind: 'data', depth: 0, host: h(12) },
      { start: 13 * C, length: C, kind: 'data', depth: 0, host: h(13) },
      { start: 14 * C, length: 2 * C, kind: 'zero', depth: 0, host: undefined },
      { start: 16 * C, length: 46 * C, kind: 'unallocated', depth: 0, host: undefined },
      { start: 62 * C, length: 2 * C, kind: 'data', depth: 0, host: h(62) },
      { start: 64 * C, length: 3 * C, kind: 'data', depth: 0, host: h(64) },
      { start: 67 * C, length: 3 * C, kind: 'unallocated', depth: 0, host: undefined },
      { start: 70 * C, length: 2 * C, kind: 'compressed', depth: 0, host: undefined },
      { start: 72 * C, length: 127 * C, kind: 'unallocated', depth: 0, host: undefined },
      { start: 199 * C, length: C, kind: 'data', depth: 0, host: h(199) },
    ];
    expect(disk.extents(0, VIEW)).toEqual(ext);
    // Clipped to the disk, and starting inside a run.
    expect(disk.extents(5 * C + 7, 6 * C)).toEqual([
      { start: 5 * C + 7, length: 5 * C - 7, kind: 'data', depth: 0, host: h(5) + 7 },
      { start: 10 * C, length: C, kind: 'data', depth: 0, host: h(10) },
      { start: 11 * C, length: 7, kind: 'data', depth: 0, host: h(11) },
    ]);
    expect(disk.extents(VIEW - 10, 1000)).toEqual([{ start: VIEW - 10, length: 10, kind: 'data', depth: 0, host: h(199) + C - 10 }]);
    expect(disk.extents(VIEW, 10)).toEqual([]);
  });

  it('tiles the range with extents for random ranges', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: VIEW }), fc.integer({ min: 0, max: VIEW }), (start, length) => {
        const list = disk.extents(start, length);
        let at = start;
        for (const e of list) {
          expect(e.start).toBe(at);
          expect(e.length).toBeGreaterThan(0);
          at += e.length;
        }
        expect(at).toBe(Math.min(VIEW, start + length));
      }),
    );
  });
});

// ---------------------------------------------------------------------------------------------------
// Backing files

describe('backing files', async () => {
  const C = 4096;
  const SIZE = 16 * C;
  const BASE = 20000; // the raw backing file is shorter than the overlay
  // QEMU's file driver counts whole 512-byte sectors: the backing disk is 20480 bytes, the last 480
  // of them zeros past the end of the file.
  const BASE_DISK = 20480;
  const base = pattern(BASE, 42);
  fs.writeFileSync(tmp.file('base.raw'), base);

  function overlay(options: { backingFormat?: string }) {
    const b = new ImageBuilder({ clusterBits: 12, size: SIZE, backingFile: 'base.raw', ...options });
    const mine = pattern(C, 7);
    b.active.dataCluster(1, mine);
    b.active.zeroCluster(3);
    const expected = Buffer.alloc(SIZE);
    base.copy(expected);
    mine.copy(expected, C);
    expected.fill(0, 3 * C, 4 * C);
    return { b, expected };
  }

  it('reads unallocated clusters from a raw backing file, zeros past its end (format from the header)', async () => {
    const { b, expected } = overlay({ backingFormat: 'raw' });
    const image = await open(b);
    expect(image.backingChain).toEqual([{ depth: 1, name: 'base.raw', path: tmp.file('base.raw'), format: 'raw', formatSource: 'header', size: BASE_DISK }]);
    expect(read(image.active, 0, SIZE).equals(expected)).toBe(true);
    // Across the end of the backing file, inside one overlay cluster.
    expect(read(image.active, BASE - 5, 10).equals(Buffer.concat([base.subarray(BASE - 5), Buffer.alloc(5)]))).toBe(true);
    checkRandomReads(image.active, expected);
  });

  it('probes the backing format when the header does not give it', async () => {
    const { b, expected } = overlay({});
    const image = await open(b);
    expect(image.backingChain[0]).toMatchObject({ format: 'raw', formatSource: 'probed' });
    expect(read(image.active, 0, SIZE).equals(expected)).toBe(true);
  });

  it('reports backing runs with their depth, and zeros past the backing file as unallocated', async () => {
    const { b } = overlay({ backingFormat: 'raw' });
    const image = await open(b);
    const mine = b.active.dataClusters.get(1)!;
    expect(image.active.extents(0, SIZE)).toEqual([
      { start: 0, length: C, kind: 'data', depth: 1, host: 0 },
      { start: C, length: C, kind: 'data', depth: 0, host: mine },
      { start: 2 * C, length: C, kind: 'data', depth: 1, host: 2 * C },
      { start: 3 * C, length: C, kind: 'zero', depth: 0, host: undefined },
      { start: 4 * C, length: BASE_DISK - 4 * C, kind: 'data', depth: 1, host: 4 * C },
      { start: BASE_DISK, length: SIZE - BASE_DISK, kind: 'unallocated', depth: 1 },
    ]);
  });

  it('noBacking reads unallocated clusters as zeros', async () => {
    const { b } = overlay({ backingFormat: 'raw' });
    const file = b.writeTo(tmp.file('nobacking.qcow2'));
    const image = await openImage(file, { noBacking: true });
    opened.push(image);
    expect(read(image.active, 0, C).equals(Buffer.alloc(C))).toBe(true);
    expect(image.backingChain).toEqual([]);
  });

  it('follows qcow2 -> qcow2 -> raw, with a shorter qcow2 in the middle', async () => {
    // base.raw (20000 bytes) <- mid.qcow2 (8 clusters, writes cluster 2) <- top.qcow2 (16 clusters, writes cluster 5).
    const mid = new ImageBuilder({ clusterBits: 12, size: 8 * C, backingFile: 'base.raw', backingFormat: 'raw' });
    const midData = pattern(C, 11);
    mid.active.dataCluster(2, midData);
    mid.active.zeroCluster(4); // hides the base's bytes at 16384..20000
    mid.writeTo(tmp.file('mid.qcow2'));
    const top = new ImageBuilder({ clusterBits: 12, size: SIZE, backingFile: 'mid.qcow2', backingFormat: 'qcow2' });
    const topData = pattern(C, 12);
    top.active.dataCluster(5, topData);
    const image = await open(top, 'top.qcow2');

    const expected = Buffer.alloc(SIZE);
    base.copy(expected, 0, 0, 4 * C); // clusters 0, 1, 3 from the base
    midData.copy(expected, 2 * C);
    expected.fill(0, 4 * C, 5 * C);
    topData.copy(expected, 5 * C);
    // 6, 7: mid's unallocated, past the base's end: zeros. 8..15: past mid's size: zeros.
    expect(read(image.active, 0, SIZE).equals(expected)).toBe(true);
    checkRandomReads(image.active, expected);

    expect(image.backingChain.map((l) => [l.depth, l.name, l.format, l.size])).toEqual([
      [1, 'mid.qcow2', 'qcow2', 8 * C],
      [2, 'base.raw', 'raw', BASE_DISK],
    ]);
    expect(image.active.extents(0, SIZE)).toEqual([
      { start: 0, length: 2 * C, kind: 'data', depth: 2, host: 0 },
      { start: 2 * C, length: C, kind: 'data', depth: 1, host: mid.active.dataClusters.get(2)! },
      { start: 3 * C, length: C, kind: 'data', depth: 2, host: 3 * C },
      { start: 4 * C, length: C, kind: 'zero', depth: 1, host: undefined },
      { start: 5 * C, length: C, kind: 'data', depth: 0, host: top.active.dataClusters.get(5)! },
      { start: 6 * C, length: 2 * C, kind: 'unallocated', depth: 2 },
      { start: 8 * C, length: 8 * C, kind: 'unallocated', depth: 1 },
    ]);
  });
});

// ---------------------------------------------------------------------------------------------------
// Extended L2 entries: 16 KiB clusters, 32 subclusters of 512 bytes, 1024 entries (16 MiB) per table.

describe('extended L2 with mixed subclusters', async () => {
  const C = 16384;
  const SC = 512;
  const SIZE = 20 * 1024 * 1024;
  const BASE = 1024 * 1024;
  const base = pattern(BASE, 77);
  fs.writeFileSync(tmp.file('ext-base.raw'), base);
  const b = new ImageBuilder({ clusterBits: 14, size: SIZE, extendedL2: true, backingFile: 'ext-base.raw', backingFormat: 'raw' });
  const s = b.active;
  const expected = Buffer.alloc(SIZE);
  base.copy(expected);
  /** Sets the expected bytes of subcluster `i` of cluster `c` from a host cluster's content. */
  const fromHost = (c: number, i: number, content: Buffer) => content.copy(expected, c * C + i * SC, i * SC, (i + 1) * SC);
  const zeroSub = (c: number, i: number) => expected.fill(0, c * C + i * SC, c * C + (i + 1) * SC);
  const hosts: Record<number, number> = {};

  // c0: subclusters 0-7 data, 8-15 zero, 16-31 unallocated (backing). Host bytes everywhere, so a
  // zero or unallocated subcluster read from the host would show.
  const c0 = pattern(C, 1000);
  hosts[0] = s.subclusters(0, 0x0000_00ff, 0x0000_ff00, c0);
  for (let i = 0; i < 8; i++) fromHost(0, i, c0);
  for (let i = 8; i < 16; i++) zeroSub(0, i);
  // c1: all allocated.
  const c1 = pattern(C, 1001);
  hosts[1] = s.subclusters(1, 0xffff_ffff, 0, c1);
  c1.copy(expected, C);
  // c2: all zero, no host cluster.
  s.subclusters(2, 0, 0xffff_ffff);
  expected.fill(0, 2 * C, 3 * C);
  // c3: odd subclusters zero, even ones unallocated, no host cluster.
  s.subclusters(3, 0, 0xaaaa_aaaa);
  for (let i = 1; i < 32; i += 2) zeroSub(3, i);
  // c4: a host cluster but no bits: everything from the backing file.
  s.subclusters(4, 0, 0, pattern(C, 1004));
  // c5: first and last subclusters allocated.
  const c5 = pattern(C, 1005);
  hosts[5] = s.subclusters(5, 0x8000_0001, 0, c5);
  fromHost(5, 0, c5);
  fromHost(5, 31, c5);
  // c7: zero bits with a host cluster (zero subclusters with preallocation), rest allocated.
  const c7 = pattern(C, 1007);
  hosts[7] = s.subclusters(7, 0x0000_ffff, 0xffff_0000, c7);
  for (let i = 0; i < 16; i++) fromHost(7, i, c7);
  for (let i = 16; i < 32; i++) zeroSub(7, i);
  // c1023 / c1024: across the first L2 table (16 MiB) and past the backing file's end.
  const c1023 = pattern(C, 2023);
  hosts[1023] = s.subclusters(1023, 0xffff_0000, 0, c1023);
  for (let i = 16; i < 32; i++) fromHost(1023, i, c1023);
  const c1024 = pattern(C, 2024);
  hosts[1024] = s.subclusters(1024, 0x0000_ffff, 0x00ff_0000, c1024);
  for (let i = 0; i < 16; i++) fromHost(1024, i, c1024);
  // c9: invalid (subcluster 3 both allocated and zero).
  hosts[9] = s.subclusters(9, 0x0000_000f, 0x0000_0008, pattern(C, 1009));
  const INVALID = 9 * C;

  const image = await open(b);
  const disk = image.active;

  it('reads every kind of subcluster as placed', () => {
    expect(image.header.extendedL2).toBe(true);
    expect(read(disk, 0, 9 * C).equals(expected.subarray(0, 9 * C))).toBe(true);
    expect(read(disk, 1022 * C, 4 * C).equals(expected.subarray(1022 * C, 1026 * C))).toBe(true);
  });

  it('reads unaligned ranges crossing subcluster boundaries', () => {
    expect(read(disk, 7 * SC + 3, 2 * SC).equals(expected.subarray(7 * SC + 3, 9 * SC + 3))).toBe(true);
    expect(read(disk, 16 * SC - 1, 2).equals(expected.subarray(16 * SC - 1, 16 * SC + 1))).toBe(true);
    expect(read(disk, 5 * C + 31 * SC - 7, 20).equals(expected.subarray(5 * C + 31 * SC - 7, 5 * C + 31 * SC + 13))).toBe(true);
  });

  it('fails an invalid entry with EIO and keeps serving the rest', () => {
    const err = readError(disk, INVALID + 100, 10);
    expect(err.code).toBe('EIO');
    expect(err.message).toBe(
      `${image.path}: extended L2 entry for guest cluster 0x24000 is invalid (bitmap alloc 0xf, zero 0x8, offset 0x${hosts[9]!.toString(16)})`,
    );
    // Any subcluster of that cluster: QEMU refuses the whole entry.
    expect(readError(disk, INVALID + 20 * SC, 1).code).toBe('EIO');
    expect(() => disk.extents(INVALID, C)).toThrow(QcowError);
    expect(read(disk, 0, 9 * C).equals(expected.subarray(0, 9 * C))).toBe(true);
    expect(read(disk, 10 * C, C).equals(expected.subarray(10 * C, 11 * C))).toBe(true);
  });

  it('matches the placed bytes for random ranges (away from the invalid cluster)', () => {
    const regions = [0, 1020 * C];
    fc.assert(
      fc.property(fc.constantFrom(...regions), fc.integer({ min: 0, max: 8 * C }), fc.integer({ min: 0, max: 8 * C }), (region, offset, length) => {
        const position = region + Math.min(offset, 9 * C - 1);
        const n = region === 0 ? Math.min(length, INVALID - position) : length;
        expect(read(disk, position, n).equals(expected.subarray(position, position + n))).toBe(true);
      }),
      { numRuns: 200 },
    );
  });

  it('reports subcluster extents', () => {
    const h0 = hosts[0]!;
    expect(disk.extents(0, C)).toEqual([
      { start: 0, length: 8 * SC, kind: 'data', depth: 0, host: h0 },
      { start: 8 * SC, length: 8 * SC, kind: 'zero', depth: 0, host: undefined },
      { start: 16 * SC, length: 16 * SC, kind: 'data', depth: 1, host: 16 * SC },
    ]);
    expect(disk.extents(3 * C, 3 * SC)).toEqual([
      { start: 3 * C, length: SC, kind: 'data', depth: 1, host: 3 * C },
      { start: 3 * C + SC, length: SC, kind: 'zero', depth: 0, host: undefined },
      { start: 3 * C + 2 * SC, length: SC, kind: 'data', depth: 1, host: 3 * C + 2 * SC },
    ]);
    // c3's last subcluster (31) is zero; c4 (a host cluster but no bits) falls through to the backing
    // file as one run, which c5's allocated first subcluster ends.
    expect(disk.extents(4 * C - SC, C + 2 * SC)).toEqual([
      { start: 4 * C - SC, length: SC, kind: 'zero', depth: 0, host: undefined },
      { start: 4 * C, length: C, kind: 'data', depth: 1, host: 4 * C },
      { start: 5 * C, length: SC, kind: 'data', depth: 0, host: hosts[5] },
    ]);
    // Past the backing file's end (1 MiB): unallocated subclusters are unallocated in the whole chain.
    expect(disk.extents(1024 * C, C)).toEqual([
      { start: 1024 * C, length: 16 * SC, kind: 'data', depth: 0, host: hosts[1024] },
      { start: 1024 * C + 16 * SC, length: 8 * SC, kind: 'zero', depth: 0, host: undefined },
      { start: 1024 * C + 24 * SC, length: 8 * SC, kind: 'unallocated', depth: 1 },
    ]);
  });
});

// ---------------------------------------------------------------------------------------------------
// Compressed clusters and the decompressed-cluster cache

describe('compressed clusters', () => {
  for (const compression of ['zlib', 'zstd'] as const) {
    it(`${compression}: 16 small reads of one 64 KiB cluster inflate it once`, async () => {
      const C = 65536;
      const b = new ImageBuilder({ clusterBits: 16, size: 4 * C, compression });
      const c0 = compressible(C, 10);
      const c1 = compressible(C, 11);
      const c2 = pattern(C, 12);
      b.active.compressedCluster(0, c0, { skip: 37, trailing: pattern(1000, 1) });
      b.active.compressedCluster(1, c1, { skip: 511 });
      b.active.dataCluster(2, c2);
      const image = await open(b);
      expect(image.header.compressionType).toBe(compression);
      const disk = image.active;
      const caches = image.caches;
      expect(caches.clusterInflations).toBe(0);
      for (let i = 0; i < 16; i++) expect(read(disk, i * 4096, 4096).equals(c0.subarray(i * 4096, (i + 1) * 4096))).toBe(true);
      expect(caches.clusterInflations).toBe(1);
      expect(read(disk, C - 100, 200).equals(Buffer.concat([c0.subarray(C - 100), c1.subarray(0, 100)]))).toBe(true);
      expect(caches.clusterInflations).toBe(2);
      expect(read(disk, 0, 4 * C).equals(Buffer.concat([c0, c1, c2, Buffer.alloc(C)]))).toBe(true);
      expect(caches.clusterInflations).toBe(2);
      expect(disk.extents(0, 4 * C)).toEqual([
        { start: 0, length: 2 * C, kind: 'compressed', depth: 0, host: undefined },
        { start: 2 * C, length: C, kind: 'data', depth: 0, host: b.active.dataClusters.get(2) },
        { start: 3 * C, length: C, kind: 'unallocated', depth: 0, host: undefined },
      ]);
    });
  }

  it('512-byte clusters: data straddling a sector boundary (one extra sector in a one-bit field)', async () => {
    const C = 512;
    const b = new ImageBuilder({ clusterBits: 9, size: 8 * C });
    const content = compressible(C, 3);
    const packed = b.compress(content);
    expect(packed.length).toBeGreaterThan(12);
    // Start 12 bytes before a sector boundary: the data spans two sectors (n = 1).
    const skip = 512 - 12 - (b.end % 512);
    const placed = b.active.compressedCluster(3, content, { skip: (skip + 512) % 512 });
    expect(placed.offset % 512).toBe(500);
    expect((placed.entry >> 61n) & 1n).toBe(1n);
    const image = await open(b);
    expect(read(image.active, 0, 8 * C).equals(Buffer.concat([Buffer.alloc(3 * C), content, Buffer.alloc(4 * C)]))).toBe(true);
  });

  it('2 MiB clusters (zstd): reads anywhere in the cluster, one inflation', async () => {
    const C = 2 * 1024 * 1024;
    const b = new ImageBuilder({ clusterBits: 21, size: 2 * C, compression: 'zstd' });
    const content = compressible(C, 21);
    b.active.compressedCluster(1, content, { skip: 5 });
    const image = await open(b);
    expect(read(image.active, C + 1_000_000, 300_000).equals(content.subarray(1_000_000, 1_300_000))).toBe(true);
    expect(read(image.active, C - 10, 20).equals(Buffer.concat([Buffer.alloc(10), content.subarray(0, 10)]))).toBe(true);
    expect(read(image.active, 2 * C - 5, 100).equals(content.subarray(C - 5))).toBe(true);
    expect(image.caches.clusterInflations).toBe(1);
  });

  it('a corrupt compressed cluster fails with EIO, every time, and the rest still reads', async () => {
    const C = 4096;
    const b = new ImageBuilder({ clusterBits: 12, size: 8 * C });
    const good = compressible(C, 1);
    b.active.compressedCluster(0, good);
    const garbage = pattern(300, 9);
    const bad = b.active.compressedCluster(1, good, { raw: garbage });
    const data = pattern(C, 2);
    b.active.dataCluster(2, data);
    const image = await open(b);
    for (let attempt = 0; attempt < 2; attempt++) {
      const err = readError(image.active, C + 10, 10);
      expect(err.code).toBe('EIO');
      expect(err.message).toMatch(new RegExp(`^${image.path}: compressed cluster at 0x${bad.offset.toString(16)} \\(guest offset 0x[0-9a-f]+\\): zlib data is corrupt`));
    }
    expect(read(image.active, 0, C).equals(good)).toBe(true);
    expect(read(image.active, 2 * C, C).equals(data)).toBe(true);
    expect(image.caches.clusterInflations).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------------
// Snapshots: shared L2 tables, their own sizes, and the VM state

describe('snapshots', async () => {
  const C = 512;
  const SPAN = 64 * C; // one L2 table
  const SIZE = 3 * SPAN;
  const b = new ImageBuilder({ clusterBits: 9, size: SIZE });
  const active = b.active;
  const shared = pattern(4 * C, 1);
  active.write(0, shared); // L1 index 0: the table the snapshot shares
  const activeOnly = pattern(C, 2);
  active.write(SPAN + 5 * C, activeOnly); // L1 index 1: the active disk's own table
  const snap = b.space('snap1');
  snap.shareL2(active, 0);
  const snapOnly = pattern(C, 3);
  snap.write(SPAN + 5 * C, snapOnly); // L1 index 1: the snapshot's own table
  // The snapshot's disk was 40000 bytes; its VM state starts at the first L2 span past it (32 KiB
  // spans: ceil(40000 / 32768) * 32768 = 65536) and crosses into the next span.
  const SNAP_SIZE = 40000;
  const vmState = Buffer.concat([Buffer.from('QEVM'), pattern(SPAN + 996, 4)]);
  // (The snapshot's table at index 1 also maps its VM state's first span.)
  snap.write(2 * SPAN, vmState);
  b.addSnapshot({ space: snap, id: '1', name: 'first', diskSize: SNAP_SIZE, vmStateSize: vmState.length, dateSec: 1_600_000_000, dateNsec: 5 });
  const noVm = b.space('snap2');
  noVm.shareL2(active, 0);
  b.addSnapshot({ space: noVm, id: '2', name: 'second' });

  const image = await open(b);
  const [s1, s2] = image.snapshots;

  it('decodes the table', () => {
    expect(image.snapshots).toHaveLength(2);
    expect([s1!.uniqueId, s1!.name, s1!.diskSize, s1!.vmStateSize, s1!.vmStateOffset]).toEqual(['1', 'first', SNAP_SIZE, vmState.length, 2 * SPAN]);
    expect([s2!.uniqueId, s2!.name, s2!.diskSize, s2!.vmStateSize]).toEqual(['2', 'second', SIZE, 0]);
    expect(s1!.date.toISOString()).toBe('2020-09-13T12:26:40.000Z');
    expect(image.findSnapshot('first')).toBe(s1);
    expect(image.findSnapshot('2')).toBe(s2);
    expect(image.vmState(s2!)).toBeUndefined();
  });

  it('shares L2 tables between the active disk and snapshots through one cache', () => {
    const caches = image.caches;
    const before = caches.l2Loads;
    expect(read(image.active, 0, 4 * C).equals(shared)).toBe(true);
    expect(caches.l2Loads).toBe(before + 1);
    const snapDisk = image.snapshotDisk(s1!);
    expect(snapDisk.size).toBe(SNAP_SIZE);
    expect(read(snapDisk, 0, 4 * C).equals(shared)).toBe(true);
    expect(read(image.snapshotDisk(s2!), 0, 4 * C).equals(shared)).toBe(true);
    expect(caches.l2Loads).toBe(before + 1); // the shared table was loaded once
    expect(read(snapDisk, SPAN + 5 * C, C).equals(snapOnly)).toBe(true);
    expect(caches.l2Loads).toBe(before + 2);
    expect(read(image.active, SPAN + 5 * C, C).equals(activeOnly)).toBe(true);
    expect(caches.l2Loads).toBe(before + 3);
    expect(read(image.active, 0, SIZE).length).toBe(SIZE);
    expect(caches.l2Loads).toBe(before + 3);
  });

  it('reads a snapshot disk of its own size', () => {
    const disk = image.snapshotDisk(s1!);
    const expected = Buffer.alloc(SNAP_SIZE);
    shared.copy(expected);
    snapOnly.copy(expected, SPAN + 5 * C);
    expect(read(disk, 0, SIZE).equals(expected)).toBe(true);
    expect(image.snapshotDisk(s2!).size).toBe(SIZE);
  });

  it('reads the VM state from past the snapshot disk, exactly vm_state_size bytes', () => {
    const vm = image.vmState(s1!)!;
    expect(vm.size).toBe(vmState.length);
    expect(read(vm, 0, 4).toString()).toBe('QEVM');
    expect(read(vm, 0, vm.size + 100).equals(vmState)).toBe(true);
    expect(read(vm, SPAN - 3, 6).equals(vmState.subarray(SPAN - 3, SPAN + 3))).toBe(true);
    expect(read(vm, vm.size - 10, 100).equals(vmState.subarray(vm.size - 10))).toBe(true);
    // The VM state crosses from L1 index 2 into 3, whose L2 table sits between the two data runs.
    const host = (c: number) => snap.dataClusters.get(c);
    expect(host(191)).toBe(host(128)! + 63 * C);
    expect(vm.extents(0, vm.size)).toEqual([
      { start: 0, length: SPAN, kind: 'data', depth: 0, host: host(128) },
      { start: SPAN, length: vmState.length - SPAN, kind: 'data', depth: 0, host: host(192) },
    ]);
    expect(host(192)).toBe(host(191)! + 2 * C);
  });
});

// ---------------------------------------------------------------------------------------------------
// One positional read for host-contiguous clusters

describe('merging host-contiguous clusters', () => {
  it('reads contiguous clusters with one positional read, scattered ones with one each', async () => {
    const C = 4096;
    const b = new ImageBuilder({ clusterBits: 12, size: 16 * C });
    const run = pattern(4 * C, 1);
    b.active.write(0, run); // 0..3 contiguous
    for (let c = 7; c >= 4; c--) b.active.dataCluster(c, pattern(C, c)); // 4..7 descending
    const image = await open(b);
    const file = image.active as unknown as { reader: { dataFile: { readAt: (...args: unknown[]) => void } } };
    const host = file.reader.dataFile;
    const original = host.readAt;
    const calls: [number, number][] = [];
    host.readAt = function (this: unknown, ...args: unknown[]) {
      if (args[4] === 'guest data') calls.push([args[3] as number, args[2] as number]);
      return original.apply(this, args);
    };
    try {
      expect(read(image.active, 100, 4 * C - 200).equals(run.subarray(100, 4 * C - 100))).toBe(true);
      expect(calls).toEqual([[b.active.dataClusters.get(0)! + 100, 4 * C - 200]]);
      calls.length = 0;
      read(image.active, 4 * C, 4 * C);
      expect(calls).toHaveLength(4);
      calls.length = 0;
      // A zero run between two contiguous data runs does not join them.
      read(image.active, 2 * C, 4 * C);
      expect(calls.map((c) => c[1])).toEqual([2 * C, C, C]);
    } finally {
      host.readAt = original;
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// Bad regions: EIO for that read only

describe('bad regions fail the read with EIO', async () => {
  const C = 4096;
  const SPAN = 512 * C; // 2 MiB per L2 table
  const b = new ImageBuilder({ clusterBits: 12, size: 6 * SPAN });
  const good = pattern(C, 1);
  b.active.dataCluster(0, good);
  b.active.setEntry(1, (1n << 63n) | (1n << 40n)); // data cluster far past EOF
  b.active.setEntry(2, (1n << 63n) | 0x1200n); // misaligned data cluster
  b.active.setL1(1, (1n << 63n) | (1n << 40n)); // L2 table past EOF
  b.active.setL1(2, (1n << 63n) | 0x3200n); // misaligned L2 table
  const other = pattern(C, 2);
  b.active.dataCluster(3 * 512, other); // L1 index 3: fine
  b.active.setEntry(3, (1n << 62n) | (1n << 40n)); // compressed data past EOF
  const image = await open(b);
  const disk = image.active;
  const where = image.path;

  const cases: [string, number, string][] = [
    ['data cluster past EOF', C, `${where}: data cluster at 0x10000000000 for guest offset 0x1000 lies past the end of the file`],
    ['misaligned data cluster', 2 * C, `${where}: cluster offset 0x1200 for guest offset 0x2000 is not cluster aligned`],
    ['L2 table past EOF', SPAN + 5, `${where}: L2 table at 0x10000000000 (L1 index 1) lies past the end of the file`],
    ['misaligned L2 table', 2 * SPAN, `${where}: L2 table offset 0x3200 (L1 index 2) is not cluster aligned`],
    ['compressed cluster past EOF', 3 * C, `${where}: compressed cluster at 0x10000000000 (guest offset 0x3000) lies past the end of the file`],
  ];
  for (const [what, position, message] of cases) {
    it(what, () => {
      const err = readError(disk, position, 10);
      expect(err.code).toBe('EIO');
      expect(err.message.startsWith(message)).toBe(true);
      // A read that only touches the region fails; one beside it does not.
      expect(read(disk, 0, C).equals(good)).toBe(true);
      expect(read(disk, 3 * SPAN, C).equals(other)).toBe(true);
      expect(read(disk, 4 * SPAN, C).equals(Buffer.alloc(C))).toBe(true);
      // And the failure is not cached as something else: it fails again.
      expect(readError(disk, position, 10).code).toBe('EIO');
    });
  }

  it('a read spanning a good and a bad region fails as a whole', () => {
    expect(readError(disk, 0, 2 * C).code).toBe('EIO');
  });
});

// ---------------------------------------------------------------------------------------------------
// External data file

describe('external data file', () => {
  it('reads guest cluster N at offset N of the data file, offset 0 told by the copied bit', async () => {
    const C = 4096;
    const dataBytes = pattern(3 * C + 100, 5); // shorter than the disk
    fs.writeFileSync(tmp.file('ext.data'), dataBytes);
    const b = new ImageBuilder({ clusterBits: 12, size: 8 * C, dataFile: 'ext.data', dataFileRaw: true });
    b.active.externalCluster(0); // offset 0 with the copied bit: data
    b.active.externalCluster(1);
    b.active.setEntry(2, 0n); // offset 0 without it: unallocated
    b.active.externalCluster(3); // past the data file's end after 100 bytes: zeros
    b.active.setEntry(5, (1n << 63n) | BigInt(6 * C)); // offset does not match the guest offset
    const image = await open(b);
    expect(image.header.hasDataFile).toBe(true);
    expect(image.dataFilePath).toBe(tmp.file('ext.data'));
    const expected = Buffer.alloc(5 * C);
    dataBytes.copy(expected, 0, 0, 2 * C);
    dataBytes.copy(expected, 3 * C, 3 * C);
    expect(read(image.active, 0, 5 * C).equals(expected)).toBe(true);
    expect(image.active.extents(0, 3 * C)).toEqual([
      { start: 0, length: 2 * C, kind: 'data', depth: 0, host: 0 },
      { start: 2 * C, length: C, kind: 'unallocated', depth: 0, host: undefined },
    ]);
    const err = readError(image.active, 5 * C, 1);
    expect(err.code).toBe('EIO');
    expect(err.message).toBe(`${image.path}: external data file offset 0x6000 does not match guest offset 0x5000`);
  });
});

// ---------------------------------------------------------------------------------------------------
// Version 2 images

describe('version 2 image', () => {
  it('reads data and unallocated clusters', async () => {
    const C = 65536;
    const b = new ImageBuilder({ version: 2, clusterBits: 16, size: 3 * C + 512 });
    const data = pattern(C + 10, 8);
    b.active.write(C - 5, data);
    const image = await open(b);
    expect(image.header.version).toBe(2);
    const expected = Buffer.alloc(3 * C + 512);
    data.copy(expected, C - 5);
    expect(read(image.active, 0, expected.length).equals(expected)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------------
// Snapshot tables: sizes that differ from the current one, long tables, cut tables

describe('snapshot tables and sizes', () => {
  const C = 512;
  const SPAN = 64 * C;

  it('a snapshot larger than the current disk (the disk shrank) and one without extra data', async () => {
    const b = new ImageBuilder({ clusterBits: 9, size: SPAN });
    b.active.write(0, pattern(C, 1));
    const big = b.space('big');
    const far = pattern(C, 2);
    big.write(2 * SPAN + 3 * C, far);
    b.addSnapshot({ space: big, id: '1', name: 'before shrink', diskSize: 3 * SPAN - 100 });
    const old = b.space('old');
    old.shareL2(b.active, 0);
    b.addSnapshot({ space: old, id: '2', name: 'v2 style', extraDataSize: 0, vmStateSize: 0 });
    const image = await open(b);
    const [s1, s2] = image.snapshots;
    const disk = image.snapshotDisk(s1!);
    expect(disk.size).toBe(3 * SPAN - 100);
    const expected = Buffer.alloc(3 * SPAN - 100);
    far.copy(expected, 2 * SPAN + 3 * C);
    expect(read(disk, 0, 3 * SPAN).equals(expected)).toBe(true);
    // No extra data: the disk size is the image's current size.
    expect([s2!.extraDataSize, s2!.diskSize, image.snapshotDisk(s2!).size]).toEqual([0, SPAN, SPAN]);
    expect(read(image.snapshotDisk(s2!), 0, C).equals(pattern(C, 1))).toBe(true);
  });

  it('reads a table of 3000 entries, whose entries straddle the read steps', async () => {
    const b = new ImageBuilder({ clusterBits: 9, size: SPAN });
    b.active.write(0, pattern(C, 1));
    const shared = b.space('shared');
    shared.shareL2(b.active, 0);
    const names: string[] = [];
    for (let i = 0; i < 3000; i++) {
      const name = `snapshot ${i} ${'x'.repeat(i % 37)}`;
      names.push(name);
      b.addSnapshot({ space: shared, id: String(i + 1), name, dateSec: i, extraDataSize: i % 2 ? 16 : 24, icount: BigInt(i) });
    }
    const image = await open(b);
    expect(image.snapshots).toHaveLength(3000);
    image.snapshots.forEach((s, i) => {
      expect([s.index, s.uniqueId, s.name, s.time.seconds]).toEqual([i, String(i + 1), names[i], i]);
      expect(s.extraData.icount).toBe(i % 2 ? undefined : BigInt(i));
    });
    expect(read(image.snapshotDisk(image.snapshots[2999]!), 0, C).equals(pattern(C, 1))).toBe(true);
  });

  it('refuses a table cut short by the end of the file (strict); hides it otherwise', async () => {
    const b = new ImageBuilder({ clusterBits: 9, size: SPAN });
    const s = b.space('s');
    s.write(0, pattern(C, 1));
    b.addSnapshot({ space: s, id: '1', name: 'a'.repeat(400) });
    const bytes = b.build();
    // The table is the last thing in the file: cut its entry (40 + 16 + 1 + 400 bytes) after 100 bytes.
    const tableAt = Number(bytes.readBigUInt64BE(64));
    const file = tmp.file('cut-table.qcow2');
    fs.writeFileSync(file, bytes.subarray(0, tableAt + 100));
    const err = await openImage(file, { strict: true }).then(
      () => undefined,
      (e: unknown) => e as QcowError,
    );
    expect(err).toBeInstanceOf(QcowError);
    expect(err!.code).toBe('EBADIMAGE');
    expect(err!.message.startsWith(`${file}: snapshot 0 of 1 (entry at 0x${tableAt.toString(16)}) is cut short`)).toBe(true);
    expect(err!.message.endsWith(`past the end of the file (size ${tableAt + 100})`)).toBe(true);
    const image = await openImage(file);
    try {
      expect(image.snapshots).toEqual([]);
      expect(image.problems).toEqual([
        { what: 'snapshot table', offset: tableAt, where: `0x${tableAt.toString(16)}`, why: err!.message.slice(file.length + 2), hides: 'the only snapshot' },
      ]);
    } finally {
      image.close();
    }
  });
});
