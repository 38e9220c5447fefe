import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { type Header, KNOWN_FEATURES, decodeHeader, headerBytesWanted, l2EntriesPerTable, probeMagic, checkTable } from '../src/format/header.js';
import { QcowError } from '../src/errors.js';
import { openImage } from '../src/image.js';
import {
  EXT,
  type EncodeHeaderOptions,
  type HeaderFields,
  ImageBuilder,
  encodeHeader,
  extBackingFormat,
  extBitmaps,
  extCrypto,
  extDataFile,
  extFeatureTable,
  tempDir,
} from './support/build-image.js';

const FILE = '/images/disk.qcow2';
const BIG_FILE = 2 ** 40;

function decode(fields: HeaderFields = {}, options: EncodeHeaderOptions = {}, fileSize = BIG_FILE): Header {
  return decodeHeader(encodeHeader(fields, options), FILE, fileSize);
}

/** The QcowError a decode throws (fails the test when it does not throw). */
function refusal(fields: HeaderFields, options: EncodeHeaderOptions = {}, fileSize = BIG_FILE): QcowError {
  try {
    decode(fields, options, fileSize);
  } catch (err) {
    expect(err).toBeInstanceOf(QcowError);
    return err as QcowError;
  }
  throw new Error('expected decodeHeader to refuse the header');
}

function expectRefused(fields: HeaderFields, message: string, options: EncodeHeaderOptions = {}, fileSize = BIG_FILE, code = 'EBADIMAGE'): void {
  const err = refusal(fields, options, fileSize);
  expect(err.code).toBe(code);
  expect(err.file).toBe(FILE);
  expect(err.message).toBe(`${FILE}: ${message}`);
}

const NO_FEATURES = { incompatible: [], compatible: [], autoclear: [] };

describe('version 2 header (72 bytes)', () => {
  it('decodes every field; features read as zero, refcount order 4, zlib', () => {
    const h = decode(
      {
        version: 2,
        backingFileOffset: 0,
        backingFileSize: 0,
        clusterBits: 12,
        size: 10 * 1024 * 1024,
        cryptMethod: 0,
        l1Size: 5,
        l1TableOffset: 0x3000,
        refcountTableOffset: 0x1000,
        refcountTableClusters: 2,
        nbSnapshots: 0,
        snapshotsOffset: 0,
      },
      {},
    );
    // 4 KiB clusters: 512 entries per L2 table, 2 MiB per table; 10 MiB needs 5 L1 entries.
    expect(h).toEqual({
      version: 2,
      backingFileOffset: 0,
      backingFileSize: 0,
      clusterBits: 12,
      clusterSize: 4096,
      size: 10485760,
      cryptMethod: 'none',
      cryptMethodCode: 0,
      l1Size: 5,
      l1TableOffset: 0x3000,
      refcountTableOffset: 0x1000,
      refcountTableClusters: 2,
      nbSnapshots: 0,
      snapshotsOffset: 0,
      incompatibleFeatures: 0n,
      compatibleFeatures: 0n,
      autoclearFeatures: 0n,
      refcountOrder: 4,
      headerLength: 72,
      compressionType: 'zlib',
      features: NO_FEATURES,
      dirty: false,
      corrupt: false,
      extendedL2: false,
      lazyRefcounts: false,
      hasDataFile: false,
      dataFileRaw: false,
      featureNameTable: [],
      extensions: [],
    } satisfies Header);
  });

  it('reads extensions from byte 72 and the backing file name', () => {
    const exts = [extBackingFormat('raw')];
    // 72: ext header, 80: "raw" padded to 8 -> 88: end marker, 96: name.
    const h = decode(
      { version: 2, clusterBits: 16, backingFileOffset: 96, backingFileSize: 8 },
      { extensions: exts, backingName: 'base.img' },
    );
    expect(h.backingFormat).toBe('raw');
    expect(h.backingFile).toBe('base.img');
    expect(h.extensions).toEqual([{ type: EXT.backingFormat, offset: 80, length: 3 }]);
  });

  it('accepts a version 2 header in exactly 72 bytes', () => {
    const bytes = encodeHeader({ version: 2, clusterBits: 16, l1Size: 1, l1TableOffset: 0x30000 }, { bytes: 72, endMarker: false });
    const h = decodeHeader(bytes, FILE, BIG_FILE);
    expect(h.headerLength).toBe(72);
    expect(h.extensions).toEqual([]);
  });
});

