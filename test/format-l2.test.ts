import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ClusterType, classifyExtended, classifyStandard, compressedDescriptor, l1EntryOffset, standardOffset } from '../src/format/l2.js';
import { COMPRESSED, COPIED, compressedEntry } from './support/build-image.js';

/** A 64-bit entry as the (hi, lo) 32-bit halves the decoders take. */
function halves(entry: bigint): [number, number] {
  return [Number(entry >> 32n), Number(entry & 0xffff_ffffn)];
}

const l1 = (e: bigint) => l1EntryOffset(...halves(e));
const std = (e: bigint, dataFile = false) => classifyStandard(...halves(e), dataFile);
const ext = (e: bigint, alloc: number, zero: number, dataFile = false) => classifyExtended(...halves(e), dataFile, alloc, zero);
const desc = (e: bigint, bits: number) => compressedDescriptor(...halves(e), bits);

describe('L1 entries', () => {
  it('take the L2 table offset from bits 9..55 only', () => {
    expect(l1(0n)).toBe(0);
    expect(l1(COPIED | 0x10000n)).toBe(0x10000);
    // Every bit set: bits 0..8 and 56..63 are masked off, leaving 0x00fffffffffffe00 = 2^56 - 512.
    expect(l1(0xffff_ffff_ffff_ffffn)).toBe(2 ** 56 - 512);
    // Bits 56..62 (reserved) and 0..8 alone give offset 0: not allocated.
    expect(l1(0x7f00_0000_0000_01ffn)).toBe(0);
    expect(l1(1n << 55n)).toBe(2 ** 55);
    expect(l1(1n << 9n)).toBe(512);
  });
});

describe('standard L2 entries', () => {
  it('take the host offset from bits 9..55', () => {
    expect(standardOffset(...halves(COPIED | 0x1234_5678_0000n))).toBe(0x1234_5678_0000);
    expect(standardOffset(...halves(0xffff_ffff_ffff_ffffn))).toBe(2 ** 56 - 512);
    expect(standardOffset(...halves(0x0100_0000_0000_0000n))).toBe(0);
    // Bits 1..8 are reserved: masked off (a misaligned offset still shows bits 9+).
    expect(standardOffset(...halves(0x50000n | 0x1fen))).toBe(0x50000);
    expect(standardOffset(...halves(0x50200n))).toBe(0x50200);
  });

  it('classify unallocated, data, zero, zero with a preallocated cluster, compressed', () => {
    expect(std(0n)).toBe(ClusterType.Unallocated);
    expect(std(COPIED | 0x50000n)).toBe(ClusterType.Data);
    expect(std(0x50000n)).toBe(ClusterType.Data); // "copied" does not matter for reading
    expect(std(1n)).toBe(ClusterType.Zero);
    expect(std(COPIED | 0x50000n | 1n)).toBe(ClusterType.Zero);
    expect(std(COMPRESSED | 0x50010n)).toBe(ClusterType.Compressed);
    // The compressed bit wins over what would be the zero flag (bit 0 is part of the offset there).
    expect(std(COMPRESSED | 1n)).toBe(ClusterType.Compressed);
  });

  it('treat bits outside 9..55 as no offset', () => {
    expect(std(0x1fen)).toBe(ClusterType.Unallocated);
    expect(std(0x3f00_0000_0000_0000n)).toBe(ClusterType.Unallocated);
  });

  it('offset 0 with the copied bit is data only with an external data file', () => {
    expect(std(COPIED, false)).toBe(ClusterType.Unallocated);
    expect(std(COPIED, true)).toBe(ClusterType.Data);
    expect(std(0n, true)).toBe(ClusterType.Unallocated);
    expect(std(COPIED | 1n, true)).toBe(ClusterType.Zero);
  });
});

describe('extended L2 entries', () => {
  const ALL = 0xffff_ffff;
  const host = COPIED | 0x70000n;

  it('all subclusters allocated: data', () => {
    expect(ext(host, ALL, 0)).toBe(ClusterType.Data);
  });

  it('all subclusters zero: zero, with or without a host cluster', () => {
    expect(ext(0n, 0, ALL)).toBe(ClusterType.Zero);
    expect(ext(host, 0, ALL)).toBe(ClusterType.Zero);
  });

  it('mixed subclusters', () => {
    expect(ext(host, 0x0000_ffff, 0xffff_0000)).toBe(ClusterType.Subclusters);
    expect(ext(host, 0x8000_0001, 0)).toBe(ClusterType.Subclusters);
    expect(ext(host, 0x1, 0x2)).toBe(ClusterType.Subclusters);
    // Zero and unallocated mixed, with no host cluster.
    expect(ext(0n, 0, 0x1)).toBe(ClusterType.Subclusters);
    expect(ext(0n, 0, 0x7fff_ffff)).toBe(ClusterType.Subclusters);
  });

  it('unallocated: no bits set, with or without a host cluster', () => {
    expect(ext(0n, 0, 0)).toBe(ClusterType.Unallocated);
    expect(ext(host, 0, 0)).toBe(ClusterType.Unallocated);
  });

  it('invalid: a subcluster both allocated and zero', () => {
    expect(ext(host, 0x1, 0x1)).toBe(ClusterType.Invalid);
    expect(ext(host, 0x8000_0000, 0x8000_0000)).toBe(ClusterType.Invalid);
    expect(ext(host, ALL, ALL)).toBe(ClusterType.Invalid);
    expect(ext(0n, 0x10, 0x10)).toBe(ClusterType.Invalid);
  });

  it('invalid: allocated subclusters without a host offset', () => {
    expect(ext(0n, 0x1, 0)).toBe(ClusterType.Invalid);
    expect(ext(0n, ALL, 0)).toBe(ClusterType.Invalid);
    expect(ext(COPIED, 0x8000_0000, 0)).toBe(ClusterType.Invalid);
  });

  it('offset 0 with the copied bit is a host offset with an external data file', () => {
    expect(ext(COPIED, ALL, 0, true)).toBe(ClusterType.Data);
    expect(ext(COPIED, 0x3, 0, true)).toBe(ClusterType.Subclusters);
    expect(ext(0n, 0x3, 0, true)).toBe(ClusterType.Invalid);
  });

  it('ignore the standard zero flag (bit 0): the bitmap says it', () => {
    expect(ext(host | 1n, ALL, 0)).toBe(ClusterType.Data);
    expect(ext(1n, 0, 0)).toBe(ClusterType.Unallocated);
  });

  it('compressed clusters ignore the bitmap, even an invalid one', () => {
    expect(ext(COMPRESSED | 0x12345n, ALL, ALL)).toBe(ClusterType.Compressed);
    expect(ext(COMPRESSED, 0, 0)).toBe(ClusterType.Compressed);
  });
});

