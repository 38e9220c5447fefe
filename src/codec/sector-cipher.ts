import type { Cipher, Decipher } from 'node:crypto';
import os from 'node:os';
import { QcowError } from '../errors.js';
import type { CipherSpec } from '../format/luks-header.js';
import { lazyCrypto } from '../lazy-builtins.js';

/** Both QEMU encryption methods work on 512-byte sectors, each with its own IV. */
export const SECTOR = 512;

/**
 * Decrypts runs of 512-byte sectors in place, as QEMU's qcrypto block layer does, for every cipher mode
 * QEMU creates with a cipher OpenSSL has.
 *
 * Why not one `createDecipheriv` per sector (the IV changes every sector)? That costs a native object per
 * 512 bytes and ran at a fraction of the read speed. Instead each mode is built on ECB, whose OpenSSL
 * context has no chaining state and so is created once and fed whole runs: CBC = ECB-decrypt then XOR
 * with the previous ciphertext block (the IV for a sector's first block); CTR = XOR with the ECB
 * encryption of the counter blocks; XTS = XOR tweak, ECB-decrypt, XOR tweak, with the tweaks from one
 * ECB call over the sector IVs and GF(2^128) doubling. A 512-byte sector is a whole number of blocks, so
 * XTS never steals ciphertext. The IVs follow QEMU's ivgens: plain (LE32 of the sector), plain64 (LE64)
 * and ESSIV (the plain64 IV encrypted under the hash of the key).
 */
export class SectorCipher {
  readonly blockBytes: number;
  private decryptEcb: Decipher;
  private encryptEcb: Cipher | undefined;
  private essiv: Cipher | undefined;
  private scratch = Buffer.alloc(0);
  private ivs = Buffer.alloc(0);
  private keys: Buffer[] = [];
  private closed = false;

  constructor(
    readonly spec: CipherSpec,
    key: Uint8Array,
    file: string,
  ) {
    if (key.length !== spec.keyBytes) throw new Error(`${spec.keyBytes}-byte cipher given a ${key.length}-byte key`);
    const ecb = ecbName(spec, file);
    this.blockBytes = spec.cipher === 'cast5' ? 8 : 16;
    const k = Buffer.from(key);
    this.keys.push(k);
    const half = spec.mode === 'xts' ? k.subarray(0, k.length / 2) : k;
    this.decryptEcb = make(() => lazyCrypto().createDecipheriv(ecb, half, null), spec, file);
    this.decryptEcb.setAutoPadding(false);
    if (spec.mode === 'xts') {
      this.encryptEcb = make(() => lazyCrypto().createCipheriv(ecb, k.subarray(k.length / 2), null), spec, file);
    } else if (spec.mode === 'ctr') {
      this.encryptEcb = make(() => lazyCrypto().createCipheriv(ecb, k, null), spec, file);
    }
    this.encryptEcb?.setAutoPadding(false);
    if (spec.ivgen === 'essiv' && spec.mode !== 'ecb') {
      // dm-crypt's ESSIV keys the IV cipher with the whole digest: aes-128 + sha256 gives AES-256 IVs.
      const essivKey = lazyCrypto().createHash(spec.ivHash!).update(k).digest();
      this.keys.push(essivKey);
      const essivName = `${spec.cipher === 'cast5' ? 'cast5' : `aes-${essivKey.length * 8}`}-ecb`;
      if (spec.cipher !== 'cast5' && ![16, 24, 32].includes(essivKey.length)) {
        throw new QcowError('EUNSUPPORTED', file, `ESSIV with ${spec.ivHash} gives a ${essivKey.length}-byte key, which ${spec.cipher} does not take`);
      }
      this.essiv = make(() => lazyCrypto().createCipheriv(essivName, essivKey, null), spec, file);
      this.essiv.setAutoPadding(false);
    }
  }

  /**
   * Decrypts `data` (a whole number of sectors) in place; its first sector has IV number `firstSector`
   * (QEMU: the host sector for LUKS, the guest sector for legacy AES).
   */
  decrypt(data: Uint8Array, firstSector: number): void {
    if (this.closed) throw new Error('sector cipher used after close');
    if (data.length % SECTOR !== 0) throw new Error(`decrypt of ${data.length} bytes: not whole sectors`);
    if (data.length === 0) return;
    switch (this.spec.mode) {
      case 'ecb':
        data.set(this.decryptEcb.update(data));
        return;
      case 'cbc':
        this.cbc(data, firstSector);
        return;
      case 'ctr':
        this.ctr(data, firstSector);
        return;
      case 'xts':
        this.xts(data, firstSector);
        return;
    }
  }

