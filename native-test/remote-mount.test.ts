/**
 * qcow-mount URL MNT through a real nginx serving the fixture folder: every view of a set of fixtures
 * equals QEMU's output; TLS with a self-signed certificate; a bearer token; and servers that misbehave
 * (no Range, killed mid-read, slow). Secrets given on the command line never reach the daemon's argv,
 * its log or info.json.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FixtureImage, fixturePath, fixturesDir, fixturesReady, loadManifest } from '../test/support/fixtures.js';
import { type Nginx, startNginx } from '../test/support/nginx.js';
import { type TestServer, startTestServer } from '../test/support/spawn-test-server.js';
import { toolsAvailable } from '../test/support/tools.js';
import { Scratch, alive, compareRange, daemonPid, ensureBuilt, isMounted, prng } from './mount-support.js';

const ready = toolsAvailable('qemu-img', '/dev/fuse', 'nginx', 'openssl') && (fixturesReady() || process.env.CI === 'true');
/** Backing chains with relative names (one folder, across folders), raw backing, compression, VM state, extended L2, 2 TiB sparse, external data file. */
const CHOSEN = ['chain-subdir', 'chain-raw-qcow2-qcow2', 'zlib-c64k', 'zstd-c2m', 'savevm-c64k', 'el2-c64k-backing', 'el2-zlib-c64k', 'huge-2t', 'datafile'];
const images: FixtureImage[] = ready ? loadManifest().images.filter((i) => CHOSEN.includes(i.name)) : [];
const SECRET = 'sig-SECRET-4711';

interface InfoSnapshot {
  id: string;
  name: string;
  files: { raw: string; vmstate: string | null };
}

let scratch: Scratch;
let ng: Nginx;
beforeAll(async () => {
  if (!ready) return;
  ensureBuilt();
  scratch = new Scratch('remote');
  ng = await startNginx(fixturesDir);
});
afterAll(async () => {
  await ng?.stop();
  if (!scratch) return;
  const left = scratch.cleanUp();
  scratch.remove();
  expect(left).toEqual([]);
});

