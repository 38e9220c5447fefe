import fs from 'node:fs';
import type { KeyOptions, PassphraseRequest } from '../encryption.js';
import { CliError, EXIT } from '../exit.js';
import { lazyChildProcess, lazyTty } from '../lazy-builtins.js';

/**
 * Passphrases for encrypted images, as the commands take them: `-k FILE` / `--key-file FILE` (the file's
 * exact bytes, like QEMU's `secret,file=` and cryptsetup's key files; `-` is standard input), repeatable;
 * with none given and a terminal on standard input, a prompt that does not echo. Never from argv or the
 * environment, so a passphrase never shows in `ps`, a shell history or a log.
 */
export const KEY_FILE_HELP =
  'passphrase of an encrypted image: the exact bytes of FILE (- = standard input); repeat for a backing chain (each LUKS image takes the first that opens it, each AES image the first given); without it, a prompt when standard input is a terminal';

/** Commander's collector for a repeatable -k. */
export function collectKeyFile(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Reads every key file named (each at most once from standard input). */
export function readKeyFiles(files: readonly string[]): Buffer[] {
  if (files.filter((f) => f === '-').length > 1) throw new CliError('-k - (standard input) can be given only once', EXIT.USAGE);
  return files.map((f) => {
    try {
      const bytes = f === '-' ? readAllStdin() : fs.readFileSync(f);
      if (bytes.length === 0) throw new CliError(`${f === '-' ? 'standard input' : f}: key file is empty`, EXIT.USAGE);
      return bytes;
    } catch (err) {
      if (err instanceof CliError) throw err;
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.code === 'EISDIR' ? 'is a directory' : e.message;
      throw new CliError(`${f}: cannot read key file: ${why}`, EXIT.USAGE);
    }
  });
}

/**
 * The KeyOptions a command opens images with: the key files' bytes, and a no-echo prompt when none
 * were given and standard input is a terminal (three tries per LUKS image).
 */
export function keyOptions(files: readonly string[] | undefined, how: { prompt: boolean } = { prompt: true }): KeyOptions {
  const passphrases = readKeyFiles(files ?? []);
  if (passphrases.length > 0 || !how.prompt || !lazyTty().isatty(0)) return { passphrases };
  return { passphrases, passphrase: (req) => (req.attempt <= 3 ? promptPassphrase(req) : undefined) };
}

/** Zeroes the passphrases a command read, once the images are open. */
export function forgetKeys(keys: KeyOptions): void {
  for (const p of keys.passphrases ?? []) if (typeof p !== 'string') p.fill(0);
}

function readAllStdin(): Buffer {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(0, buf, 0, buf.length, null);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      if ((err as NodeJS.ErrnoException).code === 'EOF') break;
      throw err;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  buf.fill(0);
  const all = Buffer.concat(chunks);
  for (const c of chunks) c.fill(0);
  return all;
}

/** Asks on the terminal with echo off; the line's bytes without its newline. */
function promptPassphrase(req: PassphraseRequest): Buffer | undefined {
  const label = req.attempt > 1 ? 'No key slot opened; passphrase' : 'Passphrase';
  const stty = (arg: string) => lazyChildProcess().execFileSync('stty', [arg], { stdio: ['inherit', 'ignore', 'ignore'] });
  // Echo off before the prompt shows: the terminal echoes what is typed (or pasted) when it arrives.
  stty('-echo');
  fs.writeSync(2, `${label} for ${req.path} (${req.format === 'luks' ? 'LUKS' : 'AES'}): `);
  const line: number[] = [];
  try {
    const one = Buffer.alloc(1);
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(0, one, 0, 1, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') continue;
        throw err;
      }
      if (n === 0 || one[0] === 0x0a) break;
      line.push(one[0]!);
    }
    one.fill(0);
  } finally {
    stty('echo');
    fs.writeSync(2, '\n');
  }
  if (line.length === 0) return undefined;
  const bytes = Buffer.from(line);
  line.fill(0);
  return bytes;
}

/** qcow-mount and qcow-export serve data: an encrypted image no passphrase opened is refused, naming -k. */
export function refuseLocked(image: { locked: readonly string[]; encryption?: { format: string } }): void {
  if (image.locked.length === 0) return;
  const first = image.locked[0]!;
  const more = image.locked.length > 1 ? ` (and ${image.locked.length - 1} more image${image.locked.length > 2 ? 's' : ''} of its backing chain)` : '';
  throw new CliError(`${first}: is encrypted${more}; give its passphrase with -k FILE (the file's exact bytes; - = standard input)`, EXIT.IMAGE);
}

/** The -k text every command's --help shows after its options. */
export const KEY_HELP_AFTER = `
Encrypted images (qcow2 LUKS, legacy AES in qcow2 and qcow v1):
  -k FILE gives a passphrase as the exact bytes of FILE (no newline is stripped, as QEMU's
  --object secret,file= and cryptsetup --key-file read it); -k - reads standard input. Repeat -k for a
  backing chain: each LUKS image takes the first passphrase that opens one of its key slots, each AES
  image the first one given. Without -k and with a terminal on standard input, you are asked (no echo).
  A passphrase is never taken on the command line, never logged, never in info.json.
  Legacy AES has no key check: a wrong passphrase gives garbage, exactly as QEMU does.
  LUKS ciphers: aes-128/192/256 in xts, cbc (plain, plain64, essiv), ecb, ctr; cast5 only when Node runs
  with --openssl-legacy-provider; serpent and twofish are refused (OpenSSL has neither).`;
