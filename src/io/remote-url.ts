import { QcowError } from '../errors.js';

/** True for the names we read over the network: `http://` and `https://` URLs. */
export function isRemoteName(name: string): boolean {
  return /^https?:\/\//i.test(name);
}

/**
 * Parses an image URL given by the user. Credentials in the URL (`user:pass@`) are accepted and sent as
 * the URL says; the query string (a presigned URL's signature) is kept as given.
 */
export function parseRemoteUrl(name: string): URL {
  let url: URL;
  try {
    url = new URL(name);
  } catch {
    throw new QcowError('EINVAL', redactUrl(name), 'is not a valid URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new QcowError('EINVAL', redactUrl(name), `unsupported protocol ${url.protocol} (only http: and https:)`);
  }
  return url;
}

/**
 * The URL as it may be shown: no credentials, no query string (a presigned URL's signature is a
 * credential), no fragment. Also used for strings that may not parse as URLs.
 */
export function redactUrl(url: string | URL): string {
  let u: URL;
  try {
    u = typeof url === 'string' ? new URL(url) : new URL(url.href);
  } catch {
    // Not a URL: cut everything after the first ? or #, and any userinfo-looking prefix.
    return String(url).replace(/[?#].*$/s, '').replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, '$1');
  }
  u.username = '';
  u.password = '';
  u.search = '';
  u.hash = '';
  return u.href;
}

/**
 * Removes every URL's credentials and query string from a free-form message (an error from the
 * network stack may quote the URL it was given).
 */
export function redactText(text: string): string {
  return text.replace(/\bhttps?:\/\/[^\s'"<>]+/gi, (m) => redactUrl(m));
}

/**
 * Resolves a backing or external data file name that a remote image gives, against the image's URL:
 * an http(s) URL is taken as given; a relative name is on the same server, next to the image (the
 * image's query string is not carried over: a presigned signature covers one object only); a local
 * path (absolute, `file:`) or any other protocol (`nbd:`, `json:`...) is refused — the name was
 * written on the host that made the image and means nothing on this one.
 */
export function resolveRemoteName(base: URL, name: string, what: string): URL {
  const shown = redactUrl(base);
  if (isRemoteName(name)) return parseRemoteUrl(name);
  if (name.startsWith('/')) {
    throw new QcowError('EBADIMAGE', shown, `${what} "${redactText(name)}" is a local path; an image read over the network may only name one relative to its URL or by an http(s) URL`);
  }
  if (/^[a-z][a-z0-9+.-]*:/i.test(name)) {
    throw new QcowError('EBADIMAGE', shown, `${what} "${redactText(name)}" uses a protocol other than http(s), which an image read over the network may not name`);
  }
  if (name === '') throw new QcowError('EBADIMAGE', shown, `${what} name is empty`);
  // Percent-encode what would otherwise change the meaning of the name in a URL: it is a file name.
  const encoded = name.split('/').map((part) => (part === '.' || part === '..' ? part : encodeURIComponent(part))).join('/');
  const resolved = new URL(encoded, base);
  resolved.search = '';
  resolved.hash = '';
  return resolved;
}

/**
 * Headers the user gave for the image are sent only to that image's server (scheme, host and port):
 * an image may name a backing file on any host, and must not be able to make us send a token there.
 */
export function sameOrigin(a: URL, b: URL): boolean {
  return a.origin === b.origin;
}

/** Parses one `--header 'Name: value'` argument. */
export function parseHeader(text: string): [string, string] {
  const colon = text.indexOf(':');
  const name = colon > 0 ? text.slice(0, colon).trim() : '';
  if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) {
    // The value may be a secret: the message names the header only.
    throw new QcowError('EINVAL', '--header', `expected 'Name: value', got a header without a valid name`);
  }
  const value = text.slice(colon + 1).trim();
  if (/[\r\n\0]/.test(value)) throw new QcowError('EINVAL', '--header', `the value of ${name} holds a line break or NUL`);
  const lower = name.toLowerCase();
  if (lower === 'range' || lower === 'host' || lower === 'content-length' || lower === 'connection' || lower === 'transfer-encoding') {
    throw new QcowError('EINVAL', '--header', `${name} is set by the reader itself and cannot be given`);
  }
  return [name, value];
}
