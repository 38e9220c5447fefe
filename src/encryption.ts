import { tryUnlockLuks, wrongPassphrase } from './codec/luks.js';
import { SectorCipher, legacyAesCipher } from './codec/sector-cipher.js';
import { QcowError, hex } from './errors.js';
import { LUKS_HEADER_BYTES, type LuksHeader, cipherLabel, decodeLuksHeader } from './format/luks-header.js';

/**
 * Keys for the encrypted images of a chain. Each LUKS image uses the first passphrase that opens one of
 * its key slots; each legacy AES image uses the first one given (its format has no key check). A
 * passphrase is the exact bytes of a key file (a string is taken as UTF-8), as QEMU's `secret,file=`.
 */
export interface KeyOptions {
  passphrases?: readonly (Uint8Array | string)[];
  /**
   * Asked when none of `passphrases` opens an image (LUKS) or none was given (AES): return a passphrase,
   * or undefined to give up. Called again after a passphrase that opens no key slot (`attempt` counts).
   */
  passphrase?: (request: PassphraseRequest) => Uint8Array | string | undefined;
}

export interface PassphraseRequest {
  path: string;
  format: 'aes' | 'luks';
  attempt: number;
}

/** What an image's encryption is, for info.json and qcow-info: never a key or a passphrase. */
export interface EncryptionInfo {
  format: 'aes' | 'luks';
  /** Whether the image can be read: false when no passphrase was given. */
  unlocked: boolean;
  /** LUKS only, named as `qemu-img info` names them. */
  cipherAlg?: string;
  cipherMode?: string;
  ivgenAlg?: string;
  ivgenHashAlg?: string;
  hashAlg?: string;
  /** The cipher as one string, e.g. aes-256-xts-plain64. */
  cipher?: string;
  payloadOffset?: number;
  masterKeyIterations?: number;
  uuid?: string;
  /** Where the LUKS header lies in the qcow2 file. */
  headerOffset?: number;
  headerLength?: number;
  slots?: { index: number; active: boolean; iterations?: number; keyOffset: number; stripes: number }[];
}

/** What reads the image's bytes before they are decrypted (the qcow2 file, for the LUKS header). */
interface HeaderSource {
  readonly path: string;
  readonly size: number;
  readExact(position: number, length: number, what: string): Buffer;
}

/**
 * How a data run of one image is decrypted: its cipher, and which sector numbers its IVs come from —
 * the host sector in the data file for LUKS, the guest sector for legacy AES (QEMU's
 * `crypt_physical_offset`).
 */
export class DataDecryption {
  constructor(
    readonly cipher: SectorCipher,
    readonly ivFrom: 'host' | 'guest',
  ) {}

  /** Decrypts whole sectors in place; `host` and `guest` are where the first one lies. */
  decrypt(sectors: Uint8Array, host: number, guest: number): void {
    this.cipher.decrypt(sectors, (this.ivFrom === 'host' ? host : guest) / 512);
  }

  close(): void {
    this.cipher.close();
  }
}

/** An encrypted image's state after open: described always, decryptable when a key opened it. */
export interface ImageEncryption {
  info: EncryptionInfo;
  decryption?: DataDecryption;
}

/** Reads and checks the LUKS header a qcow2 image points at (no key needed). */
export function readLuksHeader(file: HeaderSource, area: { offset: number; length: number } | undefined): LuksHeader {
  if (!area) throw new QcowError('EBADIMAGE', file.path, 'LUKS encryption without the encryption header extension');
  if (area.length < LUKS_HEADER_BYTES || area.offset + area.length > file.size) {
    throw new QcowError('EBADIMAGE', file.path, `LUKS header area at ${hex(area.offset)}+${area.length} does not fit in the file (size ${file.size})`);
  }
  return decodeLuksHeader(file.readExact(area.offset, LUKS_HEADER_BYTES, 'LUKS header'), file.path, area.length);
}

/**
 * Opens an encrypted image's decryption with the keys given; with none given (no passphrases, no
 * callback) the image is described but left locked. A LUKS image that no passphrase opens is refused.
 */
export function openEncryption(
  file: HeaderSource,
  format: 'aes' | 'luks',
  area: { offset: number; length: number } | undefined,
  keys: KeyOptions,
): ImageEncryption {
  const given = (keys.passphrases ?? []).map(bytesOf);
  if (format === 'aes') {
    const info: EncryptionInfo = { format, unlocked: false };
    let pass: Uint8Array | undefined = given[0];
    if (!pass && keys.passphrase) pass = optionalBytes(keys.passphrase({ path: file.path, format, attempt: 1 }));
    if (!pass) return { info };
    return { info: { ...info, unlocked: true }, decryption: new DataDecryption(legacyAesCipher(pass, file.path), 'guest') };
  }
  const header = readLuksHeader(file, area);
  const info = luksInfo(header, area!);
  const read = (offset: number, length: number) => file.readExact(area!.offset + offset, length, 'LUKS key material');
  const tryKey = (pass: Uint8Array): ImageEncryption | undefined => {
    const masterKey = tryUnlockLuks(header, pass, read, file.path);
    if (!masterKey) return undefined;
    try {
      return { info: { ...info, unlocked: true }, decryption: new DataDecryption(new SectorCipher(header.spec, masterKey, file.path), 'host') };
    } finally {
      masterKey.fill(0);
    }
  };
  for (const pass of given) {
    const opened = tryKey(pass);
    if (opened) return opened;
  }
  if (keys.passphrase) {
    for (let attempt = 1; ; attempt++) {
      const raw = keys.passphrase({ path: file.path, format, attempt });
      if (raw === undefined) break;
      const pass = bytesOf(raw);
      const opened = tryKey(pass);
      if (typeof raw === 'string') pass.fill(0); // our copy; the caller's own bytes stay theirs
      if (opened) return opened;
    }
  } else if (given.length === 0) return { info };
  throw wrongPassphrase(file.path, given.length > 1);
}

function luksInfo(h: LuksHeader, area: { offset: number; length: number }): EncryptionInfo {
  return {
    format: 'luks',
    unlocked: false,
    cipherAlg: `${h.spec.cipher}-${(h.spec.mode === 'xts' ? h.keyBytes / 2 : h.keyBytes) * 8}`,
    cipherMode: h.spec.mode,
    ivgenAlg: h.spec.ivgen,
    ivgenHashAlg: h.spec.ivHash,
    hashAlg: h.hashSpec,
    cipher: cipherLabel(h.spec),
    payloadOffset: h.payloadOffset,
    masterKeyIterations: h.masterKeyIterations,
    uuid: h.uuid,
    headerOffset: area.offset,
    headerLength: area.length,
    slots: h.slots.map((s) => ({ index: s.index, active: s.active, iterations: s.active ? s.iterations : undefined, keyOffset: s.keyOffset, stripes: s.stripes })),
  };
}

function bytesOf(p: Uint8Array | string): Uint8Array {
  return typeof p === 'string' ? Buffer.from(p, 'utf8') : p;
}

function optionalBytes(p: Uint8Array | string | undefined): Uint8Array | undefined {
  return p === undefined ? undefined : bytesOf(p);
}
