import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { compress as zstdCompress } from 'zstd-napi';
import { DecompressError, decompressCluster } from '../src/codec/decompress.js';
import { compressible, pattern } from './support/build-image.js';

const deflate = (b: Uint8Array) => zlib.deflateRawSync(b);

/** Runs decompressCluster into a fresh cluster-sized buffer; returns it, or the error message. */
function inflate(type: 'zlib' | 'zstd', src: Uint8Array, clusterSize: number): Buffer | string {
  const into = Buffer.alloc(clusterSize, 0xee);
  try {
    decompressCluster(type, src, into);
    return into;
  } catch (err) {
    expect(err).toBeInstanceOf(DecompressError);
    return (err as Error).message;
  }
}

/** Byte-exact comparison (Buffer.equals: toEqual walks a 2 MiB buffer element by element). */
function same(got: Buffer | string, want: Buffer): void {
  if (typeof got === 'string') throw new Error(`expected ${want.length} bytes, got the error: ${got}`);
  expect(got.length).toBe(want.length);
  expect(got.equals(want)).toBe(true);
}

/** A zstd skippable frame (magic 0x184D2A50..5F, little-endian size, then that many bytes). */
function skippableFrame(payload: Uint8Array): Buffer {
  const b = Buffer.alloc(8 + payload.length);
  b.writeUInt32LE(0x184d2a50, 0);
  b.writeUInt32LE(payload.length, 4);
  b.set(payload, 8);
  return b;
}

