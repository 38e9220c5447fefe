/**
 * openImage(URL): names a remote image gives for its backing file, checked against QEMU-made images
 * served by nginx and by a test server that logs the headers it gets.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openImageSync } from '../src/image.js';
import { type Nginx, startNginx } from './support/nginx.js';
import { startTestServer } from './support/spawn-test-server.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'qemu-io', 'nginx');

describe.runIf(ready)('openImage by URL: backing names', () => {
  let dir: string;
  let ng: Nginx;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-remote-image-'));
    const q = (...args: string[]) => execFileSync('qemu-img', args, { cwd: dir, stdio: 'ignore' });
    q('create', '-f', 'qcow2', 'base.qcow2', '1M');
    execFileSync('qemu-io', ['-c', 'write -P 0x5a 0 64k', path.join(dir, 'base.qcow2')], { stdio: 'ignore' });
    // A local absolute path, as QEMU writes it when given one.
    q('create', '-f', 'qcow2', '-b', path.join(dir, 'base.qcow2'), '-F', 'qcow2', 'abs.qcow2');
    ng = await startNginx(dir);
    // A backing file given as a URL on another server (another port is another origin).
    q('create', '-f', 'qcow2', '-u', '-b', `${ng.url}/base.qcow2`, '-F', 'qcow2', 'cross.qcow2', '1M');
  });
  afterAll(async () => {
    await ng?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a local path named by a remote image, in one line', () => {
    expect(() => openImageSync(`${ng.url}/abs.qcow2?sig=SECRET`)).toThrow(
      new RegExp(`^${ng.url}/abs\\.qcow2: backing file "${path.join(dir, 'base.qcow2')}" is a local path; an image read over the network may only name one relative to its URL or by an http\\(s\\) URL$`),
    );
  });

  it('follows a backing URL on another server without sending it the user\'s headers', async () => {
    const server = await startTestServer(path.join(dir, 'cross.qcow2'), 'normal');
    try {
      const image = openImageSync(`${server.url}/cross.qcow2`, { remote: { headers: [['Authorization', 'Bearer SECRET-TOKEN']] } });
      try {
        expect(image.backingChain.map((l) => l.path)).toEqual([`${ng.url}/base.qcow2`]);
        const buf = Buffer.alloc(65536 * 2);
        image.active.readSync(buf, 0);
        expect(buf.subarray(0, 65536).every((b) => b === 0x5a)).toBe(true);
        expect(buf.subarray(65536).every((b) => b === 0)).toBe(true);
      } finally {
        image.close();
      }
      const seen = (await (await fetch(`${server.url}/__log`)).json()) as string[];
      expect(seen.filter((l) => l.startsWith('GET /cross.qcow2')).every((l) => l.endsWith('Bearer SECRET-TOKEN'))).toBe(true);
      const baseRequests = ng.accessLog();
      expect(baseRequests.length).toBeGreaterThan(0);
      expect(baseRequests.every((l) => l.endsWith('auth=-'))).toBe(true);
    } finally {
      await server.kill();
    }
  });
});
