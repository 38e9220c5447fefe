import { CliError, EXIT } from './exit.js';

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/**
 * Parses a byte count: a whole number with an optional binary suffix K, M, G or T (case-insensitive,
 * optionally followed by `B` or `iB`): `65536`, `64K`, `32M`, `1GiB`. Throws a CliError (usage) otherwise.
 */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$/i.exec(text);
  if (!m) throw new CliError(`${what} "${text}" is not a size (a number of bytes, or with a K, M, G or T suffix)`, EXIT.USAGE);
  const value = Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(value)) throw new CliError(`${what} "${text}" is too large`, EXIT.USAGE);
  return value;
}

/** A size the way QEMU prints one (size_to_str): three significant digits, binary units, `0 B`. */
export function formatSize(bytes: number): string {
  const suffixes = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];
  // QEMU moves to the next unit at 1000 of the current one (so no "1010 KiB").
  let i = 0;
  while (i < suffixes.length - 1 && bytes / 1024 ** i >= 1000) i++;
  const value = bytes / 1024 ** i;
  return `${Number(value.toPrecision(3))} ${suffixes[i]}B`;
}
