import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { unlockLuks } from '../src/codec/luks.js';
import { SectorCipher, legacyAesCipher } from '../src/codec/sector-cipher.js';
import { decodeLuksHeader } from '../src/format/luks-header.js';
import { cast5InThisNode, cryptFixtures, cryptFixturesReady, cryptPath, keyBytes, qcow2DataClusters, qcow2LuksArea } from './support/crypt-fixtures.js';
import { repoRoot } from './support/fixtures.js';
import { prng } from './support/prng.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img') && cryptFixturesReady();

/**
 * Decrypts every data cluster of a single-layer LUKS image with our codecs and compares it with QEMU's
 * plaintext at the cluster's guest offset (the L1/L2 walk is a minimal one in test support). Whole
 * clusters, then seeded random sector runs that start and end mid-cluster (IV = host sector).
 */
function checkLuksImage(name: string, passphrase: Buffer): void {
  const fx = cryptFixtures().find((f) => f.name === name)!;
  const image = fs.readFileSync(cryptPath(fx.image));
  const oracle = fs.readFileSync(cryptPath(fx.oracle));
  const dataFile = fs.existsSync(path.join(path.dirname(cryptPath(fx.image)), 'disk.data'))
    ? fs.readFileSync(path.join(path.dirname(cryptPath(fx.image)), 'disk.data'))
    : image;
  const area = qcow2LuksArea(image);
  const header = decodeLuksHeader(image.subarray(area.offset, area.offset + 592), fx.image, area.length);
  const key = unlockLuks(header, passphrase, (off, len) => Buffer.from(image.subarray(area.offset + off, area.offset + off + len)), fx.image);
  const cipher = new SectorCipher(header.spec, key, fx.image);
  const { clusterSize, clusters } = qcow2DataClusters(image);
  expect(clusters.length).toBeGreaterThan(0);
  for (const { guest, host } of clusters) {
    const data = Buffer.from(dataFile.subarray(host, host + clusterSize));
    cipher.decrypt(data, host / 512);
    expect(data.equals(oracle.subarray(guest, guest + clusterSize)), `${name}: cluster at guest ${guest}`).toBe(true);
  }
  const random = prng(9);
  for (let i = 0; i < 50; i++) {
    const { guest, host } = clusters[Math.floor(random() * clusters.length)]!;
    const sectors = clusterSize / 512;
    const first = Math.floor(random() * sectors);
    const count = 1 + Math.floor(random() * (sectors - first));
    const data = Buffer.from(dataFile.subarray(host + first * 512, host + (first + count) * 512));
    cipher.decrypt(data, host / 512 + first);
    const at = guest + first * 512;
    expect(data.equals(oracle.subarray(at, at + count * 512)), `${name}: sectors ${first}+${count} of guest ${guest}`).toBe(true);
  }
  cipher.close();
  key.fill(0);
}

