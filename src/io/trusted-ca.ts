/**
 * The file NODE_EXTRA_CA_CERTS named when one of our commands was started, read only when an https
 * image is opened.
 *
 * Why it is ours to read: Node parses every certificate in NODE_EXTRA_CA_CERTS when the process starts,
 * TLS or not (40-60 ms on a machine that points it at the system bundle, more than the rest of our
 * start-up). The commands' first line, `#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS
 * QCOW_NODE_EXTRA_CA_CERTS=${NODE_EXTRA_CA_CERTS} node`, hands the name to us instead. A library caller's
 * NODE_EXTRA_CA_CERTS stays Node's business: this variable is then unset and nothing changes.
 */
import fs from 'node:fs';
import path from 'node:path';

/** Where the commands' first line moves NODE_EXTRA_CA_CERTS to. */
export const DEFERRED_CA_ENV = 'QCOW_NODE_EXTRA_CA_CERTS';

let deferred: string | undefined | null = null;

/** The deferred file's text, read once; unreadable: one warning, as Node itself gives, and nothing added. */
function deferredCerts(): string | undefined {
  if (deferred !== null) return deferred;
  deferred = undefined;
  const file = process.env[DEFERRED_CA_ENV];
  if (!file) return deferred;
  try {
    deferred = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const prog = path.basename(process.argv[1] ?? 'node', '.js');
    process.stderr.write(`${prog}: warning: ignoring extra certificates from ${file} (NODE_EXTRA_CA_CERTS): ${(err as Error).message}\n`);
  }
  return deferred;
}

/** The PEM text to trust beside Node's roots for an https server: the deferred file's and `extra`. */
export function withDeferredCa(extra: string | undefined): string | undefined {
  const pem = deferredCerts();
  if (pem === undefined) return extra;
  return extra === undefined ? pem : `${pem}\n${extra}`;
}
