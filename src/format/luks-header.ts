import { QcowError, hex } from '../errors.js';
import { BigEndian } from './bytes.js';

/**
 * The LUKS1 header that a qcow2 image with crypt_method 2 carries inside itself, at the offset named by
 * its full-disk-encryption header extension (QEMU implements LUKS version 1 only). Checked as QEMU's
 * `qcrypto_block_luks_check_header` checks it, and bounded so that no field can size an allocation or a
 * key derivation without limit.
 */

export const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]); // "LUKS\xba\xbe"
export const LUKS_HEADER_BYTES = 592;
export const LUKS_SECTOR = 512;
export const LUKS_KEY_SLOTS = 8;
export const LUKS_STRIPES = 4000;
const SLOT_ENABLED = 0x00ac71f3;
const SLOT_DISABLED = 0x0000dead;

/**
 * The largest PBKDF2 iteration count we run. QEMU derives its counts from `iter-time` (2 s by default):
 * a few million on current CPUs (1.5 M SHA-256 here). 2^25 leaves more than 4x headroom for a faster
 * machine or a longer iter-time, and still bounds a hostile header to ~15 s of Node's PBKDF2 per slot
 * instead of hours for 2^32 - 1.
 */
export const MAX_PBKDF2_ITERATIONS = 2 ** 25;

export type LuksCipherName = 'aes' | 'cast5' | 'serpent' | 'twofish';
export type LuksCipherMode = 'ecb' | 'cbc' | 'xts' | 'ctr';
export type LuksIvGen = 'plain' | 'plain64' | 'essiv';
/** The hash names QEMU accepts (its QAPI names are also OpenSSL's, so Node's crypto takes them as they are). */
export const LUKS_HASHES = ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'] as const;
export type LuksHash = (typeof LUKS_HASHES)[number];

/** What decrypts the sectors: one spec for the key slots and the payload alike. */
export interface CipherSpec {
  cipher: LuksCipherName;
  mode: LuksCipherMode;
  ivgen: LuksIvGen;
  /** ESSIV only: the hash of the master key that keys the IV cipher. */
  ivHash?: LuksHash;
  /** Key length in bytes (XTS: both halves). */
  keyBytes: number;
}

export interface LuksKeySlot {
  index: number;
  active: boolean;
  iterations: number;
  salt: Buffer;
  /** Key material position in bytes from the start of the LUKS header (not of the qcow2 file). */
  keyOffset: number;
  stripes: number;
  /** keyBytes x stripes: the anti-forensic split key. */
  materialBytes: number;
}

export interface LuksHeader {
  version: 1;
  cipherName: string;
  cipherMode: string;
  hashSpec: LuksHash;
  spec: CipherSpec;
  /** In bytes from the header start (QEMU ignores it for qcow2 but checks the key slots against it). */
  payloadOffset: number;
  keyBytes: number;
  masterKeyDigest: Buffer;
  masterKeySalt: Buffer;
  masterKeyIterations: number;
  uuid: string;
  slots: LuksKeySlot[];
}

/** Cipher key lengths (one XTS half) each cipher has in QEMU. */
const KEY_LENGTHS: Record<LuksCipherName, readonly number[]> = {
  aes: [16, 24, 32],
  cast5: [16],
  serpent: [16, 24, 32],
  twofish: [16, 24, 32],
};

/**
 * Decodes and checks the header. `bytes` holds at least LUKS_HEADER_BYTES; `areaLength` is the length
 * of the encryption header area the qcow2 extension names: all key material must lie inside it.
 */