describe('compressed cluster descriptors', () => {
  // From the spec: x = 62 - (cluster_bits - 8); bits 0..x-1 offset, bits x..61 additional sectors;
  // the data spans [offset, (offset & ~511) + (n + 1) * 512), so length = (n + 1) * 512 - offset % 512.

  it('cluster_bits 9: x = 61, one sector bit (61)', () => {
    // offset 0x100000001ff (offset % 512 = 511), n = 1: 2 * 512 - 511 = 513.
    expect(desc(COMPRESSED | (1n << 61n) | 0x100_0000_01ffn, 9)).toEqual({ offset: 0x100_0000_01ff, length: 513 });
    // Bit 60 is still offset.
    expect(desc(COMPRESSED | (1n << 52n) | 0x200n, 9)).toEqual({ offset: 2 ** 52 + 512, length: 512 });
    expect(desc(COMPRESSED | 0x1f_ffff_ffff_fe00n, 9)).toEqual({ offset: 2 ** 53 - 512, length: 512 });
  });

  it('cluster_bits 12: x = 58, sector bits 58..61', () => {
    // offset 0x200000300 (% 512 = 256), n = 15: 16 * 512 - 256 = 7936.
    expect(desc(COMPRESSED | (15n << 58n) | 0x2_0000_0300n, 12)).toEqual({ offset: 0x2_0000_0300, length: 7936 });
    // Bit 57 is offset (2^57, exact as a double), bit 58 the first sector bit.
    expect(desc(COMPRESSED | (1n << 57n), 12)).toEqual({ offset: 2 ** 57, length: 512 });
    expect(desc(COMPRESSED | (1n << 58n), 12)).toEqual({ offset: 0, length: 1024 });
  });

  it('cluster_bits 16: x = 54, sector bits 54..61', () => {
    // offset 0x1234567a10 (% 512 = 0xa10 % 0x200 = 16), n = 5: 6 * 512 - 16 = 3056.
    expect(desc(COMPRESSED | (5n << 54n) | 0x12_3456_7a10n, 16)).toEqual({ offset: 0x12_3456_7a10, length: 3056 });
    // n = 255 (all 8 bits): 256 sectors = 131072 bytes, offset sector-aligned.
    expect(desc(COMPRESSED | (255n << 54n) | 0x10000n, 16)).toEqual({ offset: 0x10000, length: 131072 });
    // The copied bit (63) is not part of the descriptor.
    expect(desc(COPIED | COMPRESSED | (2n << 54n) | 0x10001n, 16)).toEqual({ offset: 0x10001, length: 1535 });
    expect(desc(COMPRESSED | (1n << 53n), 16)).toEqual({ offset: 2 ** 53, length: 512 });
  });

  it('cluster_bits 21: x = 49, sector bits 49..61', () => {
    // offset 2^49 - 1 (% 512 = 511), n = 8191 (all 13 bits): 8192 * 512 - 511 = 4193793.
    expect(desc(COMPRESSED | (8191n << 49n) | (2n ** 49n - 1n), 21)).toEqual({ offset: 2 ** 49 - 1, length: 4193793 });
    expect(desc(COMPRESSED | (1n << 48n), 21)).toEqual({ offset: 2 ** 48, length: 512 });
    expect(desc(COMPRESSED | (1n << 49n), 21)).toEqual({ offset: 0, length: 1024 });
  });

  it('the test helper encodes what the decoder reads (random offsets and lengths)', () => {
    const cases = fc
      .tuple(fc.integer({ min: 9, max: 21 }), fc.integer({ min: 0, max: 2 ** 40 }))
      .chain(([bits, offset]) =>
        // The most the n field can say: 2^(bits-8) sectors counted from the one holding `offset`.
        fc.tuple(fc.constant(bits), fc.constant(offset), fc.integer({ min: 1, max: 2 ** (bits - 8) * 512 - (offset % 512) })),
      );
    fc.assert(
      fc.property(cases, ([bits, offset, length]) => {
        const d = desc(compressedEntry(bits, offset, length), bits);
        expect(d.offset).toBe(offset);
        // The descriptor covers whole sectors: at least `length`, less than `length` + 512.
        expect(d.length).toBeGreaterThanOrEqual(length);
        expect(d.length).toBeLessThan(length + 512);
        expect((offset + d.length) % 512).toBe(0);
      }),
    );
  });
});
