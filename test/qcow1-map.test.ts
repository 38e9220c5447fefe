import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { SharedCaches } from '../src/caches.js';
import { decodeQcow1Header, isQcow1 } from '../src/format/qcow1-header.js';
import { HostFile } from '../src/io/host-file.js';
import { Qcow1Map, loadQcow1L1 } from '../src/translate/qcow1-map.js';
import { Run, RunKind } from '../src/translate/qcow2-map.js';
import { cryptFixtures, cryptFixturesReady, cryptPath } from './support/crypt-fixtures.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img') && cryptFixturesReady();

function openMap(relative: string): { map: Qcow1Map; l1: Float64Array; file: HostFile; size: number } {
  const file = HostFile.open(cryptPath(relative));
  const header = decodeQcow1Header(file.readExact(0, 48, 'header'), file.path, file.size);
  return { map: new Qcow1Map(header, file, new SharedCaches()), l1: loadQcow1L1(header, file), file, size: header.size };
}

describe.runIf(ready)('qcow v1 header and mapping against QEMU', () => {
  const single = ready ? cryptFixtures().filter((f) => f.format === 'qcow' && f.name.startsWith('v1-')) : [];

  it.each(single.map((f) => f.name))('%s: header as qemu-img info shows it', (name) => {
    const fx = single.find((f) => f.name === name)!;
    const image = fs.readFileSync(cryptPath(fx.image));
    expect(isQcow1(image)).toBe(true);
    const header = decodeQcow1Header(image, fx.image, image.length);
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', cryptPath(fx.image)], { encoding: 'utf8' })) as { 'virtual-size': number; 'cluster-size': number; encrypted?: boolean };
    expect(header.size).toBe(info['virtual-size']);
    expect(header.size).toBe(fs.statSync(cryptPath(fx.oracle)).size);
    expect(header.clusterSize).toBe(info['cluster-size']);
    expect(header.cryptMethod === 'aes').toBe(info.encrypted === true);
  });

  it('maps compressed clusters with their size in bytes, and inflates them to QEMU bytes', () => {
    const fx = single.find((f) => f.name === 'v1-compressed')!;
    const { map, l1, file, size } = openMap(fx.image);
    const oracle = fs.readFileSync(cryptPath(fx.oracle));
    const run = new Run();
    const sizes: number[] = [];
    for (let pos = 0; pos < size; pos += run.length) {
      map.mapRun(l1, 0, pos, size - pos, run);
      if (run.kind !== RunKind.Compressed) continue;
      sizes.push(run.hostLength);
      const cluster = zlib.inflateRawSync(file.readExact(run.host, run.hostLength, 'c'));
      expect(cluster.subarray(run.inCluster, run.inCluster + run.length).equals(oracle.subarray(pos, pos + run.length))).toBe(true);
    }
    file.close();
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