export function decodeLuksHeader(bytes: Uint8Array, file: string, areaLength: number): LuksHeader {
  const bad = (problem: string) => new QcowError('EBADIMAGE', file, `LUKS header: ${problem}`);
  if (bytes.length < LUKS_HEADER_BYTES) throw bad(`${bytes.length} bytes, shorter than a LUKS header (${LUKS_HEADER_BYTES})`);
  if (!Buffer.from(bytes.buffer, bytes.byteOffset, 6).equals(LUKS_MAGIC)) throw bad('no LUKS magic at the encryption header offset');
  const be = new BigEndian(bytes);
  const version = be.u16(6);
  if (version !== 1) throw new QcowError('EUNSUPPORTED', file, `LUKS version ${version} is not supported (QEMU reads LUKS version 1 only)`);
  const cipherName = cString(bytes, 8, 32);
  const cipherMode = cString(bytes, 40, 32);
  const hashName = cString(bytes, 72, 32);
  const payloadSectors = be.u32(104);
  const keyBytes = be.u32(108);
  const masterKeyDigest = Buffer.from(bytes.slice(112, 132));
  const masterKeySalt = Buffer.from(bytes.slice(132, 164));
  const masterKeyIterations = be.u32(164);
  const uuid = cString(bytes, 168, 40);

  const hashSpec = knownHash(hashName);
  if (!hashSpec) throw new QcowError('EUNSUPPORTED', file, `LUKS hash "${hashName}" is not one QEMU supports (${LUKS_HASHES.join(', ')})`);
  const spec = parseCipher(file, cipherName, cipherMode, keyBytes);
  checkIterations(file, 'the master key digest', masterKeyIterations);

  const payloadOffset = payloadSectors * LUKS_SECTOR;
  if (payloadOffset < LUKS_HEADER_BYTES) throw bad(`payload offset ${hex(payloadOffset)} lies inside the LUKS header (${LUKS_HEADER_BYTES} bytes)`);
  const headerSectors = Math.ceil(LUKS_HEADER_BYTES / LUKS_SECTOR);
  const slots: LuksKeySlot[] = [];
  for (let i = 0; i < LUKS_KEY_SLOTS; i++) {
    const at = 208 + i * 48;
    const state = be.u32(at);
    const iterations = be.u32(at + 4);
    const keyOffsetSectors = be.u32(at + 40);
    const stripes = be.u32(at + 44);
    const slot = `key slot ${i}`;
    if (state !== SLOT_ENABLED && state !== SLOT_DISABLED) throw bad(`${slot} state ${hex(state)} is corrupt (neither enabled nor disabled)`);
    // QEMU refuses any other stripe count, which also bounds the key material to 64 x 4000 bytes.
    if (stripes !== LUKS_STRIPES) throw bad(`${slot} has ${stripes} stripes, not ${LUKS_STRIPES}`);
    const active = state === SLOT_ENABLED;
    if (active) {
      if (iterations === 0) throw bad(`${slot} iteration count is zero`);
      checkIterations(file, slot, iterations);
    }
    const materialBytes = keyBytes * stripes;
    const keyOffset = keyOffsetSectors * LUKS_SECTOR;
    const materialEnd = keyOffset + Math.ceil(materialBytes / LUKS_SECTOR) * LUKS_SECTOR;
    if (keyOffsetSectors < headerSectors) throw bad(`${slot} key material at ${hex(keyOffset)} overlaps the LUKS header`);
    if (materialEnd > payloadOffset) throw bad(`${slot} key material at ${hex(keyOffset)}+${materialBytes} overlaps the payload at ${hex(payloadOffset)}`);
    if (active && materialEnd > areaLength) {
      throw bad(`${slot} key material at ${hex(keyOffset)}+${materialBytes} lies past the end of the encryption header area (${areaLength} bytes)`);
    }
    slots.push({ index: i, active, iterations, salt: Buffer.from(bytes.slice(at + 8, at + 40)), keyOffset, stripes, materialBytes });
  }
  for (const a of slots) {
    for (const b of slots) {
      if (b.index <= a.index) continue;
      const aEnd = a.keyOffset + a.materialBytes;
      const bEnd = b.keyOffset + b.materialBytes;
      if (a.keyOffset < bEnd && b.keyOffset < aEnd) throw bad(`key slots ${a.index} and ${b.index} overlap`);
    }
  }
  return { version: 1, cipherName, cipherMode, hashSpec, spec, payloadOffset, keyBytes, masterKeyDigest, masterKeySalt, masterKeyIterations, uuid, slots };
}