describe.runIf(ready)('LUKS and legacy AES codecs against QEMU', () => {
  const luks = ready ? cryptFixtures().filter((f) => f.name.startsWith('luks-') && !/serpent|twofish|cast5|snapshots/.test(f.name)) : [];

  it.each(luks.map((f) => f.name))('%s decrypts to QEMU bytes', (name) => {
    checkLuksImage(name, keyBytes('key-a'));
  });

  it('reads the header as qemu-img info describes it', () => {
    const fx = cryptFixtures().find((f) => f.name === 'luks-aes128-cbc-essiv')!;
    const image = fs.readFileSync(cryptPath(fx.image));
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', cryptPath(fx.image)], { encoding: 'utf8' })) as {
      'format-specific': { data: { encrypt: { 'cipher-alg': string; 'cipher-mode': string; 'ivgen-alg': string; 'ivgen-hash-alg': string; 'hash-alg': string; 'payload-offset': number; 'master-key-iters': number; slots: { active: boolean; iters?: number; 'key-offset': number }[] } } };
    };
    const want = info['format-specific'].data.encrypt;
    const area = qcow2LuksArea(image);
    const h = decodeLuksHeader(image.subarray(area.offset, area.offset + 592), fx.image, area.length);
    expect(`${h.spec.cipher}-${h.spec.keyBytes * 8}`).toBe(want['cipher-alg']);
    expect(h.spec.mode).toBe(want['cipher-mode']);
    expect(h.spec.ivgen).toBe(want['ivgen-alg']);
    expect(h.spec.ivHash).toBe(want['ivgen-hash-alg']);
    expect(h.hashSpec).toBe(want['hash-alg']);
    expect(h.payloadOffset).toBe(want['payload-offset']);
    expect(h.masterKeyIterations).toBe(want['master-key-iters']);
    expect(h.slots.map((s) => s.active)).toEqual(want.slots.map((s) => s.active));
    expect(h.slots.map((s) => s.keyOffset)).toEqual(want.slots.map((s) => s['key-offset']));
    expect(h.slots[0]!.iterations).toBe(want.slots[0]!.iters);
  });

  it('refuses a wrong passphrase in one line naming the file', () => {
    const fx = cryptFixtures().find((f) => f.name === 'luks-aes256-xts')!;
    const image = fs.readFileSync(cryptPath(fx.image));
    const area = qcow2LuksArea(image);
    const h = decodeLuksHeader(image.subarray(area.offset, area.offset + 592), fx.image, area.length);
    expect(() => unlockLuks(h, keyBytes('key-wrong'), (o, l) => Buffer.from(image.subarray(area.offset + o, area.offset + o + l)), 'disk.qcow2')).toThrow(
      /^no key slot of disk\.qcow2 opens with this passphrase$/,
    );
  });

  it.each(['luks-serpent-xts', 'luks-twofish-cbc'])('%s is refused by the cipher name', (name) => {
    const fx = cryptFixtures().find((f) => f.name === name)!;
    const image = fs.readFileSync(cryptPath(fx.image));
    const area = qcow2LuksArea(image);
    const h = decodeLuksHeader(image.subarray(area.offset, area.offset + 592), fx.image, area.length);
    const cipher = name.includes('serpent') ? 'serpent' : 'twofish';
    expect(() => unlockLuks(h, keyBytes('key-a'), (o, l) => Buffer.from(image.subarray(area.offset + o, area.offset + o + l)), 'disk.qcow2')).toThrow(
      new RegExp(`LUKS cipher ${cipher} cannot be decrypted: OpenSSL .* has no ${cipher}`),
    );
  });

  it.runIf(cast5InThisNode)('luks-cast5-cbc decrypts to QEMU bytes (legacy provider loaded)', () => {
    checkLuksImage('luks-cast5-cbc', keyBytes('key-a'));
  });

  it.runIf(!cast5InThisNode)('cast5 without the legacy provider: refused, naming the flag; with it: QEMU bytes', () => {
    const fx = cryptFixtures().find((f) => f.name === 'luks-cast5-cbc')!;
    const image = fs.readFileSync(cryptPath(fx.image));
    const area = qcow2LuksArea(image);
    const h = decodeLuksHeader(image.subarray(area.offset, area.offset + 592), fx.image, area.length);
    expect(() => unlockLuks(h, keyBytes('key-a'), (o, l) => Buffer.from(image.subarray(area.offset + o, area.offset + o + l)), 'disk.qcow2')).toThrow(/--openssl-legacy-provider/);
    // The same check in a Node that loads the legacy provider.
    execFileSync(process.execPath, ['--openssl-legacy-provider', path.join(repoRoot, 'node_modules/vitest/vitest.mjs'), 'run', 'test/codec-luks.test.ts', '-t', 'legacy provider loaded'], {
      cwd: repoRoot,
      stdio: 'pipe',
      env: { ...process.env, NODE_OPTIONS: '--openssl-legacy-provider' },
    });
  }, 120_000);

  it('legacy AES: key = first 16 bytes, IV = guest sector', () => {
    const aes = legacyAesCipher(keyBytes('key-long'), 'disk.qcow2');
    const fx = cryptFixtures().find((f) => f.name === 'aes-qcow2')!;
    const image = fs.readFileSync(cryptPath(fx.image));
    const oracle = fs.readFileSync(cryptPath(fx.oracle));
    const { clusterSize, clusters } = qcow2DataClusters(image);
    for (const { guest, host } of clusters) {
      const data = Buffer.from(image.subarray(host, host + clusterSize));
      aes.decrypt(data, guest / 512);
      expect(data.equals(oracle.subarray(guest, guest + clusterSize)), `guest ${guest}`).toBe(true);
    }
    aes.close();
  });
});