  /**
   * What a C decryptor needs to decrypt exactly as this cipher does (the native FUSE back-end's
   * native/src/sector-crypt.c): OpenSSL's names and copies of the keys, which the caller zeroes.
   */
  params(): SectorCipherParams {
    if (this.closed) throw new Error('sector cipher used after close');
    const { cipher, mode, ivgen } = this.spec;
    const bits = (mode === 'xts' ? this.spec.keyBytes / 2 : this.spec.keyBytes) * 8;
    const essivKey = this.essiv ? Buffer.from(this.keys[1]!) : undefined;
    return {
      cipher: cipher === 'cast5' ? `cast5-${mode}` : `aes-${bits}-${mode}`,
      ivgen: mode === 'ecb' ? 'none' : ivgen,
      key: Buffer.from(this.keys[0]!),
      ...(essivKey ? { essivCipher: `${cipher === 'cast5' ? 'cast5' : `aes-${essivKey.length * 8}`}-ecb`, essivKey } : {}),
    };
  }

  /** Zeroes the keys this cipher holds (OpenSSL's contexts free theirs when collected). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const k of this.keys) k.fill(0);
    this.scratch.fill(0);
    this.ivs.fill(0);
    this.keys = [];
  }

  /** One IV block per sector, as the ivgen makes it, into `this.ivs`. */
  private sectorIvs(sectors: number, firstSector: number): Buffer {
    const b = this.blockBytes;
    if (this.ivs.length < sectors * b) this.ivs = Buffer.alloc(Math.max(sectors * b, 64 * b));
    const ivs = this.ivs.subarray(0, sectors * b);
    ivs.fill(0);
    for (let s = 0; s < sectors; s++) {
      const n = firstSector + s;
      const at = s * b;
      if (this.spec.ivgen === 'plain') ivs.writeUInt32LE(n % 0x1_0000_0000, at);
      else {
        ivs.writeUInt32LE(n % 0x1_0000_0000, at);
        if (b >= 8) ivs.writeUInt32LE(Math.floor(n / 0x1_0000_0000), at + 4);
      }
    }
    if (this.essiv) ivs.set(this.essiv.update(ivs));
    return ivs;
  }

  private scratchFor(length: number): Buffer {
    if (this.scratch.length < length) this.scratch = Buffer.alloc(length);
    return this.scratch.subarray(0, length);
  }

  private cbc(data: Uint8Array, firstSector: number): void {
    const b = this.blockBytes;
    const sectors = data.length / SECTOR;
    const ivs = this.sectorIvs(sectors, firstSector);
    const plain = aligned(this.decryptEcb.update(data)); // D(C_i); the ciphertext in `data` is still needed
    // P_i = D(C_i) XOR C_(i-1): one pass over the run, then each sector's first block takes its IV
    // instead of the previous sector's last ciphertext block.
    xor(plain, b, data, 0, data.length - b);
    for (let s = 0; s < sectors; s++) {
      const at = s * SECTOR;
      for (let i = 0; i < b; i++) plain[at + i]! ^= ivs[s * b + i]! ^ (s > 0 ? data[at - b + i]! : 0);
    }
    data.set(plain);
  }

  private ctr(data: Uint8Array, firstSector: number): void {
    const b = this.blockBytes;
    const sectors = data.length / SECTOR;
    const ivs = this.sectorIvs(sectors, firstSector);
    const counters = this.scratchFor(data.length);
    const perSector = SECTOR / b;
    if (b === 16 && this.spec.ivgen !== 'essiv') {
      // plain/plain64 IVs end in 8 zero bytes, so counter j of a sector only sets the last byte to j.
      const c = new Int32Array(counters.buffer, counters.byteOffset, counters.length >>> 2);
      const iv = new Int32Array(ivs.buffer, ivs.byteOffset, ivs.length >>> 2);
      for (let s = 0, w = 0; s < sectors; s++) {
        const lo = iv[s * 4]!;
        const hi = iv[s * 4 + 1]!;
        for (let j = 0; j < perSector; j++, w += 4) {
          c[w] = lo;
          c[w + 1] = hi;
          c[w + 2] = 0;
          c[w + 3] = j << 24; // byte 15 on a little-endian view
        }
      }
    } else {
      for (let s = 0; s < sectors; s++) {
        for (let j = 0; j < perSector; j++) {
          const at = s * SECTOR + j * b;
          ivs.copy(counters, at, s * b, s * b + b);
          addBigEndian(counters, at, b, j);
        }
      }
    }
    xor(data, 0, this.encryptEcb!.update(counters), 0, data.length);
  }

  private xts(data: Uint8Array, firstSector: number): void {
    const sectors = data.length / SECTOR;
    const tweaks = this.scratchFor(data.length);
    const first = aligned(this.encryptEcb!.update(this.sectorIvs(sectors, firstSector)));
    // T_j = T_0 * alpha^j in GF(2^128), little-endian as in IEEE P1619, 32 blocks per sector
    const t = new Int32Array(tweaks.buffer, tweaks.byteOffset, tweaks.length >>> 2);
    const f = new Int32Array(first.buffer, first.byteOffset, first.length >>> 2);
    for (let s = 0, w = 0; s < sectors; s++) {
      let w0 = f[s * 4]!;
      let w1 = f[s * 4 + 1]!;
      let w2 = f[s * 4 + 2]!;
      let w3 = f[s * 4 + 3]!;
      for (let j = 0; j < SECTOR / 16; j++, w += 4) {
        t[w] = w0;
        t[w + 1] = w1;
        t[w + 2] = w2;
        t[w + 3] = w3;
        const carry = w3 >>> 31;
        w3 = (w3 << 1) | (w2 >>> 31);
        w2 = (w2 << 1) | (w1 >>> 31);
        w1 = (w1 << 1) | (w0 >>> 31);
        w0 = (w0 << 1) ^ (carry * 0x87);
      }
    }
    xor(data, 0, tweaks, 0, data.length);
    const plain = this.decryptEcb.update(data);
    xor(plain, 0, tweaks, 0, data.length);
    data.set(plain);
  }
}