describe('version 3 header', () => {
  it('decodes every field of a 104-byte header', () => {
    const h = decode({
      version: 3,
      clusterBits: 16,
      size: 0x1_2345_6000,
      l1Size: 10,
      l1TableOffset: 0x30000,
      refcountTableOffset: 0x10000,
      refcountTableClusters: 1,
      nbSnapshots: 0,
      snapshotsOffset: 0x50000,
      incompatibleFeatures: 0n,
      compatibleFeatures: 1n,
      autoclearFeatures: 0n,
      refcountOrder: 5,
      headerLength: 104,
    });
    // 64 KiB clusters map 512 MiB per L2 table: 0x123456000 bytes need ceil(4.55 GiB / 512 MiB) = 10.
    expect(h).toEqual({
      version: 3,
      backingFileOffset: 0,
      backingFileSize: 0,
      clusterBits: 16,
      clusterSize: 65536,
      size: 0x1_2345_6000,
      cryptMethod: 'none',
      cryptMethodCode: 0,
      l1Size: 10,
      l1TableOffset: 0x30000,
      refcountTableOffset: 0x10000,
      refcountTableClusters: 1,
      nbSnapshots: 0,
      snapshotsOffset: 0x50000,
      incompatibleFeatures: 0n,
      compatibleFeatures: 1n,
      autoclearFeatures: 0n,
      refcountOrder: 5,
      headerLength: 104,
      compressionType: 'zlib',
      features: { incompatible: [], compatible: ['lazy refcounts'], autoclear: [] },
      dirty: false,
      corrupt: false,
      extendedL2: false,
      lazyRefcounts: true,
      hasDataFile: false,
      dataFileRaw: false,
      featureNameTable: [],
      extensions: [],
    } satisfies Header);
  });

  it('decodes a 112-byte header with compression_type zstd (1) and the compression type bit (3)', () => {
    const h = decode({ headerLength: 112, compressionType: 1, incompatibleFeatures: 1n << 3n });
    expect(h.headerLength).toBe(112);
    expect(h.compressionType).toBe('zstd');
    expect(h.incompatibleFeatures).toBe(8n);
    expect(h.features.incompatible).toEqual(['compression type']);
  });

  it('decodes a 112-byte header with compression_type zlib (0) and no bit', () => {
    const h = decode({ headerLength: 112, compressionType: 0 });
    expect(h.compressionType).toBe('zlib');
    expect(h.features).toEqual(NO_FEATURES);
  });

  it('refuses zstd without the compression type bit, and the bit with zlib', () => {
    expectRefused({ headerLength: 112, compressionType: 1 }, 'compression_type 1 is set without the compression type feature bit');
    expectRefused({ headerLength: 112, compressionType: 0, incompatibleFeatures: 8n }, 'compression type bit is set but compression_type is zlib (0)');
    // A 104-byte header has no compression_type field: it is zlib, so the bit is a mismatch too.
    expectRefused({ headerLength: 104, incompatibleFeatures: 8n }, 'compression type bit is set but compression_type is zlib (0)');
    expectRefused({ headerLength: 112, compressionType: 2, incompatibleFeatures: 8n }, 'unknown compression_type 2');
  });

  it('refuses refcount_order over 6 and accepts 0..6', () => {
    for (let order = 0; order <= 6; order++) expect(decode({ refcountOrder: order }).refcountOrder).toBe(order);
    expectRefused({ refcountOrder: 7 }, 'refcount_order 7 is out of range (0..6)');
  });
});

