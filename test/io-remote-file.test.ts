import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockCache } from '../src/io/block-cache.js';
import { RemoteFile, readWithoutWaiting } from '../src/io/remote-file.js';
import { type Nginx, startNginx } from './support/nginx.js';
import { prng } from './support/prng.js';
import { toolsAvailable } from './support/tools.js';

const haveNginx = toolsAvailable('nginx', 'openssl');

/** Files with sizes that are not whole blocks, served by a real nginx from a private folder. */
describe.runIf(haveNginx)('remote file over nginx', () => {
  let dir: string;
  let ng: Nginx;
  let data: Buffer;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-remote-'));
    const rand = prng(13);
    data = Buffer.alloc(9 * 1024 * 1024 + 12345);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((rand() * 2 ** 32) >>> 0, i - (i + 4 > data.length ? i + 4 - data.length : 0));
    fs.writeFileSync(path.join(dir, 'blob.bin'), data);
    fs.mkdirSync(path.join(dir, 'sub dir'));
    fs.writeFileSync(path.join(dir, 'sub dir', 'small.bin'), data.subarray(0, 1000));
    fs.writeFileSync(path.join(dir, 'empty.bin'), '');
    ng = await startNginx(dir);
  });
  afterAll(async () => {
    await ng?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reads the size and validators at open, and random reads equal the file', () => {
    const f = RemoteFile.open(`${ng.url}/blob.bin`, { cacheSize: 4 * 1024 * 1024, blockSize: 64 * 1024 });
    try {
      expect(f.size).toBe(data.length);
      expect(f.etag).toMatch(/^"[0-9a-f]+-[0-9a-f]+"$/);
      expect(f.mtime.getTime()).toBe(Math.floor(fs.statSync(path.join(dir, 'blob.bin')).mtimeMs / 1000) * 1000);
      const rand = prng(7);
      for (let i = 0; i < 300; i++) {
        const pos = Math.floor(rand() * (data.length + 100_000));
        const len = 1 + Math.floor(rand() * (rand() < 0.2 ? 700_000 : 9000));
        const got = Buffer.alloc(len + 2, 0xee);
        f.readAt(got, 1, len, pos, 'test data');
        const want = Buffer.alloc(len);
        data.copy(want, 0, Math.min(pos, data.length), Math.min(pos + len, data.length)); // past the end: zeros
        expect(got.subarray(1, len + 1).equals(want), `read ${len} at ${pos}`).toBe(true);
        expect(got[0]).toBe(0xee);
        expect(got[len + 1]).toBe(0xee);
      }
      const stats = f.remoteStats();
      expect(stats.cacheBytes).toBeLessThanOrEqual(4 * 1024 * 1024);
      expect(stats.failures).toBe(0);
    } finally {
      f.close();
    }
  });

  it('fetches ahead of a sequential reader in few, large, parallel requests, within the cache bound', () => {
    const before = ng.accessLog().length;
    const f = RemoteFile.open(`${ng.url}/blob.bin`, { cacheSize: 8 * 1024 * 1024 });
    try {
      const got = Buffer.alloc(data.length);
      for (let p = 0; p < data.length; p += 128 * 1024) f.readAt(got, p, Math.min(128 * 1024, data.length - p), p, 'sequential');
      expect(got.equals(data)).toBe(true);
      const stats = f.remoteStats();
      expect(stats.readAhead).toBeGreaterThan(stats.misses);
      expect(stats.bytesFetched).toBeLessThan(data.length * 1.2);
      expect(stats.cacheBytes).toBeLessThanOrEqual(8 * 1024 * 1024);
      // 9 MiB in 256 KiB blocks is 37 blocks: coalescing makes far fewer requests (the probe is one of them).
      const requests = ng.accessLog().slice(before);
      expect(requests.length).toBe(stats.requests);
      expect(requests.length).toBeLessThan(16);
      expect(requests.every((r) => /^GET \/blob\.bin bytes=\d+-\d+ auth=-$/.test(r))).toBe(true);
    } finally {
      f.close();
    }
  });

  it('a reader of large pieces (qcow-export reads 4 MiB at a time) is fetched ahead in steps of its own reads', () => {
    // 1 MiB reads of 64 KiB blocks: the first three reads (16 blocks each) ask for their own blocks (the
    // third makes the reader sequential); from then on the window (4, 8 reads...) runs ahead of it. A
    // window grown block by block (256 KiB, 512 KiB...) stayed smaller than one read and left each read
    // asking for most of its blocks itself.
    const f = RemoteFile.open(`${ng.url}/blob.bin`, { cacheSize: 8 * 1024 * 1024, blockSize: 64 * 1024 });
    try {
      const got = Buffer.alloc(data.length);
      const step = 1024 * 1024;
      for (let p = 0; p < data.length; p += step) f.readAt(got, p, Math.min(step, data.length - p), p, 'sequential');
      expect(got.equals(data)).toBe(true);
      const stats = f.remoteStats();
      // The open brought block 0 with it.
      expect(stats.misses).toBe(47);
      expect(stats.readAhead).toBe(Math.ceil(data.length / (64 * 1024)) - 48);
      expect(stats.bytesFetched).toBe(data.length);
      expect(stats.cacheBytes).toBeLessThanOrEqual(8 * 1024 * 1024);
    } finally {
      f.close();
    }
  });

  it('readWithoutWaiting: many reads at once in a small cache, each the file\'s bytes', async () => {
    // 16 blocks of 64 KiB: 24 reads of up to 256 KiB at once overfill it, so some wait for others' blocks.
    const f = RemoteFile.open(`${ng.url}/blob.bin`, { cacheSize: 1024 * 1024, blockSize: 64 * 1024 });
    try {
      const rand = prng(21);
      const reads: Promise<void>[] = [];
      for (let i = 0; i < 24; i++) {
        // Four sequential readers and twenty random ones.
        const stream = i < 4;
        const pos = stream ? i * 2 * 1024 * 1024 : Math.floor(rand() * data.length);
        const len = stream ? 2 * 1024 * 1024 : 1 + Math.floor(rand() * 256 * 1024);
        reads.push(
          (async () => {
            const step = stream ? 128 * 1024 : len;
            for (let p = pos; p < pos + len; p += step) {
              const n = Math.min(step, pos + len - p);
              const got = await readWithoutWaiting(() => {
                const b = Buffer.alloc(n);
                f.readAt(b, 0, n, p, 'test data');
                return b;
              });
              const want = Buffer.alloc(n);
              data.copy(want, 0, Math.min(p, data.length), Math.min(p + n, data.length));
              expect(got.equals(want), `read ${n} at ${p}`).toBe(true);
            }
          })(),
        );
      }
      await Promise.all(reads);
      expect(f.remoteStats().cacheBytes).toBeLessThanOrEqual(1024 * 1024);
      expect(f.remoteStats().failures).toBe(0);
    } finally {
      f.close();
    }
  });

  it('serves repeated reads from the cache', () => {
    const f = RemoteFile.open(`${ng.url}/blob.bin`);
    try {
      const a = f.readExact(1_000_000, 5000, 'first');
      const requests = f.remoteStats().requests;
      const b = f.readExact(1_000_000, 5000, 'again');
      expect(b.equals(a)).toBe(true);
      expect(f.remoteStats().requests).toBe(requests);
      expect(() => f.readExact(data.length - 10, 11, 'a table')).toThrow(/lies past the end of the file/);
    } finally {
      f.close();
    }
  });

  it('shares one bounded cache between files', () => {
    const cache = new BlockCache(2 * 1024 * 1024, 128 * 1024);
    const a = RemoteFile.open(`${ng.url}/blob.bin`, { cache });
    const b = RemoteFile.open(`${ng.url}/sub%20dir/small.bin`, { cache });
    try {
      expect(b.readExact(0, 1000, 'small').equals(data.subarray(0, 1000))).toBe(true);
      const got = Buffer.alloc(data.length);
      for (let p = 0; p < data.length; p += 64 * 1024) a.readAt(got, p, Math.min(64 * 1024, data.length - p), p, 'sequential');
      expect(got.equals(data)).toBe(true);
      expect(cache.bytes).toBeLessThanOrEqual(2 * 1024 * 1024);
      expect(b.readExact(500, 500, 'small again').equals(data.subarray(500, 1000))).toBe(true);
    } finally {
      a.close();
      b.close();
    }
  });

  it('opens an empty object', () => {
    const f = RemoteFile.open(`${ng.url}/empty.bin`);
    expect(f.size).toBe(0);
    const got = Buffer.alloc(10, 1);
    f.readAt(got, 0, 10, 0, 'nothing');
    expect(got.equals(Buffer.alloc(10))).toBe(true);
    f.close();
  });

  it('refuses a missing object with one line and the right code', () => {
    expect(() => RemoteFile.open(`${ng.url}/nope.qcow2?sig=SECRET`)).toThrow(expect.objectContaining({ code: 'ENOENT', message: `${ng.url}/nope.qcow2: the server answered 404 Not Found` }));
  });
});

