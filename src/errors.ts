/**
 * Every problem the library reports is a QcowError whose message starts with the file it concerns,
 * so a command can print `err.message` as its one line.
 *
 * - `EBADIMAGE`: the image (or a file it names) is refused at open: nothing is served.
 * - `EUNSUPPORTED`: a valid image that uses something we do not read (a cipher OpenSSL lacks, LUKS2).
 * - `EIO`: a bad region found while reading; only that read fails.
 * - `ENOKEY`: the image is encrypted and no passphrase was given for it.
 * - `EBUSY`: a running QEMU holds the image for writing (see OpenOptions `forceShare`).
 */
export type QcowErrorCode = 'EBADIMAGE' | 'EUNSUPPORTED' | 'EIO' | 'ENOENT' | 'EACCES' | 'EINVAL' | 'ENOKEY' | 'EBUSY';

export class QcowError extends Error {
  readonly code: QcowErrorCode;
  readonly file: string;

  constructor(code: QcowErrorCode, file: string, problem: string, options?: { cause?: unknown }) {
    super(oneLine(`${file}: ${problem}`), options);
    this.name = 'QcowError';
    this.code = code;
    this.file = file;
  }
}

/**
 * The text with control characters escaped (`\n`, `\x1b`...): names taken from an image (backing
 * and data file names, snapshot names, feature names) may hold any byte, and a message must stay one
 * line in a terminal and in the daemon's log.
 */
export function oneLine(message: string): string {
  return message.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029]/g, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\r') return '\\r';
    if (c === '\t') return '\\t';
    const code = c.charCodeAt(0);
    return code > 0xff ? `\\u${code.toString(16).padStart(4, '0')}` : `\\x${code.toString(16).padStart(2, '0')}`;
  });
}

export function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

/** Refuses a 64-bit field that a JS number cannot hold exactly. */
export function safeNumber(file: string, field: string, value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new QcowError('EBADIMAGE', file, `${field} ${hex(value)} is too large (over 2^53)`);
  }
  return Number(value);
}