describe('64-bit fields near 2^53', () => {
  const MAX = 2 ** 53 - 1;

  it('accepts 2^53 - 1 exactly', () => {
    // 2 MiB clusters: one L2 table maps 2^18 * 2^21 = 2^39 bytes, so 2^53 - 1 needs 2^14 L1 entries.
    const h = decodeHeader(
      encodeHeader(
        { clusterBits: 21, size: MAX, l1Size: 2 ** 14, l1TableOffset: 2 ** 22, refcountTableOffset: 2 ** 53 - 2 ** 21, snapshotsOffset: MAX },
        { bytes: 4096 },
      ),
      FILE,
      2 ** 53,
    );
    expect(h.size).toBe(MAX);
    expect(h.refcountTableOffset).toBe(2 ** 53 - 2 ** 21);
    expect(h.snapshotsOffset).toBe(MAX);
    expect(h.l1Size).toBe(16384);
  });

  const over = 2n ** 53n;
  const fields: [keyof HeaderFields, string][] = [
    ['backingFileOffset', 'backing_file_offset'],
    ['size', 'size'],
    ['l1TableOffset', 'l1_table_offset'],
    ['refcountTableOffset', 'refcount_table_offset'],
    ['snapshotsOffset', 'snapshots_offset'],
  ];
  for (const [field, name] of fields) {
    it(`refuses ${name} = 2^53, naming the field`, () => {
      expectRefused({ [field]: over }, `${name} 0x20000000000000 is too large (over 2^53)`);
    });
  }

  it('refuses the largest 64-bit value in size', () => {
    expectRefused({ size: 0xffff_ffff_ffff_ffffn }, 'size 0xffffffffffffffff is too large (over 2^53)');
  });
});

describe('feature bits', () => {
  it('names every known bit when the image has no feature name table', () => {
    const h = decode({ incompatibleFeatures: 0b10011n, compatibleFeatures: 1n, autoclearFeatures: 3n });
    expect(h.features).toEqual({
      incompatible: ['dirty', 'corrupt', 'extended L2 entries'],
      compatible: ['lazy refcounts'],
      autoclear: ['bitmaps', 'raw external data'],
    });
    expect([h.dirty, h.corrupt, h.extendedL2, h.lazyRefcounts, h.dataFileRaw, h.hasDataFile]).toEqual([true, true, true, true, true, false]);
    expect(KNOWN_FEATURES.incompatible).toHaveLength(5);
  });

  it('accepts and reports dirty (bit 0) and corrupt (bit 1)', () => {
    const dirty = decode({ incompatibleFeatures: 1n });
    expect([dirty.dirty, dirty.corrupt, dirty.features.incompatible]).toEqual([true, false, ['dirty']]);
    const corrupt = decode({ incompatibleFeatures: 2n });
    expect([corrupt.dirty, corrupt.corrupt, corrupt.features.incompatible]).toEqual([false, true, ['corrupt']]);
  });

  it('reports the external data file bit (2) with its name extension', () => {
    const h = decode({ incompatibleFeatures: 4n, autoclearFeatures: 2n }, { extensions: [extDataFile('disk.data')] });
    expect(h.hasDataFile).toBe(true);
    expect(h.dataFileRaw).toBe(true);
    expect(h.dataFile).toBe('disk.data');
    expect(h.features.incompatible).toEqual(['external data file']);
    expect(h.features.autoclear).toEqual(['raw external data']);
  });

  it('takes names from the feature name table, ignoring entries of unknown kinds', () => {
    const table = extFeatureTable([
      { type: 0, bit: 0, name: 'dirty bit' },
      { type: 0, bit: 1, name: 'corrupt bit' },
      { type: 1, bit: 0, name: 'lazy refcounts' },
      { type: 2, bit: 1, name: 'raw external data' },
      { type: 3, bit: 0, name: 'from the future' },
      { type: 0xff, bit: 9, name: 'also unknown' },
      { type: 1, bit: 7, name: 'compat seven' },
    ]);
    const h = decode({ incompatibleFeatures: 3n, compatibleFeatures: 0x81n, autoclearFeatures: 0x6n }, { extensions: [table] });
    expect(h.featureNameTable).toEqual([
      { kind: 'incompatible', bit: 0, name: 'dirty bit' },
      { kind: 'incompatible', bit: 1, name: 'corrupt bit' },
      { kind: 'compatible', bit: 0, name: 'lazy refcounts' },
      { kind: 'autoclear', bit: 1, name: 'raw external data' },
      { kind: 'compatible', bit: 7, name: 'compat seven' },
    ]);
    expect(h.features).toEqual({
      incompatible: ['dirty bit', 'corrupt bit'],
      compatible: ['lazy refcounts', 'compat seven'],
      // autoclear bit 2 is in neither the table nor the known list.
      autoclear: ['raw external data', 'unknown autoclear bit 2'],
    });
    expect(h.extensions).toEqual([{ type: EXT.featureTable, offset: 112, length: 7 * 48 }]);
  });

  it('reads a 46-byte name that fills its field (no NUL) and cuts NUL-padded names at the NUL', () => {
    const long = 'n'.repeat(46);
    const padded = Buffer.concat([Buffer.from('short'), Buffer.alloc(3), Buffer.from('junk after the NUL')]);
    const h = decode({}, { extensions: [extFeatureTable([{ type: 1, bit: 3, name: long }, { type: 2, bit: 4, name: padded }])] });
    expect(h.featureNameTable).toEqual([
      { kind: 'compatible', bit: 3, name: long },
      { kind: 'autoclear', bit: 4, name: 'short' },
    ]);
  });

  it('reads the whole entries of a feature name table whose length is not a multiple of 48', () => {
    // QEMU reads the table as it is (qcow2_read_extensions never checks its length): the image opens.
    const table = extFeatureTable([{ type: 1, bit: 2, name: 'whole entry' }]);
    const data = Buffer.concat([table.data, Buffer.from([0, 3, 0x41, 0x42, 0])]);
    const h = decode({ compatibleFeatures: 4n }, { extensions: [{ type: EXT.featureTable, data }] });
    expect(h.featureNameTable).toEqual([{ kind: 'compatible', bit: 2, name: 'whole entry' }]);
    expect(h.features.compatible).toEqual(['whole entry']);
    expect(h.extensions).toEqual([{ type: EXT.featureTable, offset: 112, length: 53 }]);
  });

  it('accepts unknown compatible and autoclear bits, naming them', () => {
    const h = decode({ compatibleFeatures: 1n << 40n, autoclearFeatures: 1n << 63n });
    expect(h.features.compatible).toEqual(['unknown compatible bit 40']);
    expect(h.features.autoclear).toEqual(['unknown autoclear bit 63']);
  });

  it('refuses an unknown incompatible bit, naming the bit', () => {
    expectRefused({ incompatibleFeatures: 1n << 5n }, 'unknown incompatible feature bit 5: this image needs a newer reader');
    expectRefused({ incompatibleFeatures: (1n << 63n) | 1n }, 'unknown incompatible feature bit 63: this image needs a newer reader');
    expectRefused({ incompatibleFeatures: (1n << 5n) | (1n << 9n) }, 'unknown incompatible feature bit 5, bit 9: this image needs a newer reader');
  });

  it('refuses an unknown incompatible bit by the name the feature table gives it', () => {
    const table = extFeatureTable([
      { type: 0, bit: 5, name: 'encrypted L2' },
      { type: 1, bit: 6, name: 'not incompatible' },
    ]);
    expectRefused(
      { incompatibleFeatures: (1n << 5n) | (1n << 6n) },
      'unknown incompatible feature "encrypted L2" (bit 5), bit 6: this image needs a newer reader',
      { extensions: [table] },
    );
  });
});

