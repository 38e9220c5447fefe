import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { RawDisk } from '../src/disk/raw-disk.js';
import { HostFile } from '../src/io/host-file.js';
import { QcowError } from '../src/errors.js';
import { pattern, tempDir } from './support/build-image.js';

const tmp = tempDir();
const files: HostFile[] = [];
afterAll(() => {
  files.forEach((f) => f.close());
  tmp.cleanup();
});

function rawDisk(bytes: Buffer, depth = 1): RawDisk {
  const path = tmp.file(`raw${files.length}.img`);
  fs.writeFileSync(path, bytes);
  const file = HostFile.open(path);
  files.push(file);
  return new RawDisk(file, depth);
}

describe('RawDisk (a raw backing file)', () => {
  it('counts whole 512-byte sectors, as QEMU does: the tail of the last one reads as zeros', () => {
    const bytes = pattern(1000, 1);
    const disk = rawDisk(bytes);
    expect(disk.size).toBe(1024);
    const into = Buffer.alloc(2000, 0xcc);
    expect(disk.readSync(into, 0)).toBe(1024);
    expect(into.subarray(0, 1000).equals(bytes)).toBe(true);
    expect(into.subarray(1000, 1024).equals(Buffer.alloc(24))).toBe(true);
    expect(into.subarray(1024).equals(Buffer.alloc(976, 0xcc))).toBe(true);
  });

  it('keeps an exact multiple of 512 as it is, and an empty file empty', () => {
    expect(rawDisk(pattern(4096, 2)).size).toBe(4096);
    const empty = rawDisk(Buffer.alloc(0));
    expect(empty.size).toBe(0);
    expect(empty.readSync(Buffer.alloc(10), 0)).toBe(0);
    expect(empty.extents(0, 100)).toEqual([]);
  });

  it('reads at any offset, short only at the end', () => {
    const bytes = pattern(5000, 3); // 5120-byte disk
    const disk = rawDisk(bytes);
    const into = Buffer.alloc(300);
    expect(disk.readSync(into, 4900)).toBe(220);
    expect(into.subarray(0, 100).equals(bytes.subarray(4900))).toBe(true);
    expect(into.subarray(100, 220).equals(Buffer.alloc(120))).toBe(true);
    expect(disk.readSync(into, 5120)).toBe(0);
    expect(disk.readSync(into, 9999)).toBe(0);
    expect(() => disk.readSync(into, -1)).toThrow(QcowError);
  });

  it('reports one data extent at its own offset, clipped to the disk', () => {
    const disk = rawDisk(pattern(5000, 4), 2);
    expect(disk.extents(100, 1000)).toEqual([{ start: 100, length: 1000, kind: 'data', depth: 2, host: 100 }]);
    expect(disk.extents(5000, 1000)).toEqual([{ start: 5000, length: 120, kind: 'data', depth: 2, host: 5000 }]);
    expect(disk.extents(5120, 10)).toEqual([]);
  });

  it('reads through the promise API', async () => {
    const bytes = pattern(512, 5);
    const disk = rawDisk(bytes);
    const into = Buffer.alloc(512);
    await expect(disk.read(into, 0)).resolves.toBe(512);
    expect(into.equals(bytes)).toBe(true);
    await expect(disk.read(into, -3)).rejects.toBeInstanceOf(QcowError);
  });
});
