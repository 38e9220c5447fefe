import { QcowError, oneLine } from '../errors.js';
import { LUKS_SECTOR, type LuksHash, type LuksHeader } from '../format/luks-header.js';
import { SectorCipher } from './sector-cipher.js';
import { lazyCrypto } from '../lazy-builtins.js';

/** Reads `length` bytes at `offset` from the start of the LUKS header (the encryption header area). */
export type LuksAreaReader = (offset: number, length: number) => Buffer;

/**
 * Opens a LUKS1 header with a passphrase as QEMU does (`qcrypto_block_luks_find_key`): each active key
 * slot in order derives a key with PBKDF2, decrypts its anti-forensic key material (sector numbers
 * restart at 0), merges the stripes, and checks the result against the master key digest. Returns the
 * master key (the caller zeroes it on close), or throws "no key slot of FILE opens with this passphrase".
 * PBKDF2 runs synchronously: once per open, never on the read path.
 */
export function unlockLuks(header: LuksHeader, passphrase: Uint8Array, readArea: LuksAreaReader, file: string): Buffer {
  const masterKey = tryUnlockLuks(header, passphrase, readArea, file);
  if (!masterKey) throw wrongPassphrase(file);
  return masterKey;
}

/** "no key slot of FILE opens with this passphrase": the sentence names the file, so no "FILE: " prefix. */
export function wrongPassphrase(file: string, several = false): QcowError {
  const err = new QcowError('EACCES', file, 'wrong passphrase');
  err.message = oneLine(`no key slot of ${file} opens with ${several ? 'any of these passphrases' : 'this passphrase'}`);
  return err;
}

/** As unlockLuks, but undefined when no slot opens (so a chain can try its next passphrase). */
export function tryUnlockLuks(header: LuksHeader, passphrase: Uint8Array, readArea: LuksAreaReader, file: string): Buffer | undefined {
  const { keyBytes, hashSpec } = header;
  for (const slot of header.slots) {
    if (!slot.active) continue;
    const slotKey = lazyCrypto().pbkdf2Sync(passphrase, slot.salt, slot.iterations, keyBytes, hashSpec);
    const split = readArea(slot.keyOffset, Math.ceil(slot.materialBytes / LUKS_SECTOR) * LUKS_SECTOR);
    const cipher = new SectorCipher(header.spec, slotKey, file);
    try {
      cipher.decrypt(split, 0);
    } finally {
      cipher.close();
      slotKey.fill(0);
    }
    const candidate = afMerge(hashSpec, split.subarray(0, slot.materialBytes), keyBytes, slot.stripes);
    split.fill(0);
    const digest = lazyCrypto().pbkdf2Sync(candidate, header.masterKeySalt, header.masterKeyIterations, header.masterKeyDigest.length, hashSpec);
    if (lazyCrypto().timingSafeEqual(digest, header.masterKeyDigest)) return candidate;
    candidate.fill(0);
  }
  return undefined;
}

/**
 * The anti-forensic merge (`qcrypto_afsplit_decode`): d = 0; d = diffuse(d XOR s_i) for every stripe
 * but the last; key = d XOR s_last.
 */
export function afMerge(hash: LuksHash, split: Uint8Array, blockBytes: number, stripes: number): Buffer {
  const d = Buffer.alloc(blockBytes);
  for (let i = 0; i < stripes - 1; i++) {
    const stripe = split.subarray(i * blockBytes, (i + 1) * blockBytes);
    for (let j = 0; j < blockBytes; j++) d[j]! ^= stripe[j]!;
    diffuse(hash, d);
  }
  const last = split.subarray((stripes - 1) * blockBytes, stripes * blockBytes);
  for (let j = 0; j < blockBytes; j++) d[j]! ^= last[j]!;
  return d;
}

const DIGEST_BYTES: Partial<Record<LuksHash, number>> = {};

/** Each digest-sized piece j of `block` becomes HASH(BE32(j) ‖ piece), cut to the piece's length. */
function diffuse(hash: LuksHash, block: Buffer): void {
  const digestBytes = (DIGEST_BYTES[hash] ??= lazyCrypto().createHash(hash).digest().length);
  const index = Buffer.alloc(4);
  for (let j = 0, at = 0; at < block.length; j++, at += digestBytes) {
    const piece = block.subarray(at, Math.min(block.length, at + digestBytes));
    index.writeUInt32BE(j);
    const out = lazyCrypto().createHash(hash).update(index).update(piece).digest();
    piece.set(out.subarray(0, piece.length));
  }
}