describe('cluster_bits', () => {
  // At least enough L1 entries for a 1 MiB disk: 512-byte clusters map 64 * 512 = 32 KiB per table.
  it('accepts 9 (512 B) and 21 (2 MiB)', () => {
    const small = decode({ clusterBits: 9, l1Size: 32, l1TableOffset: 1536, refcountTableOffset: 512 });
    expect([small.clusterBits, small.clusterSize, l2EntriesPerTable(small)]).toEqual([9, 512, 64]);
    const big = decodeHeader(encodeHeader({ clusterBits: 21, l1TableOffset: 2 ** 21 }, { bytes: 4096 }), FILE, BIG_FILE);
    expect([big.clusterBits, big.clusterSize, l2EntriesPerTable(big)]).toEqual([21, 2 ** 21, 2 ** 18]);
  });

  it('refuses 8 and 22', () => {
    expectRefused({ clusterBits: 8 }, 'cluster_bits 8 is out of range (9..21)', { bytes: 4096 });
    expectRefused({ clusterBits: 22 }, 'cluster_bits 22 is out of range (9..21)', { bytes: 4096 });
    expectRefused({ clusterBits: 0 }, 'cluster_bits 0 is out of range (9..21)', { bytes: 4096 });
  });

  it('headerBytesWanted asks for one cluster, 4096 when cluster_bits is out of range', () => {
    expect(headerBytesWanted(encodeHeader({ clusterBits: 9 }))).toBe(512);
    expect(headerBytesWanted(encodeHeader({ clusterBits: 21 }, { bytes: 64 }))).toBe(2 ** 21);
    expect(headerBytesWanted(encodeHeader({ clusterBits: 30 }, { bytes: 64 }))).toBe(4096);
    expect(headerBytesWanted(new Uint8Array(10))).toBe(4096);
  });

  it('probeMagic reads the magic and version', () => {
    expect(probeMagic(encodeHeader({ version: 3 }, { bytes: 8 }))).toEqual({ qcow: true, version: 3 });
    expect(probeMagic(encodeHeader({ version: 1 }, { bytes: 8 }))).toEqual({ qcow: true, version: 1 });
    expect(probeMagic(Buffer.from('QFI\xfb', 'latin1'))).toEqual({ qcow: false, version: 0 });
    expect(probeMagic(Buffer.from('not qcow'))).toEqual({ qcow: false, version: 0x71636f77 });
  });
});