describe.runIf(haveNginx)('remote file: bearer token and TLS', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-remote-'));
    fs.writeFileSync(path.join(dir, 'x.bin'), Buffer.from('hello, remote world'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('sends --header values, and the refusal without them names no secret', async () => {
    const ng = await startNginx(dir, { bearer: 'tok-SECRET' });
    try {
      let message = '';
      try {
        RemoteFile.open(`${ng.url}/x.bin`, { headers: [['Authorization', 'Bearer wrong-SECRET']] });
      } catch (err) {
        message = (err as Error).message;
        expect((err as { code: string }).code).toBe('EACCES');
      }
      expect(message).toBe(`${ng.url}/x.bin: the server answered 401 Unauthorized`);
      const f = RemoteFile.open(`${ng.url}/x.bin`, { headers: [['Authorization', 'Bearer tok-SECRET']] });
      expect(f.readExact(7, 6, 'text').toString()).toBe('remote');
      f.close();
    } finally {
      await ng.stop();
    }
  });

  it('reads over TLS from a self-signed server given its certificate, and refuses it without', async () => {
    const ng = await startNginx(dir, { tls: true });
    try {
      expect(() => RemoteFile.open(`${ng.url}/x.bin`, { retries: 0 })).toThrow(/self[- ]signed certificate/);
      const f = RemoteFile.open(`${ng.url}/x.bin`, { ca: ng.certPem });
      expect(f.readExact(0, 5, 'text').toString()).toBe('hello');
      f.close();
    } finally {
      await ng.stop();
    }
  });
});
