/**
 * Hostile and damaged tables: every problem is reported, nothing is thrown, work stays bounded. The GPT
 * cases corrupt QEMU's raw output of sgdisk/sfdisk-made disks (fixtures/partitions).
 */
import fs from 'node:fs';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { type ByteSource, MAX_LOGICAL_PARTITIONS, readPartitionTable } from '../src/format/partition-table.js';
import { loadPartitionManifest, partitionFixture, partitionFixturesReady } from './support/partition-fixtures.js';
import { toolsAvailable } from './support/tools.js';

function sourceOf(disk: Buffer, counter?: { reads: number; bytes: number }): ByteSource {
  return (position, length) => {
    if (counter) {
      counter.reads++;
      counter.bytes += length;
    }
    return disk.subarray(Math.min(position, disk.length), Math.min(position + length, disk.length));
  };
}

function mbrEntry(sector: Buffer, slot: number, type: number, start: number, sectors: number, status = 0): void {
  const at = 446 + slot * 16;
  sector[at] = status;
  sector[at + 4] = type;
  sector.writeUInt32LE(start, at + 8);
  sector.writeUInt32LE(sectors, at + 12);
  sector[510] = 0x55;
  sector[511] = 0xaa;
}

/** An EBR at `sector` of `disk`: a logical at +rel, and a link to extended start + next (0 = none). */
function ebr(disk: Buffer, sector: number, logicalRel: number, logicalSize: number, nextRel: number, nextSize = 8): void {
  const s = disk.subarray(sector * 512, sector * 512 + 512);
  mbrEntry(s, 0, 0x83, logicalRel, logicalSize);
  if (nextRel) mbrEntry(s, 1, 0x05, nextRel, nextSize);
}

describe('MBR', () => {
  it('reads primaries by slot and logicals from 5 in chain order', () => {
    const disk = Buffer.alloc(8 << 20);
    mbrEntry(disk, 1, 0x83, 2048, 2048, 0x80);
    mbrEntry(disk, 2, 0x05, 4096, 8192);
    ebr(disk, 4096, 2048, 1024, 4096);
    ebr(disk, 8192, 16, 100, 0);
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.problems).toEqual([]);
    expect(t.partitions.map((p) => [p.number, p.kind, p.start / 512, p.size / 512, p.bootable])).toEqual([
      [2, 'primary', 2048, 2048, true],
      [5, 'logical', 6144, 1024, false],
      [6, 'logical', 8208, 100, false],
    ]);
  });

  it('reports an EBR loop and stops', () => {
    const disk = Buffer.alloc(4 << 20);
    mbrEntry(disk, 0, 0x0f, 2048, 4096);
    ebr(disk, 2048, 64, 64, 1024); // -> 3072
    ebr(disk, 3072, 64, 64, 0); // -> back to 2048 below
    mbrEntry(disk.subarray(3072 * 512, 3073 * 512), 1, 0x05, 0, 8);
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.partitions.map((p) => p.number)).toEqual([5, 6]);
    expect(t.problems.join('\n')).toMatch(/EBR loop.*sector 2048/);
  });

  it('an EBR pointing at itself is a loop, not a hang', () => {
    const disk = Buffer.alloc(2 << 20);
    mbrEntry(disk, 0, 0x05, 1024, 2048);
    ebr(disk, 1024, 16, 16, 0);
    mbrEntry(disk.subarray(1024 * 512, 1025 * 512), 1, 0x05, 0, 8);
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.partitions.map((p) => p.number)).toEqual([5]);
    expect(t.problems.join('\n')).toMatch(/EBR loop/);
  });

  it('follows at most 256 EBRs of a long chain', () => {
    const n = 2000;
    const disk = Buffer.alloc((n * 2 + 64) * 512);
    mbrEntry(disk, 0, 0x05, 32, n * 2 + 16);
    for (let i = 0; i < n; i++) ebr(disk, 32 + i * 2, 1, 1, (i + 1) * 2);
    const counter = { reads: 0, bytes: 0 };
    const t = readPartitionTable(sourceOf(disk, counter), disk.length)!;
    expect(t.partitions.length).toBeLessThanOrEqual(MAX_LOGICAL_PARTITIONS);
    expect(counter.reads).toBeLessThan(MAX_LOGICAL_PARTITIONS + 16);
    expect(t.problems.join('\n')).toMatch(/more than 256 EBRs/);
  });

  it('2^32-1 sectors at sector 2^32-1: listed with a problem, never allocated', () => {
    const disk = Buffer.alloc(1 << 20);
    mbrEntry(disk, 0, 0x83, 0xffffffff, 0xffffffff);
    mbrEntry(disk, 1, 0x83, 2048, 0xffffffff);
    mbrEntry(disk, 2, 0x05, 0xfffffff0, 0xffffffff);
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.partitions.map((p) => [p.number, p.start, p.size])).toEqual([
      [1, 0xffffffff * 512, 0xffffffff * 512],
      [2, 2048 * 512, 0xffffffff * 512],
    ]);
    const text = t.problems.join('\n');
    expect(text).toMatch(/partition 1 starts beyond the end of the disk/);
    expect(text).toMatch(/partition 2 ends beyond the end of the disk: cut to 0 bytes|partition 2 starts beyond/);
    expect(text).toMatch(/EBR at sector 4294967280 lies beyond the end of the disk/);
  });

  it('reports overlapping partitions', () => {
    const disk = Buffer.alloc(4 << 20);
    mbrEntry(disk, 0, 0x83, 2048, 4096);
    mbrEntry(disk, 1, 0x07, 4000, 100);
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.problems).toEqual(['partitions 1 and 2 overlap']);
  });

  it('a FAT boot sector ending in 55 AA is no partition table', () => {
    const disk = Buffer.alloc(1 << 20);
    mbrEntry(disk, 0, 0x83, 2048, 100, 0x29);
    expect(readPartitionTable(sourceOf(disk), disk.length)).toBeUndefined();
    expect(readPartitionTable(sourceOf(Buffer.alloc(1 << 20)), 1 << 20)).toBeUndefined();
    expect(readPartitionTable(sourceOf(Buffer.alloc(100)), 100)).toBeUndefined();
  });

  it('an unreadable EBR ends the chain with a problem', () => {
    const disk = Buffer.alloc(4 << 20);
    mbrEntry(disk, 0, 0x05, 2048, 4096);
    const source: ByteSource = (p, l) => (p === 0 ? disk.subarray(0, l) : undefined);
    const t = readPartitionTable(source, disk.length)!;
    expect(t.partitions).toEqual([]);
    expect(t.problems).toEqual(['EBR at sector 2048 cannot be read']);
  });
});