describe('header_length and size of the data', () => {
  it('refuses header_length under 104 for version 3', () => {
    expectRefused({ headerLength: 100 }, 'header_length 100 is too small (at least 104 for version 3)');
    expectRefused({ headerLength: 72 }, 'header_length 72 is too small (at least 104 for version 3)');
  });

  it('refuses header_length larger than a cluster', () => {
    expectRefused({ clusterBits: 9, headerLength: 520, l1Size: 32, l1TableOffset: 1536 }, 'header_length 520 exceeds the cluster size 512', { bytes: 4096 });
  });

  it('accepts header_length equal to the cluster size', () => {
    const h = decode({ clusterBits: 9, headerLength: 512, l1Size: 32, l1TableOffset: 1536 }, { endMarker: false });
    expect(h.headerLength).toBe(512);
  });

  it('refuses header_length past the bytes there are', () => {
    expectRefused({ headerLength: 256 }, 'header_length 256 extends past the end of the file', { bytes: 200, endMarker: false });
  });

  it('refuses data too short for a header', () => {
    expectRefused({}, 'too short for a qcow2 header (71 bytes)', { bytes: 71 });
    expectRefused({}, 'too short for a version 3 header (100 bytes)', { bytes: 100 });
  });
});

describe('version and magic', () => {
  it('refuses versions 0 and 4', () => {
    expectRefused({ version: 0 }, 'unsupported qcow2 version 0 (expected 2 or 3)');
    expectRefused({ version: 4 }, 'unsupported qcow2 version 4 (expected 2 or 3)');
  });

  it('refuses version 1 as unsupported', () => {
    const err = refusal({ version: 1 });
    expect(err.code).toBe('EUNSUPPORTED');
    expect(err.message).toBe(`${FILE}: qcow version 1 images are not supported (convert with qemu-img convert -O qcow2)`);
  });

  it('refuses a bad magic', () => {
    expectRefused({ magic: 0x514649fa }, 'not a qcow2 image (magic 0x514649fa, expected 0x514649fb)');
    expectRefused({ magic: 0 }, 'not a qcow2 image (magic 0x0, expected 0x514649fb)');
  });
});

describe('crypt_method', () => {
  it('reports 1 (AES) and 2 (LUKS), refuses others', () => {
    expect(decode({ cryptMethod: 1 })).toMatchObject({ cryptMethod: 'aes', cryptMethodCode: 1 });
    expect(decode({ cryptMethod: 2 })).toMatchObject({ cryptMethod: 'luks', cryptMethodCode: 2 });
    expectRefused({ cryptMethod: 3 }, 'unknown crypt_method 3');
  });

  describe('openImage and encrypted images without a key', () => {
    const tmp = tempDir();
    afterAll(() => tmp.cleanup());
    const make = (code: number) => {
      const b = new ImageBuilder({ size: 1024 * 1024 });
      b.active.write(0, Buffer.from('hello'));
      const image = b.build();
      image.writeUInt32BE(code, 32);
      const file = tmp.file(`enc${code}.qcow2`);
      fs.writeFileSync(file, image);
      return file;
    };
    it('crypt_method 1 (AES): opens locked; reading data is ENOKEY', async () => {
      const image = await openImage(make(1));
      expect(image.locked).toEqual([image.path]);
      expect(() => image.active.readSync(Buffer.alloc(512), 0)).toThrow(/is encrypted \(AES\) and no passphrase was given/);
      image.close();
    });
    it('crypt_method 2 (LUKS) without the encryption header extension: refused', async () => {
      const file = make(2);
      const err = await openImage(file).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(QcowError);
      expect((err as QcowError).message).toBe(`${file}: LUKS encryption without the encryption header extension`);
    });
  });
});

