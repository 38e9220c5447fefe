/**
 * Paired runs of `qcow-export URL OUT` (whole process timed) for several builds and qemu-img convert, from
 * one private nginx, for an A/B of a change to the remote export. Each round runs every peer once, the
 * order rotated each round; `sync` and a warm read of the image before each run, outside the timing.
 *
 * tsx scripts/bench/remote-export-ab.ts IMAGE_DIR IMAGE_NAME REPS LATENCY_MS PEER...
 *   PEER: NAME=DIST (a build's dist/ folder), qemu (as it comes), qemu-m1 (-m 1)
 *   AB_OUT=DIR: where the output goes (default the system's temporary folder; /dev/shm for tmpfs)
 * Each run's wall time and CPU time (user + system, /usr/bin/time) are logged; medians at the end.
 * Images are made outside (random data: `head -c N /dev/urandom | qemu-img convert -O qcow2`), never committed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startNginx } from '../../test/support/nginx.js';
import { startLatencyProxy } from './latency-proxy.js';
import { median, run, runOk, warm } from './util.js';

const [dir, name, repsText, latencyText, ...peers] = process.argv.slice(2);
if (!dir || !name || !peers.length) throw new Error('usage: remote-export-ab.ts IMAGE_DIR IMAGE_NAME REPS LATENCY_MS PEER...');
const reps = Number(repsText);
const latency = Number(latencyText);
const image = path.join(dir, name);
const size = Number(/virtual size: [^(]*\((\d+) bytes\)/.exec((await runOk('qemu-img', ['info', image])).stdout)?.[1]);
const nginx = await startNginx(dir);
const proxy = latency > 0 ? await startLatencyProxy(nginx.port, latency) : undefined;
const url = `${proxy ? `http://127.0.0.1:${proxy.port}` : nginx.url}/${name}`;
const outDir = fs.mkdtempSync(path.join(process.env.AB_OUT ?? os.tmpdir(), 'qcow-export-ab-'));
const times = new Map<string, number[]>(peers.map((p) => [p, []]));
/** CPU seconds (user + system) of each run, from /usr/bin/time. */
const cpu = new Map<string, number[]>(peers.map((p) => [p, []]));
try {
  for (let round = 0; round < reps; round++) {
    const order = peers.map((_, i) => peers[(i + round) % peers.length]!);
    for (const peer of order) {
      const out = path.join(outDir, 'out.raw');
      fs.rmSync(out, { force: true });
      await runOk('sync', []);
      await warm(image);
      const [who, dist] = peer.split('=') as [string, string | undefined];
      const qemuJson = `json:${JSON.stringify({ file: { driver: 'http', url, timeout: 120 } })}`;
      const t0 = process.hrtime.bigint();
      // timeout(1) inside time(1): a stalled run is killed itself (QEMU 7.2's curl driver stalls for good).
      const timed = (seconds: number) => ['-f', '%U %S', '--', 'timeout', '-s', 'KILL', String(seconds)];
      const r = dist
        ? await run('/usr/bin/time', [...timed(120), path.join(dist, 'cli', 'qcow-export.js'), '-q', '-f', url, out])
        : await run('/usr/bin/time', [...timed(40), 'qemu-img', 'convert', ...(who === 'qemu-m1' ? ['-m', '1'] : []), '-O', 'raw', qemuJson, out]);
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (r.code !== 0) {
        console.log(`${who}: failed (${r.signal ?? r.code}) ${r.stderr.trim().slice(0, 200)}`);
        continue;
      }
      times.get(peer)!.push(s);
      const used = r.stderr.trim().split('\n').pop()!.split(' ').map(Number);
      cpu.get(peer)!.push(used[0]! + used[1]!);
      console.log(`round ${round} ${who}: ${s.toFixed(3)} s, cpu ${used.join(' + ')} s  load ${os.loadavg()[0]!.toFixed(2)}`);
    }
  }
} finally {
  fs.rmSync(outDir, { recursive: true, force: true });
  proxy?.stop();
  await nginx.stop();
}
for (const [peer, t] of times) {
  const who = peer.split('=')[0];
  const c = cpu.get(peer)!;
  if (t.length) console.log(`${who}: median ${median(t).toFixed(3)} s [${Math.min(...t).toFixed(3)}-${Math.max(...t).toFixed(3)}], ${(size / 1e6 / median(t)).toFixed(0)} MB/s, cpu ${median(c).toFixed(2)} s, n=${t.length}`);
}
