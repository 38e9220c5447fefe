/**
 * Every problem the library reports is a QcowError whose message starts with the file it concerns,
 * so a command can print `err.message` as its one line.
 *
 * - `EBADIMAGE`: the image (or a file it names) is refused at open: nothing is served.
 * - `EUNSUPPORTED`: a valid image that uses something we do not read yet (encryption, qcow v1).
 * - `EIO`: a bad region found while reading; only that read fails.
 */
export type QcowErrorCode = 'EBADIMAGE' | 'EUNSUPPORTED' | 'EIO' | 'ENOENT' | 'EACCES' | 'EINVAL';

export class QcowError extends Error {
  readonly code: QcowErrorCode;
  readonly file: string;

  constructor(code: QcowErrorCode, file: string, problem: string, options?: { cause?: unknown }) {
    super(`${file}: ${problem}`, options);
    this.name = 'QcowError';
    this.code = code;
    this.file = file;
  }
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