describe('extended L2', () => {
  it('needs clusters of at least 16 KiB', () => {
    // 16 KiB clusters with 16-byte entries: 1024 entries per table, 16 MiB per table.
    const h = decode({ clusterBits: 14, incompatibleFeatures: 16n, l1TableOffset: 3 * 16384 });
    expect([h.extendedL2, l2EntriesPerTable(h)]).toEqual([true, 1024]);
    expectRefused({ clusterBits: 13, incompatibleFeatures: 16n, l1Size: 1, l1TableOffset: 3 * 8192 }, 'extended L2 entries need clusters of at least 16 KiB (cluster_bits 13)');
    expectRefused({ clusterBits: 9, incompatibleFeatures: 16n, l1Size: 64, l1TableOffset: 1536 }, 'extended L2 entries need clusters of at least 16 KiB (cluster_bits 9)');
  });

  it('halves the entries per L2 table, so a disk needs twice the L1 entries', () => {
    // 64 KiB clusters: 4096 extended entries map 256 MiB, so 1 GiB needs 4 (2 with standard entries).
    expect(decode({ size: 2 ** 30, l1Size: 4, incompatibleFeatures: 16n }).l1Size).toBe(4);
    expectRefused({ size: 2 ** 30, l1Size: 3, incompatibleFeatures: 16n }, 'l1_size 3 is too small for a disk of 1073741824 bytes (needs 4)');
    expect(decode({ size: 2 ** 30, l1Size: 2 }).l1Size).toBe(2);
  });
});

describe('backing file name', () => {
  it('is read from backing_file_offset, backing_file_size bytes, not NUL-terminated', () => {
    const h = decode({ backingFileOffset: 0x200, backingFileSize: 11 }, { backingName: 'base.qcow2X' });
    expect(h.backingFile).toBe('base.qcow2X');
    expect([h.backingFileOffset, h.backingFileSize]).toEqual([0x200, 11]);
  });

  it('accepts 1023 bytes and refuses 1024', () => {
    const name = 'a'.repeat(1023);
    expect(decode({ backingFileOffset: 4096, backingFileSize: 1023 }, { backingName: name }).backingFile).toBe(name);
    expectRefused({ backingFileOffset: 4096, backingFileSize: 1024 }, 'backing file name is too long (backing_file_size 1024, at most 1023)', {
      backingName: name + 'a',
    });
  });

  it('refuses a name outside the first cluster', () => {
    const c512 = { clusterBits: 9, l1Size: 32, l1TableOffset: 1536 };
    expectRefused({ ...c512, backingFileOffset: 500, backingFileSize: 13 }, 'backing file name at 0x1f4 (+13) lies outside the first cluster', { bytes: 1024 });
    expectRefused({ ...c512, backingFileOffset: 600, backingFileSize: 1 }, 'backing file name at 0x258 (+1) lies outside the first cluster', { bytes: 1024 });
    // Ending exactly at the cluster's end is fine.
    expect(decode({ ...c512, backingFileOffset: 500, backingFileSize: 12 }, { bytes: 1024, backingName: 'twelve bytes' }).backingFile).toBe('twelve bytes');
  });

  it('refuses a name past the end of the data', () => {
    expectRefused({ backingFileOffset: 200, backingFileSize: 100 }, 'backing file name at 0xc8 extends past the end of the file', { bytes: 250 });
  });

  it('ignores backing_file_size when backing_file_offset is 0', () => {
    expect(decode({ backingFileOffset: 0, backingFileSize: 50 }).backingFile).toBeUndefined();
  });

  it('refuses a backing file together with an external data file', () => {
    expectRefused({ incompatibleFeatures: 4n, backingFileOffset: 0x200, backingFileSize: 4 }, 'an image with an external data file cannot have a backing file', {
      backingName: 'base',
    });
  });
});

