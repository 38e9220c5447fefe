import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { legacyAesCipher } from '../src/codec/sector-cipher.js';
import { decodeQcow1Header, isQcow1 } from '../src/format/qcow1-header.js';
import { Qcow1Map, emptyQcow1Run } from '../src/translate/qcow1-map.js';
import { cryptFixtures, cryptFixturesReady, cryptPath, keyBytes } from './support/crypt-fixtures.js';
import { prng } from './support/prng.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img') && cryptFixturesReady();

function memoryFile(path: string, bytes: Buffer) {
  return {
    path,
    size: bytes.length,
    readExact(position: number, length: number): Buffer {
      if (position + length > bytes.length) throw new Error('past end');
      return Buffer.from(bytes.subarray(position, position + length));
    },
  };
}

/** Reads [position, +length) of a single-layer v1 image through the map (unallocated = zeros). */
function readThroughMap(image: Buffer, map: Qcow1Map, position: number, length: number, key?: Buffer): Buffer {
  const out = Buffer.alloc(length);
  const run = emptyQcow1Run();
  const aes = key ? legacyAesCipher(key, 'x') : undefined;
  const { clusterSize } = map.header;
  let pos = position;
  while (pos < position + length) {
    map.mapRun(pos, position + length - pos, run);
    expect(run.length).toBeGreaterThan(0);
    const dst = pos - position;
    if (run.kind === 'data') {
      // Decrypt whole sectors around the run, IV = guest sector.
      const s0 = Math.floor(pos / 512) * 512;
      const s1 = Math.ceil((pos + run.length) / 512) * 512;
      const buf = Buffer.from(image.subarray(run.host - (pos - s0), run.host - (pos - s0) + (s1 - s0)));
      aes?.decrypt(buf, s0 / 512);
      buf.copy(out, dst, pos - s0, pos - s0 + run.length);
    } else if (run.kind === 'compressed') {
      const cluster = zlib.inflateRawSync(image.subarray(run.compressedOffset, run.compressedOffset + run.compressedBytes), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
      expect(cluster.length).toBe(clusterSize);
      cluster.copy(out, dst, run.inCluster, run.inCluster + run.length);
    }
    pos += run.length;
  }
  aes?.close();
  return out;
}

describe.runIf(ready)('qcow v1 header and mapping against QEMU', () => {
  const single = ready ? cryptFixtures().filter((f) => f.format === 'qcow' && f.name.startsWith('v1-')) : [];

  it.each(single.map((f) => f.name))('%s: header as qemu-img info, whole view and random reads as QEMU', (name) => {
    const fx = single.find((f) => f.name === name)!;
    const image = fs.readFileSync(cryptPath(fx.image));
    const oracle = fs.readFileSync(cryptPath(fx.oracle));
    expect(isQcow1(image)).toBe(true);
    const header = decodeQcow1Header(image, fx.image, image.length);
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', cryptPath(fx.image)], { encoding: 'utf8' })) as { 'virtual-size': number; 'cluster-size': number; encrypted?: boolean };
    expect(header.size).toBe(info['virtual-size']);
    expect(header.size).toBe(oracle.length);
    expect(header.clusterSize).toBe(info['cluster-size']);
    expect(header.cryptMethod === 'aes').toBe(info.encrypted === true);
    const map = Qcow1Map.load(header, memoryFile(fx.image, image));
    const key = fx.keys ? keyBytes(fx.keys) : undefined;
    expect(readThroughMap(image, map, 0, header.size, key).equals(oracle)).toBe(true);
    const random = prng(1);
    for (let i = 0; i < 200; i++) {
      const pos = Math.floor(random() * header.size);
      const len = Math.min(header.size - pos, 1 + Math.floor(random() * 300_000));
      expect(readThroughMap(image, map, pos, len, key).equals(oracle.subarray(pos, pos + len)), `read ${pos}+${len}`).toBe(true);
    }
  });

  it('has compressed runs in the compressed image, with sizes in bytes', () => {
    const fx = single.find((f) => f.name === 'v1-compressed')!;
    const image = fs.readFileSync(cryptPath(fx.image));
    const header = decodeQcow1Header(image, fx.image, image.length);
    const map = Qcow1Map.load(header, memoryFile(fx.image, image));
    const run = emptyQcow1Run();
    const sizes: number[] = [];
    for (let pos = 0; pos < header.size; pos += run.length) {
      map.mapRun(pos, header.size - pos, run);
      if (run.kind === 'compressed') sizes.push(run.compressedBytes);
    }
    expect(sizes.length).toBeGreaterThan(0);
    expect(sizes.some((n) => n % 512 !== 0)).toBe(true); // bytes, not whole sectors as in qcow2
  });
});

describe('qcow v1 header bounds', () => {
  function header(patch: (b: Buffer) => void): Buffer {
    const b = Buffer.alloc(48 + 8);
    b.writeUInt32BE(0x514649fb, 0);
    b.writeUInt32BE(1, 4);
    b.writeBigUInt64BE(4096n * 512n, 24);
    b[32] = 12;
    b[33] = 9;
    b.writeBigUInt64BE(48n, 40);
    patch(b);
    return b;
  }
  const decode = (b: Buffer) => () => decodeQcow1Header(b, 'v1.qcow', b.length);

  it('accepts a minimal header', () => {
    const h = decodeQcow1Header(header(() => {}), 'v1.qcow', 56);
    expect(h).toMatchObject({ clusterSize: 4096, l2Size: 512, l1Size: 1, size: 2097152 });
  });
  it.each([5, 14, 255])('refuses l2_bits %i', (bits) => {
    expect(decode(header((b) => (b[33] = bits)))).toThrow(/^v1\.qcow: l2_bits \d+ is out of range/);
  });
  it.each([8, 17])('refuses cluster_bits %i', (bits) => {
    expect(decode(header((b) => (b[32] = bits)))).toThrow(/^v1\.qcow: cluster_bits \d+ is out of range/);
  });
  it('refuses a size that overflows (no allocation sized by it)', () => {
    expect(decode(header((b) => b.writeBigUInt64BE(0xffffffffffffff00n, 24)))).toThrow(/^v1\.qcow: image size 0x[0-9a-f]+ is too large/);
    expect(decode(header((b) => b.writeBigUInt64BE(2n ** 52n, 24)))).toThrow(/^v1\.qcow: L1 table at 0x30 \(\d+ entries .*\) extends past end of file/);
  });
  it('refuses a size under 2 bytes and an unknown encryption method', () => {
    expect(decode(header((b) => b.writeBigUInt64BE(1n, 24)))).toThrow(/too small/);
    expect(decode(header((b) => b.writeUInt32BE(2, 36)))).toThrow(/invalid encryption method 2/);
  });
  it('refuses a backing file name that is too long or past the end', () => {
    expect(decode(header((b) => { b.writeBigUInt64BE(48n, 8); b.writeUInt32BE(1024, 16); }))).toThrow(/too long/);
    expect(decode(header((b) => { b.writeBigUInt64BE(50n, 8); b.writeUInt32BE(10, 16); }))).toThrow(/backing file name at 0x32 extends past end of file/);
  });
  it('rounds the size down to 512 as QEMU does', () => {
    expect(decodeQcow1Header(header((b) => b.writeBigUInt64BE(4194204n, 24)), 'v1.qcow', 56 + 8 * 8).size).toBe(4193792);
  });
});