/** A sector cipher in OpenSSL's words: `cipher` keyed with `key`, IVs from `ivgen` (essiv: the plain64 IV encrypted with `essivCipher` under `essivKey`). */
export interface SectorCipherParams {
  cipher: string;
  ivgen: 'none' | 'plain' | 'plain64' | 'essiv';
  key: Buffer;
  essivCipher?: string;
  essivKey?: Buffer;
}

/**
 * QEMU's legacy AES method (crypt_method 1, qcow2 and qcow v1): AES-128-CBC, plain64 IV of the guest
 * sector, key = the passphrase's first 16 bytes up to a NUL (QEMU's strlen), zero-padded. The format has
 * no key check: a wrong passphrase decrypts to garbage, as in QEMU.
 */
export function legacyAesCipher(passphrase: Uint8Array, file: string): SectorCipher {
  const key = Buffer.alloc(16);
  const nul = passphrase.indexOf(0);
  key.set(passphrase.subarray(0, Math.min(16, nul < 0 ? passphrase.length : nul)));
  const cipher = new SectorCipher({ cipher: 'aes', mode: 'cbc', ivgen: 'plain64', keyBytes: 16 }, key, file);
  key.fill(0);
  return cipher;
}

/** The OpenSSL ECB cipher a spec runs on, or a one-line refusal naming what is missing. */
function ecbName(spec: CipherSpec, file: string): string {
  const half = spec.mode === 'xts' ? spec.keyBytes / 2 : spec.keyBytes;
  switch (spec.cipher) {
    case 'aes':
      return `aes-${half * 8}-ecb`;
    case 'cast5':
      return 'cast5-ecb';
    case 'serpent':
    case 'twofish':
      throw new QcowError('EUNSUPPORTED', file, `LUKS cipher ${spec.cipher} cannot be decrypted: OpenSSL (Node's crypto) has no ${spec.cipher}`);
  }
}

function make<T>(create: () => T, spec: CipherSpec, file: string): T {
  try {
    return create();
  } catch (err) {
    if (spec.cipher === 'cast5') {
      throw new QcowError('EUNSUPPORTED', file, "LUKS cipher cast5 needs OpenSSL's legacy provider: run Node with --openssl-legacy-provider (e.g. NODE_OPTIONS=--openssl-legacy-provider)", { cause: err });
    }
    throw new QcowError('EUNSUPPORTED', file, `cipher ${spec.cipher} (${spec.keyBytes}-byte key, ${spec.mode}) is not available in this Node: ${(err as Error).message}`, { cause: err });
  }
}

/** The 32-bit views below assume a little-endian host (x86, ARM as Node runs them). */
if (os.endianness() !== 'LE') throw new Error('sector-cipher: big-endian hosts are not supported');

function aligned(b: Buffer): Buffer {
  if ((b.byteOffset & 7) === 0) return b;
  const copy = Buffer.alloc(b.length);
  copy.set(b);
  return copy;
}

/**
 * dst[d..d+n) ^= src[s..s+n), eight bytes at a time where both are 8-aligned (V8 compiles BigUint64Array
 * XOR to plain 64-bit ops: 3-5x faster than Int32Array here), else four, else one.
 */
function xor(dst: Uint8Array, d: number, src: Uint8Array, s: number, n: number): void {
  let i = 0;
  const da = dst.byteOffset + d;
  const sa = src.byteOffset + s;
  if ((da & 7) === 0 && (sa & 7) === 0) {
    const words = n >>> 3;
    const dw = new BigUint64Array(dst.buffer, da, words);
    const sw = new BigUint64Array(src.buffer, sa, words);
    for (let w = 0; w < words; w++) dw[w] ^= sw[w]!;
    i = words << 3;
  } else if ((da & 3) === 0 && (sa & 3) === 0) {
    const words = n >>> 2;
    const dw = new Int32Array(dst.buffer, da, words);
    const sw = new Int32Array(src.buffer, sa, words);
    for (let w = 0; w < words; w++) dw[w] ^= sw[w]!;
    i = words << 2;
  }
  for (; i < n; i++) dst[d + i] ^= src[s + i]!;
}

/** Adds `n` to the big-endian counter block at `at` (CTR increments the whole block). */
function addBigEndian(buf: Buffer, at: number, length: number, n: number): void {
  let carry = n;
  for (let i = at + length - 1; i >= at && carry > 0; i--) {
    const sum = buf[i]! + (carry & 0xff);
    buf[i] = sum & 0xff;
    carry = (carry >>> 8) + (sum >>> 8);
  }
}
