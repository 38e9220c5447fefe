/**
 * The command-line options for images read over HTTP(S), shared by the three commands: `--header`
 * (repeatable) and `--ca-file`. Header values are secrets: no message quotes them.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { CliError, EXIT, errorMessage } from '../exit.js';
import type { RemoteOpenOptions } from '../image.js';
import { parseHeader } from '../io/remote-url.js';

export interface RemoteCliOptions {
  header?: string[];
  caFile?: string;
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

export function addRemoteOptions(program: Command): Command {
  return program
    .option('--header <NAME: VALUE>', "for an image given by http(s) URL: send this header to its server with every request (repeatable), e.g. 'Authorization: Bearer TOKEN'; never logged, never sent to another server", collect)
    .option('--ca-file <FILE>', 'for an https URL: also trust the certificates in this PEM file (a self-signed server); NODE_EXTRA_CA_CERTS works too');
}

/** The library's remote options from the command line (a usage error for a malformed header or CA file). */
export function remoteOpenOptions(opts: RemoteCliOptions, cacheSize?: number): RemoteOpenOptions {
  const headers = (opts.header ?? []).map((h) => {
    try {
      return parseHeader(h);
    } catch (err) {
      throw new CliError(errorMessage(err), EXIT.USAGE);
    }
  });
  let ca: string | undefined;
  if (opts.caFile !== undefined) {
    try {
      ca = fs.readFileSync(opts.caFile, 'utf8');
    } catch (err) {
      throw new CliError(`--ca-file ${opts.caFile}: ${errorMessage(err)}`, EXIT.USAGE);
    }
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new CliError(`--ca-file ${opts.caFile}: holds no PEM certificate`, EXIT.USAGE);
  }
  return { headers, ca, cacheSize };
}