describe('L1 table', () => {
  it('refuses a misaligned offset', () => {
    expectRefused({ l1TableOffset: 0x30200 }, 'L1 table at 0x30200 (l1_table_offset) is not aligned to the cluster size 65536');
  });

  it('refuses offset 0', () => {
    expectRefused({ l1TableOffset: 0 }, 'L1 table at offset 0 (l1_table_offset) overlaps the header');
  });

  it('refuses a table past the end of the file, and accepts one ending exactly there', () => {
    expectRefused({ l1Size: 2, l1TableOffset: 0x30000 }, 'L1 table at 0x30000 (16 bytes) extends past the end of the file (size 196616)', {}, 0x30000 + 8);
    expect(decode({ l1Size: 2, l1TableOffset: 0x30000 }, {}, 0x30000 + 16).l1Size).toBe(2);
  });

  it('refuses l1_size too small for the disk', () => {
    // 64 KiB clusters: 512 MiB per L2 table; 512 MiB + 1 byte needs 2 entries.
    expectRefused({ size: 512 * 2 ** 20 + 1, l1Size: 1 }, 'l1_size 1 is too small for a disk of 536870913 bytes (needs 2)');
    expect(decode({ size: 512 * 2 ** 20, l1Size: 1 }).l1Size).toBe(1);
  });

  it('refuses an L1 table over 32 MiB', () => {
    // 32 MiB / 8 = 4194304 entries at most (QEMU's QCOW_MAX_L1_SIZE).
    expect(decode({ l1Size: 4194304 }).l1Size).toBe(4194304);
    expectRefused({ l1Size: 4194305 }, 'l1_size 4194305 is too large (the L1 table may be at most 33554432 bytes)');
  });

  it('accepts an empty disk with no L1 table', () => {
    const h = decode({ size: 0, l1Size: 0, l1TableOffset: 0 });
    expect([h.size, h.l1Size, h.l1TableOffset]).toEqual([0, 0, 0]);
  });

  it('leaves the snapshot table offset to the snapshot reader (a bad table costs only the snapshots)', () => {
    expect(decode({ nbSnapshots: 1, snapshotsOffset: 0x50008 }).snapshotsOffset).toBe(0x50008);
    expect(decode({ nbSnapshots: 2, snapshotsOffset: 0 }).snapshotsOffset).toBe(0);
    expect(checkTable.bind(null, 'f', 0x50014, 65536, 'snapshots_offset', 0x50008, 40, 'snapshot table')).toThrow(
      'f: snapshot table at 0x50008 (snapshots_offset) is not aligned to the cluster size 65536',
    );
    expect(checkTable.bind(null, 'f', 0x50014, 65536, 'snapshots_offset', 0x50000, 40, 'snapshot table')).toThrow(
      'f: snapshot table at 0x50000 (40 bytes) extends past the end of the file (size 327700)',
    );
  });
});