/** The cipher as QEMU names it, e.g. "aes-256-xts-plain64" or "aes-128-cbc-essiv:sha256". */
export function cipherLabel(spec: CipherSpec): string {
  const bits = (spec.mode === 'xts' ? spec.keyBytes / 2 : spec.keyBytes) * 8;
  return `${spec.cipher}-${bits}-${spec.mode}-${spec.ivgen}${spec.ivHash ? `:${spec.ivHash}` : ''}`;
}

function parseCipher(file: string, name: string, modeSpec: string, keyBytes: number): CipherSpec {
  const unsupported = (problem: string) => new QcowError('EUNSUPPORTED', file, `LUKS ${problem}`);
  if (!(name in KEY_LENGTHS)) throw unsupported(`cipher "${name}" is not one QEMU supports (aes, cast5, serpent, twofish)`);
  const cipher = name as LuksCipherName;
  const dash = modeSpec.indexOf('-');
  // QEMU writes "<mode>-<ivgen>[:<hash>]"; a bare mode has no IV generator (QEMU then uses none: ECB only).
  const mode = dash < 0 ? modeSpec : modeSpec.slice(0, dash);
  const ivPart = dash < 0 ? 'plain64' : modeSpec.slice(dash + 1);
  if (mode !== 'ecb' && mode !== 'cbc' && mode !== 'xts' && mode !== 'ctr') throw unsupported(`cipher mode "${modeSpec}" is not one QEMU supports (ecb, cbc, xts, ctr)`);
  if (dash < 0 && mode !== 'ecb') throw unsupported(`cipher mode "${modeSpec}" names no IV generator`);
  const colon = ivPart.indexOf(':');
  const ivgen = colon < 0 ? ivPart : ivPart.slice(0, colon);
  if (ivgen !== 'plain' && ivgen !== 'plain64' && ivgen !== 'essiv') throw unsupported(`IV generator "${ivgen}" is not one QEMU supports (plain, plain64, essiv)`);
  let ivHash: LuksHash | undefined;
  if (ivgen === 'essiv') {
    ivHash = knownHash(colon < 0 ? '' : ivPart.slice(colon + 1));
    if (!ivHash) throw unsupported(`ESSIV hash in "${modeSpec}" is missing or not one QEMU supports`);
  }
  const cipherKey = mode === 'xts' ? keyBytes / 2 : keyBytes;
  if (!KEY_LENGTHS[cipher].includes(cipherKey)) {
    throw new QcowError('EBADIMAGE', file, `LUKS header: a ${keyBytes}-byte key does not fit ${cipher} in ${mode} mode`);
  }
  if (mode === 'xts' && cipher === 'cast5') throw unsupported('cast5 in xts mode (XTS needs a 16-byte block)');
  return { cipher, mode, ivgen, ivHash, keyBytes };
}

function checkIterations(file: string, what: string, iterations: number): void {
  if (iterations > MAX_PBKDF2_ITERATIONS) {
    throw new QcowError('EBADIMAGE', file, `LUKS header: ${what} asks for ${iterations} PBKDF2 iterations, more than the ${MAX_PBKDF2_ITERATIONS} we run`);
  }
}

function knownHash(name: string): LuksHash | undefined {
  return (LUKS_HASHES as readonly string[]).includes(name) ? (name as LuksHash) : undefined;
}

function cString(bytes: Uint8Array, at: number, length: number): string {
  const field = bytes.subarray(at, at + length);
  const nul = field.indexOf(0);
  return Buffer.from(field.buffer, field.byteOffset, nul < 0 ? length : nul).toString('latin1');
}
