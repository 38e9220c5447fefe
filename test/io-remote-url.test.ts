import { describe, expect, it } from 'vitest';
import { QcowError } from '../src/errors.js';
import { isRemoteName, parseHeader, parseRemoteUrl, redactText, redactUrl, resolveRemoteName, sameOrigin } from '../src/io/remote-url.js';

describe('remote URLs', () => {
  it('tells URLs from paths', () => {
    expect(isRemoteName('http://h/x.qcow2')).toBe(true);
    expect(isRemoteName('HTTPS://h/x.qcow2')).toBe(true);
    expect(isRemoteName('/srv/x.qcow2')).toBe(false);
    expect(isRemoteName('http-images/x.qcow2')).toBe(false);
    expect(isRemoteName('ftp://h/x')).toBe(false);
  });

  it('refuses protocols other than http(s) and strings that are not URLs', () => {
    expect(() => parseRemoteUrl('ftp://h/x')).toThrow(/unsupported protocol ftp:/);
    expect(() => parseRemoteUrl('http://')).toThrow(QcowError);
  });

  it('redacts credentials, query strings and fragments', () => {
    const u = 'https://AKIA:s3cr3t@bucket.s3.example.com/vm/disk.qcow2?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA#frag';
    expect(redactUrl(u)).toBe('https://bucket.s3.example.com/vm/disk.qcow2');
    expect(redactUrl(new URL(u))).toBe('https://bucket.s3.example.com/vm/disk.qcow2');
    expect(redactUrl('not a url?token=x')).toBe('not a url');
    const text = redactText(`connect failed for ${u} and http://u:p@h:81/a?b=c`);
    expect(text).not.toMatch(/s3cr3t|deadbeef|AKIA|u:p|b=c/);
    expect(text).toContain('https://bucket.s3.example.com/vm/disk.qcow2');
    expect(text).toContain('http://h:81/a');
  });

  it('resolves a relative backing name on the same server, without the image\'s query string', () => {
    const base = new URL('https://h.example/vms/top/disk.qcow2?sig=SECRET');
    expect(resolveRemoteName(base, 'base.qcow2', 'backing file').href).toBe('https://h.example/vms/top/base.qcow2');
    expect(resolveRemoteName(base, '../base/b.qcow2', 'backing file').href).toBe('https://h.example/vms/base/b.qcow2');
    expect(resolveRemoteName(base, 'with space?#.qcow2', 'backing file').href).toBe('https://h.example/vms/top/with%20space%3F%23.qcow2');
  });

  it('takes an absolute http(s) backing URL as given, query string included', () => {
    const base = new URL('https://h.example/vms/disk.qcow2');
    expect(resolveRemoteName(base, 'http://other.example/b.qcow2?sig=1', 'backing file').href).toBe('http://other.example/b.qcow2?sig=1');
  });

  it('refuses a local path or another protocol named by a remote image, without quoting secrets', () => {
    const base = new URL('https://h.example/vms/disk.qcow2?sig=SECRET');
    expect(() => resolveRemoteName(base, '/var/lib/images/base.qcow2', 'backing file')).toThrow(/^https:\/\/h\.example\/vms\/disk\.qcow2: backing file "\/var\/lib\/images\/base\.qcow2" is a local path/);
    expect(() => resolveRemoteName(base, 'file:///etc/passwd', 'backing file')).toThrow(/protocol other than http/);
    expect(() => resolveRemoteName(base, 'nbd://h:10809/x', 'external data file')).toThrow(/external data file .*protocol/);
    expect(() => resolveRemoteName(base, 'json:{"file":{}}', 'backing file')).toThrow(/protocol/);
    try {
      resolveRemoteName(base, '/x', 'backing file');
    } catch (err) {
      expect((err as Error).message).not.toContain('SECRET');
    }
  });

  it('compares origins for sending headers', () => {
    expect(sameOrigin(new URL('https://h/a'), new URL('https://h/b?x'))).toBe(true);
    expect(sameOrigin(new URL('https://h/a'), new URL('http://h/a'))).toBe(false);
    expect(sameOrigin(new URL('https://h/a'), new URL('https://h:8443/a'))).toBe(false);
    expect(sameOrigin(new URL('https://h/a'), new URL('https://evil/a'))).toBe(false);
  });

  it('parses --header values and never quotes them in errors', () => {
    expect(parseHeader('Authorization: Bearer abc:def')).toEqual(['Authorization', 'Bearer abc:def']);
    expect(parseHeader('x-amz-security-token:tok')).toEqual(['x-amz-security-token', 'tok']);
    for (const bad of ['no colon secretvalue', ': secretvalue', 'Bad Name: secretvalue', 'Range: bytes=0-1', 'X: secret\nvalue']) {
      let message = '';
      try {
        parseHeader(bad);
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message, bad).not.toBe('');
      expect(message).not.toContain('secret');
    }
  });
});