describe('sector cipher', () => {
  it('refuses data that is not whole sectors', () => {
    const c = legacyAesCipher(Buffer.from('pw'), 'x');
    expect(() => c.decrypt(Buffer.alloc(100), 0)).toThrow(/not whole sectors/);
  });

  it('XTS over ECB equals OpenSSL XTS, sector by sector, at sector numbers past 2^32', () => {
    const key = crypto.randomBytes(64);
    const c = new SectorCipher({ cipher: 'aes', mode: 'xts', ivgen: 'plain64', keyBytes: 64 }, key, 'x');
    const data = crypto.randomBytes(512 * 8);
    const first = 2 ** 33 + 5;
    const mine = Buffer.from(data);
    c.decrypt(mine, first);
    for (let s = 0; s < 8; s++) {
      const iv = Buffer.alloc(16);
      iv.writeBigUInt64LE(BigInt(first + s));
      const d = crypto.createDecipheriv('aes-256-xts', key, iv);
      const want = Buffer.concat([d.update(data.subarray(s * 512, s * 512 + 512)), d.final()]);
      expect(mine.subarray(s * 512, s * 512 + 512).equals(want)).toBe(true);
    }
  });

  it.each(['cbc', 'ctr'] as const)('%s over ECB equals OpenSSL %s with essiv and plain IVs', (mode) => {
    for (const ivgen of ['plain', 'plain64', 'essiv'] as const) {
      const key = crypto.randomBytes(16);
      const c = new SectorCipher({ cipher: 'aes', mode, ivgen, ivHash: ivgen === 'essiv' ? 'sha256' : undefined, keyBytes: 16 }, key, 'x');
      const data = crypto.randomBytes(512 * 4);
      const mine = Buffer.from(data);
      const first = 0xfffffffe; // plain wraps at 2^32
      c.decrypt(mine, first);
      for (let s = 0; s < 4; s++) {
        const n = first + s;
        let iv = Buffer.alloc(16);
        if (ivgen === 'plain') iv.writeUInt32LE(n % 2 ** 32);
        else iv.writeBigUInt64LE(BigInt(n));
        if (ivgen === 'essiv') {
          const e = crypto.createCipheriv('aes-256-ecb', crypto.createHash('sha256').update(key).digest(), null);
          e.setAutoPadding(false);
          iv = e.update(iv);
        }
        const d = crypto.createDecipheriv(`aes-128-${mode}`, key, iv);
        d.setAutoPadding(false);
        const want = Buffer.concat([d.update(data.subarray(s * 512, s * 512 + 512)), d.final()]);
        expect(mine.subarray(s * 512, s * 512 + 512).equals(want), `${mode}-${ivgen} sector ${s}`).toBe(true);
      }
    }
  });

  it('zeroes its keys on close and refuses to run after', () => {
    const key = crypto.randomBytes(32);
    const c = new SectorCipher({ cipher: 'aes', mode: 'cbc', ivgen: 'plain64', keyBytes: 32 }, key, 'x');
    const held = (c as unknown as { keys: Buffer[] }).keys[0]!;
    c.close();
    expect(held.every((b) => b === 0)).toBe(true);
    expect(() => c.decrypt(Buffer.alloc(512), 0)).toThrow(/after close/);
  });
});