describe('header extensions', () => {
  it('backing file format: up to 15 bytes', () => {
    const h = decode({}, { extensions: [extBackingFormat('qcow2')] });
    expect(h.backingFormat).toBe('qcow2');
    expect(h.extensions).toEqual([{ type: EXT.backingFormat, offset: 112, length: 5 }]);
    expect(decode({}, { extensions: [extBackingFormat('f'.repeat(15))] }).backingFormat).toBe('f'.repeat(15));
    expectRefused({}, 'backing file format name is too long (16 bytes)', { extensions: [extBackingFormat('f'.repeat(16))] });
  });

  it('bitmaps: count, directory size and offset', () => {
    const h = decode({ autoclearFeatures: 1n }, { extensions: [extBitmaps(3, 0x1234, 2n ** 53n - 65536n)] });
    expect(h.bitmaps).toEqual({ count: 3, directorySize: 0x1234, directoryOffset: 2 ** 53 - 65536 });
    expect(h.features.autoclear).toEqual(['bitmaps']);
    expectRefused({}, 'bitmaps extension has length 16 (QEMU requires exactly 24)', { extensions: [{ type: EXT.bitmaps, data: Buffer.alloc(16) }] });
    expectRefused({}, 'bitmaps extension has length 32 (QEMU requires exactly 24)', { extensions: [{ type: EXT.bitmaps, data: Buffer.alloc(32) }] });
    expectRefused({}, 'bitmap_directory_offset 0x20000000000000 is too large (over 2^53)', { extensions: [extBitmaps(1, 8, 2n ** 53n)] });
  });

  it('full disk encryption header pointer: offset and length', () => {
    const h = decode({ cryptMethod: 2 }, { extensions: [extCrypto(0x20000, 0x200000)] });
    expect(h.encryption).toEqual({ offset: 0x20000, length: 0x200000 });
    expect(h.cryptMethod).toBe('luks');
    expectRefused({}, 'encryption header pointer has length 8 (QEMU requires exactly 16)', { extensions: [{ type: EXT.crypto, data: Buffer.alloc(8) }] });
    expectRefused({}, 'encryption header pointer has length 24 (QEMU requires exactly 16)', { extensions: [{ type: EXT.crypto, data: Buffer.alloc(24) }] });
    expectRefused({}, 'encryption header length 0x20000000000000 is too large (over 2^53)', { extensions: [extCrypto(0, 2n ** 53n)] });
  });

  it('external data file name', () => {
    const h = decode({ incompatibleFeatures: 4n }, { extensions: [extDataFile('../data/disk.raw')] });
    expect(h.dataFile).toBe('../data/disk.raw');
    expect(h.hasDataFile).toBe(true);
  });

  it('skips an unknown extension but lists it, with every extension in file order', () => {
    const unknown = { type: 0x12345678, data: Buffer.from('abcde') };
    const h = decode(
      { incompatibleFeatures: 4n },
      { extensions: [unknown, extBackingFormat('raw'), extDataFile('d'), extBitmaps(0, 0, 0), extCrypto(1, 2)] },
    );
    // 104: unknown, data at 112 (5 bytes padded to 8) -> 120: backing format, data 128 (3 -> 8) ->
    // 136: data file, data 144 (1 -> 8) -> 152: bitmaps, data 160 (24) -> 184: crypto, data 192 (16).
    expect(h.extensions).toEqual([
      { type: 0x12345678, offset: 112, length: 5 },
      { type: EXT.backingFormat, offset: 128, length: 3 },
      { type: EXT.dataFile, offset: 144, length: 1 },
      { type: EXT.bitmaps, offset: 160, length: 24 },
      { type: EXT.crypto, offset: 192, length: 16 },
    ]);
    expect([h.backingFormat, h.dataFile, h.bitmaps, h.encryption]).toEqual(['raw', 'd', { count: 0, directorySize: 0, directoryOffset: 0 }, { offset: 1, length: 2 }]);
  });

  it('refuses an extension whose length runs past the cluster', () => {
    expectRefused({}, 'header extension 0xe2792aca at 0x68 (length 65425) runs past the end of the header area', {
      extensions: [{ type: EXT.backingFormat, data: Buffer.from('raw'), declaredLength: 65536 - 112 + 1 }],
    });
    // Exactly to the end of the cluster is fine (an unknown type, so its bytes are not interpreted).
    const h = decode({}, { extensions: [{ type: 0x55, data: Buffer.alloc(0), declaredLength: 65536 - 112 }], endMarker: false });
    expect(h.extensions).toEqual([{ type: 0x55, offset: 112, length: 65424 }]);
  });

  it('stops at the end marker (type 0)', () => {
    const h = decode({}, { extensions: [extBackingFormat('raw'), { type: EXT.end, data: Buffer.alloc(0) }, extDataFile('after-the-end')] });
    expect(h.backingFormat).toBe('raw');
    expect(h.dataFile).toBeUndefined();
    expect(h.extensions).toEqual([{ type: EXT.backingFormat, offset: 112, length: 3 }]);
  });

  it('stops at backing_file_offset: the name is not read as an extension', () => {
    // 104: backing format, data 112..115 padded to 120; the name starts at 120 with no end marker.
    // Read as an extension header, "base.qcow2" would be type 0x62617365 with length 0x2e71636f.
    const h = decode({ backingFileOffset: 120, backingFileSize: 10 }, { extensions: [extBackingFormat('qcow2')], endMarker: false, backingName: 'base.qcow2' });
    expect(h.backingFile).toBe('base.qcow2');
    expect(h.backingFormat).toBe('qcow2');
    expect(h.extensions).toHaveLength(1);
  });

  it('stops at the end of the bytes given when they end before the cluster does', () => {
    const h = decode({}, { bytes: 120, extensions: [extBackingFormat('raw')], endMarker: false });
    expect(h.backingFormat).toBe('raw');
  });
});