/** Neither the daemon's command line nor its log holds `secret`. */
function expectNoSecretInDaemon(mnt: string, secret: string): void {
  const pid = daemonPid(scratch, mnt);
  expect(pid).toBeDefined();
  expect(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')).not.toContain(secret);
  for (const f of fs.readdirSync(scratch.stateDir)) expect(fs.readFileSync(path.join(scratch.stateDir, f), 'utf8'), f).not.toContain(secret);
}

function compareViews(mnt: string, fixture: FixtureImage): void {
  const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { snapshots: InfoSnapshot[] };
  for (const view of fixture.views) {
    let file = path.join(mnt, 'active.raw');
    if (view.view !== 'active') {
      const s = info.snapshots.find((x) => (view.id !== undefined ? x.id === view.id : x.name === view.snapshot))!;
      file = path.join(mnt, (view.view === 'snapshot' ? s.files.raw : s.files.vmstate)!);
    }
    const label = `${fixture.name} ${view.view} ${view.snapshot ?? ''}`;
    expect(fs.statSync(file).size, label).toBe(view.size);
    if (!view.oracle) continue;
    const oracle = fixturePath(view.oracle);
    if (fixture.compare === 'full') {
      expect(compareRange(file, oracle, 0, view.size), `${label}: first difference`).toBe(-1);
    } else {
      const ranges: [number, number][] = [...(fixture.written ?? []), [0, 65536], [view.size - 65536, 65536]];
      const rnd = prng(view.size % 100_000);
      for (let i = 0; i < 16; i++) ranges.push([Math.floor(rnd() * (view.size - 1_048_576)), 1 + Math.floor(rnd() * 1_048_576)]);
      for (const [off, len] of ranges) {
        const n = Math.min(len, view.size - off);
        expect(compareRange(file, oracle, off, n), `${label} [${off}, +${n})`).toBe(-1);
      }
    }
  }
}

describe.skipIf(!ready)('qcow-mount URL: every view equals QEMU output', () => {
  it.each(images.map((i) => [i.name, i] as const))('%s', (_name, fixture) => {
    const mnt = scratch.mountPoint(fixture.name);
    // nginx ignores the query string; it stands for a presigned URL's signature.
    const url = `${ng.url}/${fixture.image}?X-Amz-Signature=${SECRET}`;
    scratch.mount(url, mnt, ['-o', 'remote_cache_size=16M']);
    try {
      compareViews(mnt, fixture);
      const infoText = fs.readFileSync(path.join(mnt, 'info.json'), 'utf8');
      expect(infoText).not.toContain(SECRET);
      const info = JSON.parse(infoText) as { remote?: { url: string; size: number; etag?: string; cache: { limit: number; bytes: number } } };
      expect(info.remote?.url).toBe(`${ng.url}/${fixture.image}`);
      expect(info.remote?.size).toBe(fs.statSync(fixturePath(fixture.image)).size);
      expect(info.remote?.etag).toMatch(/^"/);
      expect(info.remote?.cache.limit).toBe(16 * 1024 * 1024);
      expect(info.remote!.cache.bytes).toBeLessThanOrEqual(16 * 1024 * 1024);
      expectNoSecretInDaemon(mnt, SECRET);
    } finally {
      const r = scratch.unmount(mnt);
      expect(r.status, r.stderr).toBe(0);
      expect(isMounted(mnt)).toBe(false);
    }
  });
});

describe.skipIf(!ready)('qcow-mount URL: headers, TLS and servers that misbehave', () => {
  const small = () => images.find((i) => i.name === 'zlib-c64k')!;

  it('sends --header to the server; the token is in no argv, log or info.json', async () => {
    const token = 'tok-SECRET-0815';
    const server = await startNginx(fixturesDir, { bearer: token });
    const mnt = scratch.mountPoint('bearer');
    try {
      const refused = scratch.cli([`${server.url}/${small().image}`, mnt]);
      expect(refused.status).not.toBe(0);
      expect(refused.stderr.trim().split('\n')).toHaveLength(1);
      expect(refused.stderr).toMatch(/401/);
      expect(isMounted(mnt)).toBe(false);
      scratch.mount(`${server.url}/${small().image}`, mnt, ['--header', `Authorization: Bearer ${token}`]);
      compareViews(mnt, small());
      expect(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')).not.toContain(token);
      expectNoSecretInDaemon(mnt, token);
      expect(scratch.unmount(mnt).status).toBe(0);
    } finally {
      await server.stop();
    }
  });

  it('reads over TLS from a self-signed server with --ca-file or NODE_EXTRA_CA_CERTS, and refuses it without', async () => {
    const server = await startNginx(fixturesDir, { tls: true });
    const mnt = scratch.mountPoint('tls');
    try {
      const refused = scratch.cli([`${server.url}/${small().image}`, mnt]);
      expect(refused.status).not.toBe(0);
      expect(refused.stderr.trim().split('\n')).toHaveLength(1);
      expect(refused.stderr).toMatch(/certificate/);
      scratch.mount(`${server.url}/${small().image}`, mnt, ['--ca-file', server.certFile!]);
      compareViews(mnt, small());
      expect(scratch.unmount(mnt).status).toBe(0);
      // NODE_EXTRA_CA_CERTS, as the installed command takes it: Node never parses it at start (neither the
      // command's nor the daemon's), our TLS code reads it at the first https open.
      const r = scratch.cli([`${server.url}/${small().image}`, mnt], { asProgram: true, env: scratch.env({ NODE_EXTRA_CA_CERTS: server.certFile! }) });
      expect(r.status, r.stderr).toBe(0);
      const environ = fs.readFileSync(`/proc/${daemonPid(scratch, mnt)}/environ`, 'utf8').split('\0');
      expect(environ.filter((e) => e.startsWith('NODE_EXTRA_CA_CERTS='))).toEqual([]);
      expect(environ).toContain(`QCOW_NODE_EXTRA_CA_CERTS=${server.certFile!}`);
      compareViews(mnt, small());
      expect(scratch.unmount(mnt).status).toBe(0);
    } finally {
      await server.stop();
    }
  });

  it('refuses a server that ignores Range: one line, nothing mounted', async () => {
    const server = await startTestServer(fixturePath(small().image), 'norange');
    const mnt = scratch.mountPoint('norange');
    try {
      const r = scratch.cli([`${server.url}/disk.qcow2`, mnt]);
      expect(r.status).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/ignores Range requests/);
      expect(isMounted(mnt)).toBe(false);
    } finally {
      await server.kill();
    }
  });

  it('a server killed mid-read: EIO within bounded time, the daemon lives, unmount is clean', async () => {
    const fixture = images.find((i) => i.name === 'zstd-c2m')!;
    let server: TestServer | undefined = await startTestServer(fixturePath(fixture.image), 'normal');
    const mnt = scratch.mountPoint('killed');
    try {
      scratch.mount(`${server.url}/disk.qcow2`, mnt, ['-o', 'remote_cache_size=4M']);
      const pid = daemonPid(scratch, mnt)!;
      const head = Buffer.alloc(4096);
      const fd = fs.openSync(path.join(mnt, 'active.raw'), 'r');
      try {
        fs.readSync(fd, head, 0, head.length, 0);
        await server.kill();
        server = undefined;
        const started = Date.now();
        // Far from what was read: not in the cache, nor in the kernel's page cache.
        const buf = Buffer.alloc(65536);
        let code = '';
        await new Promise<void>((resolve) => {
          fs.read(fd, buf, 0, buf.length, 10 * 1024 * 1024, (err) => {
            code = (err as NodeJS.ErrnoException | null)?.code ?? 'none';
            resolve();
          });
        });
        expect(code).toBe('EIO');
        expect(Date.now() - started).toBeLessThan(30_000);
      } finally {
        fs.closeSync(fd);
      }
      expect(alive(pid)).toBe(true);
      expect(JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8'))).toHaveProperty('remote');
    } finally {
      await server?.kill();
      const r = scratch.unmount(mnt);
      expect(r.status, r.stderr).toBe(0);
      expect(isMounted(mnt)).toBe(false);
    }
  });

  it('readers at once, on every view of one image and a small cache, all get QEMU\'s bytes', async () => {
    const fixture = small();
    const mnt = scratch.mountPoint('concurrent');
    scratch.mount(`${ng.url}/${fixture.image}`, mnt, ['-o', 'remote_cache_size=4M']);
    try {
      const info = JSON.parse(fs.readFileSync(path.join(mnt, 'info.json'), 'utf8')) as { snapshots: InfoSnapshot[] };
      const readers: Promise<void>[] = [];
      for (const view of fixture.views) {
        const s = info.snapshots.find((x) => x.id === view.id);
        const file = path.join(mnt, view.view === 'active' ? 'active.raw' : s!.files.raw);
        const want = fs.readFileSync(fixturePath(view.oracle!));
        // Per view: two readers from the start and two from the middle, in different step sizes.
        for (const [start, step] of [[0, 131072], [0, 4096 * 7], [view.size >> 1, 65536], [view.size >> 1, 1048576]] as const) {
          readers.push(
            (async () => {
              const fh = await fs.promises.open(file, 'r');
              try {
                const buf = Buffer.alloc(step);
                for (let at = start; at < view.size; at += step) {
                  const { bytesRead } = await fh.read(buf, 0, step, at);
                  expect(bytesRead).toBe(Math.min(step, view.size - at));
                  expect(buf.subarray(0, bytesRead).equals(want.subarray(at, at + bytesRead)), `${view.view} ${view.id ?? ''} at ${at}`).toBe(true);
                }
              } finally {
                await fh.close();
              }
            })(),
          );
        }
      }
      await Promise.all(readers);
    } finally {
      const r = scratch.unmount(mnt);
      expect(r.status, r.stderr).toBe(0);
    }
  });

  it('a slow server: reads still complete and equal QEMU output', async () => {
    const server = await startTestServer(fixturePath(small().image), 'slow=262144');
    const mnt = scratch.mountPoint('slow');
    try {
      scratch.mount(`${server.url}/disk.qcow2`, mnt);
      compareViews(mnt, small());
      expect(scratch.unmount(mnt).status).toBe(0);
    } finally {
      await server.kill();
    }
  });
});