const ready = toolsAvailable('sfdisk', 'sgdisk', 'jq', 'losetup', 'mkfs.ext4') && partitionFixturesReady();
const rawOf = (name: string) => fs.readFileSync(partitionFixture(loadPartitionManifest().views.find((v) => v.name === name && v.view === 'active')!.raw));

function fixHeaderCrc(disk: Buffer, at: number): void {
  const size = disk.readUInt32LE(at + 12);
  disk.writeUInt32LE(0, at + 16);
  disk.writeUInt32LE(crc32(disk.subarray(at, at + size)), at + 16);
}

describe.skipIf(!ready)('GPT', () => {
  const backupAt = (disk: Buffer, ss: number) => disk.length - ss;

  it('a bad primary header CRC: the backup copy is used and said so', () => {
    const disk = rawOf('gpt512');
    const good = readPartitionTable(sourceOf(disk), disk.length)!;
    disk[512 + 16] ^= 0xff;
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.gptCopy).toBe('backup');
    expect(t.partitions).toEqual(good.partitions);
    expect(t.problems).toEqual([expect.stringMatching(/^primary GPT header at LBA 1: header CRC mismatch .*used the backup copy at LBA 65535$/)]);
  });

  it('a bad entry array CRC: the backup copy is used', () => {
    const disk = rawOf('gpt512');
    disk[1024 + 56] ^= 1; // a byte of entry 1's name
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.gptCopy).toBe('backup');
    expect(t.partitions[0].name).toBe('EFI System');
    expect(t.problems.join('\n')).toMatch(/entry array CRC mismatch/);
  });

  it('a bad backup is reported while the primary is used', () => {
    const disk = rawOf('gpt512');
    disk[backupAt(disk, 512) + 16] ^= 1;
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.gptCopy).toBe('primary');
    expect(t.partitions.length).toBe(4);
    expect(t.problems).toEqual([expect.stringMatching(/^backup GPT header at LBA 65535: header CRC mismatch/)]);
  });

  it('both copies bad: no partitions, both problems, no throw', () => {
    const disk = rawOf('gpt512');
    disk[512 + 16] ^= 1;
    disk[backupAt(disk, 512) + 16] ^= 1;
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.scheme).toBe('gpt');
    expect(t.partitions).toEqual([]);
    expect(t.problems.join('\n')).toMatch(/primary GPT header.*CRC[\s\S]*backup GPT header.*CRC[\s\S]*no valid GPT header/);
  });

  it('a huge entry count (with a valid header CRC) is refused before reading, the backup used', () => {
    const disk = rawOf('gpt512');
    disk.writeUInt32LE(0xffffffff, 512 + 80);
    fixHeaderCrc(disk, 512);
    const counter = { reads: 0, bytes: 0 };
    const t = readPartitionTable(sourceOf(disk, counter), disk.length)!;
    expect(t.gptCopy).toBe('backup');
    expect(t.problems.join('\n')).toMatch(/4294967295 entries of 128 bytes: over the limit/);
    expect(counter.bytes).toBeLessThan(64 * 1024);
  });

  it('a 4096-byte-sector GPT whose primary header is gone is found by its backup', () => {
    const disk = rawOf('gpt4k');
    disk.fill(0, 4096, 8192);
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    expect(t.sectorSize).toBe(4096);
    expect(t.gptCopy).toBe('backup');
    expect(t.partitions.map((p) => [p.number, p.name, p.start])).toEqual([
      [1, 'EFI System', 256 * 4096],
      [2, 'data 4k', 1280 * 4096],
    ]);
  });

  it('entries beyond the disk and overlapping entries are reported', () => {
    const disk = rawOf('gpt512');
    const entries = 1024;
    disk.writeBigUInt64LE(5000n, entries + 128 * 1 + 32); // entry 2 starts inside entry 1 (2048..10239)
    disk.writeBigUInt64LE(BigInt(2 ** 40), entries + 128 * 2 + 40); // entry 3 ends far past the disk
    disk.writeUInt32LE(crc32(disk.subarray(entries, entries + 128 * 128)), 512 + 88);
    fixHeaderCrc(disk, 512);
    disk.fill(0, disk.length - 512); // no backup: the primary alone
    const t = readPartitionTable(sourceOf(disk), disk.length)!;
    const text = t.problems.join('\n');
    expect(text).toMatch(/partitions 1 and 2 overlap/);
    expect(text).toMatch(/GPT partition 3: LBAs .* outside the usable LBAs/);
    expect(text).toMatch(/partition 3 ends beyond the end of the disk: cut to/);
    expect(text).toMatch(/backup GPT header at LBA 65535: no "EFI PART" signature/);
  });
});

