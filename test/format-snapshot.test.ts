import { describe, expect, it } from 'vitest';
import { type SnapshotEntry, decodeSnapshotEntry } from '../src/format/snapshot-entry.js';
import { QcowError } from '../src/errors.js';
import { encodeSnapshotEntry, snapshotExtra } from './support/build-image.js';

const FILE = '/images/disk.qcow2';
const TABLE = 0x50000;

function decodeOne(bytes: Uint8Array, at = 0, index = 0) {
  return decodeSnapshotEntry(bytes, at, index, TABLE, FILE);
}

function refusal(bytes: Uint8Array, at = 0, index = 0): QcowError {
  try {
    decodeOne(bytes, at, index);
  } catch (err) {
    expect(err).toBeInstanceOf(QcowError);
    expect((err as QcowError).code).toBe('EBADIMAGE');
    return err as QcowError;
  }
  throw new Error('expected decodeSnapshotEntry to refuse the entry');
}

describe('decodeSnapshotEntry', () => {
  it('decodes every field of an entry with 16 bytes of extra data (what QEMU writes)', () => {
    const extra = snapshotExtra({ vmStateSizeLarge: 0x1_2345_6789, diskSize: 2 ** 34 }, 16);
    const bytes = encodeSnapshotEntry({
      l1TableOffset: 0x7_0000_0000,
      l1Size: 32,
      id: '17',
      name: 'before upgrade',
      dateSec: 1_700_000_000,
      dateNsec: 999_999_999,
      vmClockNsec: 0xffff_ffff_ffff_fffen,
      vmStateSize: 0x2345_6789,
      extra,
    });
    // 40 fixed + 16 extra + 2 id + 14 name = 72 bytes: already a multiple of 8.
    expect(bytes.length).toBe(72);
    const decoded = decodeOne(bytes, 0, 4);
    expect(decoded).toEqual({
      next: 72,
      entry: {
        index: 4,
        entryOffset: TABLE,
        l1TableOffset: 0x7_0000_0000,
        l1Size: 32,
        uniqueId: '17',
        name: 'before upgrade',
        time: { seconds: 1_700_000_000, nanoseconds: 999_999_999 },
        guestRuntime: 0xffff_ffff_ffff_fffen,
        // vm_state_size_large supersedes the 32-bit field.
        vmStateSize: 0x1_2345_6789,
        vmStateSize32: 0x2345_6789,
        extraDataSize: 16,
        extraData: { vmStateSizeLarge: 0x1_2345_6789, diskSize: 2 ** 34, bytes: Buffer.from(extra) },
      } satisfies SnapshotEntry,
    });
  });

  it('extra data of 0 bytes: the 32-bit VM state size, no disk size, no icount', () => {
    const d = decodeOne(encodeSnapshotEntry({ vmStateSize: 0xffff_ffff, id: '1', name: 'a' }))!;
    expect(d.entry.vmStateSize).toBe(0xffff_ffff);
    expect(d.entry.extraDataSize).toBe(0);
    expect(d.entry.extraData).toEqual({ bytes: Buffer.alloc(0) });
    // 40 + 1 + 1 = 42, padded to 48.
    expect(d.next).toBe(48);
  });

  it('extra data of 8 bytes: vm_state_size_large only, superseding the 32-bit field even when smaller', () => {
    const d = decodeOne(encodeSnapshotEntry({ vmStateSize: 1000, extra: snapshotExtra({ vmStateSizeLarge: 5 }, 8) }))!;
    expect(d.entry.vmStateSize).toBe(5);
    expect(d.entry.vmStateSize32).toBe(1000);
    expect(d.entry.extraData.vmStateSizeLarge).toBe(5);
    expect(d.entry.extraData.diskSize).toBeUndefined();
    expect(d.entry.extraData.icount).toBeUndefined();
  });

  it('extra data of 8 bytes with vm_state_size_large 0 gives a VM state size of 0', () => {
    const d = decodeOne(encodeSnapshotEntry({ vmStateSize: 1000, extra: snapshotExtra({ vmStateSizeLarge: 0 }, 8) }))!;
    expect(d.entry.vmStateSize).toBe(0);
  });

  it('extra data of 24 bytes: icount, and -1 as "none"', () => {
    const withCount = decodeOne(encodeSnapshotEntry({ extra: snapshotExtra({ vmStateSizeLarge: 0, diskSize: 512, icount: 123_456_789_012n }, 24) }))!;
    expect(withCount.entry.extraData).toMatchObject({ vmStateSizeLarge: 0, diskSize: 512, icount: 123_456_789_012n });
    const big = decodeOne(encodeSnapshotEntry({ extra: snapshotExtra({ icount: 0xffff_ffff_ffff_fffen }, 24) }))!;
    expect(big.entry.extraData.icount).toBe(0xffff_ffff_ffff_fffen);
    const none = decodeOne(encodeSnapshotEntry({ extra: snapshotExtra({ icount: 0xffff_ffff_ffff_ffffn }, 24) }))!;
    expect(none.entry.extraData.icount).toBeUndefined();
    expect('icount' in none.entry.extraData).toBe(false);
  });

  it('extra data longer than 24 bytes: unknown trailing bytes are kept', () => {
    const tail = Buffer.from('future fields!!!');
    const extra = snapshotExtra({ vmStateSizeLarge: 7, diskSize: 4096, icount: 9n, tail }, 40);
    const d = decodeOne(encodeSnapshotEntry({ id: '3', name: 'x', extra }))!;
    expect(d.entry.extraDataSize).toBe(40);
    expect(Buffer.from(d.entry.extraData.bytes).subarray(24).toString()).toBe('future fields!!!');
    expect(d.entry.extraData.bytes.length).toBe(40);
    expect(d.entry.extraData).toMatchObject({ vmStateSizeLarge: 7, diskSize: 4096, icount: 9n });
    // The ID and name come after all 40 bytes of extra data.
    expect([d.entry.uniqueId, d.entry.name]).toEqual(['3', 'x']);
    expect(d.next).toBe(88); // 40 + 40 + 1 + 1 = 82 -> 88
  });

  it('extra data of an odd size (12): only the whole fields it reaches', () => {
    const d = decodeOne(encodeSnapshotEntry({ extra: snapshotExtra({ vmStateSizeLarge: 99, diskSize: 1 }, 12) }))!;
    expect(d.entry.extraData.vmStateSizeLarge).toBe(99);
    expect(d.entry.extraData.diskSize).toBeUndefined();
  });

  it('pads each entry to 8 bytes, counted from the start of the table', () => {
    const first = encodeSnapshotEntry({ id: '1', name: 'abc', extra: snapshotExtra({}, 16) }); // 40+16+1+3 = 60 -> 64
    const second = encodeSnapshotEntry({ id: '22', name: 'second one', l1Size: 5, extra: snapshotExtra({ diskSize: 1 << 20 }, 16) }); // 68 -> 72
    const table = Buffer.concat([first, second]);
    const a = decodeOne(table, 0, 0)!;
    expect(a.next).toBe(64);
    const b = decodeOne(table, a.next, 1)!;
    expect(b.next).toBe(136);
    expect(b.entry).toMatchObject({ index: 1, entryOffset: TABLE + 64, uniqueId: '22', name: 'second one', l1Size: 5 });
    expect(b.entry.extraData.diskSize).toBe(1 << 20);
  });

  it('decodes UTF-8 names and empty IDs and names', () => {
    const d = decodeOne(encodeSnapshotEntry({ id: '', name: 'café ☕' }))!;
    expect(d.entry.uniqueId).toBe('');
    expect(d.entry.name).toBe('café ☕');
  });

  it('returns undefined when the bytes end before the entry does', () => {
    const full = encodeSnapshotEntry({ id: '1', name: 'a name', extra: snapshotExtra({}, 16) }); // 63 bytes of entry
    expect(decodeOne(full.subarray(0, 39))).toBeUndefined();
    expect(decodeOne(full.subarray(0, 40))).toBeUndefined();
    expect(decodeOne(full.subarray(0, 62))).toBeUndefined();
    // The entry itself ends at 63; its padding need not be there.
    expect(decodeOne(full.subarray(0, 63))!.entry.name).toBe('a name');
    // At an offset: 10 bytes of something before it.
    const shifted = Buffer.concat([Buffer.alloc(8), full]);
    expect(decodeOne(shifted.subarray(0, 8 + 62), 8)).toBeUndefined();
    expect(decodeOne(shifted, 8)!.entry.entryOffset).toBe(TABLE + 8);
  });

  it('accepts extra_data_size 1024 and refuses 1025 (QEMU QCOW_MAX_SNAPSHOT_EXTRA_DATA)', () => {
    expect(decodeOne(encodeSnapshotEntry({ extra: Buffer.alloc(1024) }))!.entry.extraDataSize).toBe(1024);
    // Refused even when the bytes are not there, so a reader never reads on for them.
    const header = encodeSnapshotEntry({ id: '', name: '', extraDataSize: 1025 });
    const err = refusal(Buffer.concat([Buffer.alloc(16), header]), 16, 2);
    expect(err.message).toBe(`${FILE}: snapshot 2 (entry at 0x50010): extra_data_size 1025 is too large (at most 1024)`);
    expect(refusal(encodeSnapshotEntry({ extraDataSize: 0xffff_ffff })).message).toContain('extra_data_size 4294967295 is too large');
  });

  it('refuses 64-bit offsets and sizes over 2^53, naming the field', () => {
    expect(refusal(encodeSnapshotEntry({ l1TableOffset: 2n ** 53n })).message).toBe(
      `${FILE}: snapshot 0 (entry at 0x50000): l1_table_offset 0x20000000000000 is too large`,
    );
    expect(refusal(encodeSnapshotEntry({ extra: snapshotExtra({ vmStateSizeLarge: 2n ** 64n - 1n }, 16) })).message).toBe(
      `${FILE}: snapshot 0 (entry at 0x50000): vm_state_size_large 0xffffffffffffffff is too large`,
    );
    expect(refusal(encodeSnapshotEntry({ extra: snapshotExtra({ diskSize: 2n ** 53n }, 16) })).message).toBe(
      `${FILE}: snapshot 0 (entry at 0x50000): disk_size 0x20000000000000 is too large`,
    );
  });

  it('accepts 64-bit fields of 2^53 - 1', () => {
    const max = 2 ** 53 - 1;
    const d = decodeOne(encodeSnapshotEntry({ l1TableOffset: max, extra: snapshotExtra({ vmStateSizeLarge: max, diskSize: max }, 16) }))!;
    expect([d.entry.l1TableOffset, d.entry.vmStateSize, d.entry.extraData.diskSize]).toEqual([max, max, max]);
  });

  it('keeps guest runtime (vm_clock_nsec) as a full 64-bit bigint', () => {
    const d = decodeOne(encodeSnapshotEntry({ vmClockNsec: 0xffff_ffff_ffff_ffffn }))!;
    expect(d.entry.guestRuntime).toBe(18_446_744_073_709_551_615n);
  });
});
