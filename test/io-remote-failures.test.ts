import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RemoteFile, readWithoutWaiting } from '../src/io/remote-file.js';
import { prng } from './support/prng.js';
import { type TestServer, startTestServer } from './support/spawn-test-server.js';

/** Servers that misbehave on purpose (test/support/http-test-server.ts, each in its own process). */
describe('remote file: servers that misbehave', () => {
  let dir: string;
  let file: string;
  let data: Buffer;
  let server: TestServer | undefined;
  const fast = { timeoutMs: 1000, retries: 2, backoffMs: 50 };

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-remote-'));
    file = path.join(dir, 'blob.bin');
    const rand = prng(99);
    data = Buffer.alloc(3 * 1024 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = (rand() * 256) | 0;
    fs.writeFileSync(file, data);
  });
  afterEach(async () => {
    await server?.kill();
    server = undefined;
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('refuses at open a server that ignores Range, in one line', async () => {
    server = await startTestServer(file, 'norange');
    expect(() => RemoteFile.open(`${server!.url}/blob.bin?token=SECRET`)).toThrow(
      new RegExp(`^${server.url}/blob\\.bin: the server ignores Range requests \\(answered 200 with the whole object\\): it cannot serve an image$`),
    );
  });

  it('fails a read with EIO, in bounded time, when the server dies mid-read; the file stays usable for cached bytes', async () => {
    // The open's request brings the first block: the next request is the one that dies.
    server = await startTestServer(file, 'die-after=1');
    const f = RemoteFile.open(`${server.url}/blob.bin`, { ...fast, blockSize: 64 * 1024 });
    try {
      const first = f.readExact(0, 1000, 'first');
      expect(first.equals(data.subarray(0, 1000))).toBe(true);
      const started = Date.now();
      expect(() => f.readExact(1_000_000, 100_000, 'an L2 table')).toThrow(expect.objectContaining({ code: 'EIO', message: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+\/blob\.bin: reading an L2 table at 0xf4240: /) }));
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(f.remoteStats().retries).toBeGreaterThan(0);
      expect(f.readExact(10, 100, 'cached').equals(data.subarray(10, 110))).toBe(true);
    } finally {
      f.close();
    }
  });

  it('readWithoutWaiting: a server that dies mid-read fails the reads waiting on it with EIO, in bounded time', async () => {
    server = await startTestServer(file, 'die-after=1');
    const f = RemoteFile.open(`${server.url}/blob.bin`, { ...fast, blockSize: 64 * 1024 });
    try {
      expect(f.readExact(0, 1000, 'first').equals(data.subarray(0, 1000))).toBe(true);
      const started = Date.now();
      const reads = [1_000_000, 2_000_000, 2_500_000].map((at) => readWithoutWaiting(() => f.readExact(at, 100_000, 'data')));
      for (const r of await Promise.allSettled(reads)) {
        expect(r.status).toBe('rejected');
        expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'EIO' });
      }
      expect(Date.now() - started).toBeLessThan(10_000);
      expect((await readWithoutWaiting(() => f.readExact(10, 100, 'cached'))).equals(data.subarray(10, 110))).toBe(true);
    } finally {
      f.close();
    }
  });

  it('readWithoutWaiting: reads waiting on a slow server leave the thread free, and get the bytes', async () => {
    server = await startTestServer(file, 'slow=32768');
    const f = RemoteFile.open(`${server.url}/blob.bin`, { timeoutMs: 5000, blockSize: 64 * 1024 });
    let turns = 0;
    let ticking = true;
    const tick = () => {
      turns++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    try {
      const at = [100_000, 900_000, 1_700_000, 2_500_000];
      const got = await Promise.all(at.map((p) => readWithoutWaiting(() => f.readExact(p, 50_000, 'data'))));
      got.forEach((b, i) => expect(b.equals(data.subarray(at[i], at[i] + 50_000))).toBe(true));
      // Reads that blocked the thread would all be done before the loop's first turn.
      expect(turns).toBeGreaterThan(2);
    } finally {
      ticking = false;
      f.close();
    }
  });

  it('fails a read with EIO in bounded time when the server stops answering', async () => {
    server = await startTestServer(file, 'stall');
    const f = RemoteFile.open(`${server.url}/blob.bin`, { timeoutMs: 300, retries: 1, backoffMs: 50 });
    try {
      const started = Date.now();
      // Past the first block (the open brought that one).
      expect(() => f.readExact(1_000_000, 10, 'an L2 table')).toThrow(/no answer for 300 ms/);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      f.close();
    }
  });

  it('retries server errors with backoff and then serves the bytes', async () => {
    server = await startTestServer(file, 'fail-first=2');
    const f = RemoteFile.open(`${server.url}/blob.bin`, fast);
    try {
      expect(f.readExact(100_000, 300_000, 'data').equals(data.subarray(100_000, 400_000))).toBe(true);
      expect(f.remoteStats().retries).toBe(2);
    } finally {
      f.close();
    }
  });

  it('completes reads from a slow server that keeps sending', async () => {
    server = await startTestServer(file, 'slow=65536');
    const f = RemoteFile.open(`${server.url}/blob.bin`, { ...fast, blockSize: 256 * 1024 });
    try {
      const started = Date.now();
      // 512 KiB at 640 KiB/s: longer than the 1 s idle timeout, but bytes keep coming.
      expect(f.readExact(256 * 1024, 512 * 1024, 'data').equals(data.subarray(256 * 1024, 768 * 1024))).toBe(true);
      expect(Date.now() - started).toBeGreaterThan(500);
      expect(f.remoteStats().retries).toBe(0);
    } finally {
      f.close();
    }
  });

  it('refuses every read once the object changed on the server, cached bytes included: never mixed bytes', async () => {
    // The open's request is the first; the header read is served from the block it brought.
    server = await startTestServer(file, 'change-after=1');
    const f = RemoteFile.open(`${server.url}/blob.bin`, { ...fast, blockSize: 64 * 1024 });
    try {
      expect(f.readExact(0, 100, 'header').equals(data.subarray(0, 100))).toBe(true);
      expect(() => f.readExact(2_000_000, 100, 'a cluster')).toThrow(/the object changed on the server since it was opened \(its ETag is now "v2", was "v1" when opened\)/);
      expect(() => f.readExact(0, 100, 'header')).toThrow(/changed on the server/);
      expect(f.remoteStats().retries).toBe(0);
    } finally {
      f.close();
    }
  });

  it('follows redirects', async () => {
    server = await startTestServer(file, 'redirect');
    const f = RemoteFile.open(`${server.url}/blob.bin`, fast);
    try {
      expect(f.size).toBe(data.length);
      expect(f.readExact(5, 50_000, 'data').equals(data.subarray(5, 50_005))).toBe(true);
    } finally {
      f.close();
    }
  });

  it('refuses at open a server that is not there, after its retries', () => {
    const started = Date.now();
    expect(() => RemoteFile.open('http://127.0.0.1:1/x.qcow2?sig=SECRET', fast)).toThrow(/^http:\/\/127\.0\.0\.1:1\/x\.qcow2: connect ECONNREFUSED 127\.0\.0\.1:1$/);
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