describe.skipIf(!ready)('any mutation of a table', () => {
  it('is read without throwing, with bounded reads', async () => {
    const fc = await import('fast-check');
    const bases = ['mbr', 'gpt512', 'gpt4k'].map((n) => {
      const raw = rawOf(n);
      // The first 64 KiB and the last 64 KiB hold every table of these disks.
      return { head: Buffer.from(raw.subarray(0, 65536)), tail: Buffer.from(raw.subarray(raw.length - 65536)), size: raw.length };
    });
    const interesting = [0, 1, 0x7f, 0x80, 0xff, 0x05, 0x0f, 0x85, 0xee];
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 }),
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 65535 }), fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(...interesting))), { minLength: 1, maxLength: 40 }),
        (which, edits) => {
          const base = bases[which]!;
          const head = Buffer.from(base.head);
          const tail = Buffer.from(base.tail);
          for (const [inTail, at, value] of edits) (inTail ? tail : head)[at] = value;
          let bytes = 0;
          const source: ByteSource = (position, length) => {
            bytes += length;
            const out = Buffer.alloc(Math.max(0, Math.min(length, base.size - position)));
            for (let i = 0; i < out.length; i++) {
              const p = position + i;
              if (p < 65536) out[i] = head[p]!;
              else if (p >= base.size - 65536) out[i] = tail[p - (base.size - 65536)]!;
            }
            return out;
          };
          const t = readPartitionTable(source, base.size);
          if (t) {
            for (const p of t.partitions) expect(Number.isSafeInteger(p.start) && Number.isSafeInteger(p.size)).toBe(true);
            expect(t.problems.length).toBeLessThanOrEqual(65);
          }
          expect(bytes).toBeLessThan(16 * 1024 * 1024);
        },
      ),
      { numRuns: 300, seed: 20261202 },
    );
  });
});
