import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fixturesDir } from './fixtures.js';

/** Where scripts/make-crypt-fixtures.sh puts its QEMU-made encrypted and qcow v1 images and oracles. */
export const cryptDir = path.join(fixturesDir, 'crypt');

export interface CryptFixture {
  name: string;
  format: 'qcow2' | 'qcow';
  /** Relative to cryptDir. */
  image: string;
  /** Key file names (in cryptDir), the top image's first; '' when nothing is encrypted. */
  keys: string;
  description: string;
  oracle: string;
  snapshots: { name: string; oracle: string }[];
}

/** Whether this Node loaded OpenSSL's legacy provider (--openssl-legacy-provider): cast5 needs it. */
export const cast5InThisNode = (() => {
  try {
    crypto.createDecipheriv('cast5-ecb', Buffer.alloc(16), null);
    return true;
  } catch {
    return false;
  }
})();

export function cryptFixturesReady(): boolean {
  return fs.existsSync(path.join(cryptDir, 'manifest.json'));
}

export function cryptFixtures(): CryptFixture[] {
  return (JSON.parse(fs.readFileSync(path.join(cryptDir, 'manifest.json'), 'utf8')) as { images: CryptFixture[] }).images;
}

export function cryptPath(relative: string): string {
  return path.join(cryptDir, relative);
}

export function keyBytes(name: string): Buffer {
  return fs.readFileSync(path.join(cryptDir, name));
}

/**
 * The data clusters of a single-layer qcow2 image with standard L2 entries and no compression, found
 * by a minimal L1/L2 walk: just enough to feed QEMU's ciphertext to the codecs before they are wired
 * into the reader (the readers' own tests go through openImage).
 */
export function qcow2DataClusters(image: Buffer): { clusterSize: number; clusters: { guest: number; host: number }[] } {
  const clusterBits = image.readUInt32BE(20);
  const clusterSize = 2 ** clusterBits;
  const l1Size = image.readUInt32BE(36);
  const l1Offset = Number(image.readBigUInt64BE(40));
  const perL2 = clusterSize / 8;
  const mask = (1n << 56n) - 512n;
  const clusters: { guest: number; host: number }[] = [];
  for (let i = 0; i < l1Size; i++) {
    const l2 = Number(image.readBigUInt64BE(l1Offset + i * 8) & mask);
    if (l2 === 0) continue;
    for (let j = 0; j < perL2; j++) {
      const e = image.readBigUInt64BE(l2 + j * 8);
      if (e & (1n << 62n)) throw new Error('compressed cluster in a codec fixture');
      if (e & 1n) continue; // zero cluster
      const host = Number(e & mask);
      if (host !== 0) clusters.push({ guest: (i * perL2 + j) * clusterSize, host });
    }
  }
  return { clusterSize, clusters };
}

/** Reads the qcow2 full-disk-encryption header extension (0x0537be77): the LUKS header's place. */
export function qcow2LuksArea(image: Buffer): { offset: number; length: number } {
  let at = image.readUInt32BE(4) >= 3 ? image.readUInt32BE(100) : 72;
  for (;;) {
    const type = image.readUInt32BE(at);
    const length = image.readUInt32BE(at + 4);
    if (type === 0) throw new Error('no encryption header extension');
    if (type === 0x0537be77) return { offset: Number(image.readBigUInt64BE(at + 8)), length: Number(image.readBigUInt64BE(at + 16)) };
    at += 8 + Math.ceil(length / 8) * 8;
  }
}

/**
 * A LUKS aes-192-xts image made by QEMU in `dir` (1 MiB, random data at unaligned places), with QEMU's raw
 * output as the oracle. aes-192-xts is the one aes-192 mode QEMU 7.2 creates: in the other modes its
 * 24-byte key x 4000 stripes of key material is not a whole number of sectors and qemu-img aborts. Not in
 * make-crypt-fixtures.sh (its stamp would make everyone rebuild); built where the test runs instead.
 */
export function makeAes192Xts(dir: string): { image: string; key: string; oracle: string } {
  const key = path.join(dir, 'key-192');
  const src = path.join(dir, 'src-192.raw');
  const image = path.join(dir, 'aes192-xts.qcow2');
  const oracle = path.join(dir, 'aes192-xts.raw');
  fs.writeFileSync(key, 'aes 192 passphrase');
  const data = Buffer.alloc(1024 * 1024);
  for (let i = 0, x = 192; i < data.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = i < 1000 || (i > 70_001 && i < 400_003) || i > 900_000 ? x >>> 24 : 0;
  }
  fs.writeFileSync(src, data);
  const secret = ['--object', `secret,id=s0,file=${key}`];
  // QEMU's PBKDF2 timing fails "Unable to get accurate CPU usage" about one try in three here.
  for (let i = 0; ; i++) {
    try {
      execFileSync('qemu-img', ['convert', ...secret, '-O', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.cipher-alg=aes-192,encrypt.cipher-mode=xts', src, image], { stdio: 'pipe' });
      break;
    } catch (err) {
      if (i >= 40) throw err;
    }
  }
  execFileSync('qemu-img', ['convert', ...secret, '--image-opts', `driver=qcow2,file.filename=${image},encrypt.key-secret=s0`, '-O', 'raw', oracle], { stdio: 'pipe' });
  return { image, key, oracle };
}