describe('zlib (raw deflate)', () => {
  for (const size of [512, 4096, 65536, 2 * 1024 * 1024]) {
    it(`inflates one ${size}-byte cluster exactly`, () => {
      const content = compressible(size, size);
      same(inflate('zlib', deflate(content), size), content);
    });
  }

  it('inflates incompressible data (stored blocks)', () => {
    const content = pattern(65536, 3);
    same(inflate('zlib', deflate(content), 65536), content);
  });

  it('accepts unrelated bytes after the end of the stream (the rest of the last sector)', () => {
    const content = compressible(65536, 1);
    same(inflate('zlib', Buffer.concat([deflate(content), pattern(511, 9)]), 65536), content);
    same(inflate('zlib', Buffer.concat([deflate(content), deflate(pattern(100, 1))]), 65536), content);
  });

  it('accepts a stream cut short once the cluster is full (no final block)', () => {
    const content = compressible(65536, 2);
    // Sync-flushed, never finished: the output is all there but the stream has no end.
    const unfinished = zlib.deflateRawSync(content, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    same(inflate('zlib', unfinished, 65536), content);
    // And the empty stored block of the sync flush itself cut off.
    same(inflate('zlib', unfinished.subarray(0, unfinished.length - 4), 65536), content);
  });

  it('refuses output short of a cluster', () => {
    expect(inflate('zlib', deflate(compressible(65535, 1)), 65536)).toBe('zlib data inflates to 65535 bytes, not one cluster (65536)');
    expect(inflate('zlib', deflate(new Uint8Array(0)), 512)).toBe('zlib data inflates to 0 bytes, not one cluster (512)');
    const cut = deflate(pattern(4096, 1)).subarray(0, 1000);
    expect(inflate('zlib', cut, 4096)).toMatch(/^zlib data inflates to \d+ bytes, not one cluster \(4096\)$/);
  });

  it('refuses a stream holding more than one cluster', () => {
    expect(inflate('zlib', deflate(compressible(65537, 1)), 65536)).toBe('zlib data inflates to more than one cluster (65536 bytes)');
    expect(inflate('zlib', deflate(compressible(1024, 1)), 512)).toBe('zlib data inflates to more than one cluster (512 bytes)');
  });

  it('refuses garbage', () => {
    // 0xff: final block of the reserved type 3.
    expect(inflate('zlib', Buffer.alloc(64, 0xff), 512)).toMatch(/^zlib data is corrupt \(/);
    expect(inflate('zlib', Buffer.from('this is not deflate data at all'), 512)).toMatch(/^zlib data is corrupt \(/);
    // A zlib-wrapped (not raw) stream is not what qcow2 stores.
    expect(inflate('zlib', zlib.deflateSync(compressible(512, 1)), 512)).toMatch(/^zlib data is corrupt \(/);
  });
});

describe('zstd', () => {
  for (const size of [512, 65536, 2 * 1024 * 1024]) {
    it(`inflates one frame to one ${size}-byte cluster`, () => {
      const content = compressible(size, 5);
      same(inflate('zstd', zstdCompress(content), size), content);
    });
  }

  it('inflates two frames that together make one cluster', () => {
    const content = pattern(65536, 7);
    const src = Buffer.concat([zstdCompress(content.subarray(0, 10000)), zstdCompress(content.subarray(10000))]);
    same(inflate('zstd', src, 65536), content);
  });

  it('inflates after a skippable frame', () => {
    const content = compressible(4096, 8);
    same(inflate('zstd', Buffer.concat([skippableFrame(Buffer.from('meta')), zstdCompress(content)]), 4096), content);
  });

  it('accepts unrelated bytes after the frame', () => {
    const content = compressible(65536, 9);
    same(inflate('zstd', Buffer.concat([zstdCompress(content), pattern(300, 1)]), 65536), content);
    same(inflate('zstd', Buffer.concat([zstdCompress(content), Buffer.alloc(511)]), 65536), content);
    // Even a further complete frame: the cluster is full after the first one.
    same(inflate('zstd', Buffer.concat([zstdCompress(content), zstdCompress(pattern(100, 2))]), 65536), content);
  });

  it('refuses output short of a cluster', () => {
    expect(inflate('zstd', zstdCompress(compressible(65535, 1)), 65536)).toBe('zstd data ends after 65535 bytes, short of one cluster (65536)');
    expect(inflate('zstd', Buffer.alloc(0), 512)).toBe('zstd data ends after 0 bytes, short of one cluster (512)');
  });

  it('refuses a frame cut short', () => {
    const frame = zstdCompress(pattern(4096, 4));
    expect(inflate('zstd', frame.subarray(0, frame.length - 10), 4096)).toMatch(/^zstd data ends after \d+ bytes, short of one cluster \(4096\)$/);
  });

  it('refuses garbage', () => {
    expect(inflate('zstd', Buffer.from('not a zstd frame, just text'), 512)).toMatch(/^zstd data is corrupt \(/);
    // A valid frame header, then a corrupted block.
    const frame = Buffer.from(zstdCompress(pattern(4096, 5)));
    frame.fill(0xff, 6, 40);
    expect(inflate('zstd', frame, 4096)).toMatch(/^zstd data (is corrupt|ends after)/);
  });

  it('refuses a frame larger than a cluster', () => {
    expect(inflate('zstd', zstdCompress(compressible(65537, 1)), 65536)).toBe('zstd frame does not end at one cluster (65536 bytes)');
    expect(inflate('zstd', zstdCompress(compressible(131072, 1)), 65536)).toBe('zstd frame does not end at one cluster (65536 bytes)');
  });

  it('starts afresh after a corrupt cluster', () => {
    const content = compressible(4096, 6);
    const frame = zstdCompress(content);
    expect(inflate('zstd', frame.subarray(0, 20), 4096)).toBeTypeOf('string');
    expect(inflate('zstd', zstdCompress(compressible(8192, 1)), 4096)).toBeTypeOf('string');
    same(inflate('zstd', frame, 4096), content);
  });
});

describe('round trips', () => {
  it('any cluster content and size, either codec, with trailing bytes', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 9, max: 16 }),
        fc.integer({ min: 0, max: 1000 }),
        fc.constantFrom<'zlib' | 'zstd'>('zlib', 'zstd'),
        fc.uint8Array({ maxLength: 511 }),
        (bits, seed, type, trailing) => {
          const size = 2 ** bits;
          const content = seed % 2 ? pattern(size, seed) : compressible(size, seed);
          const packed = type === 'zstd' ? zstdCompress(content) : deflate(content);
          same(inflate(type, Buffer.concat([packed, trailing]), size), content);
        },
      ),
      { numRuns: 60 },
    );
  });
});
