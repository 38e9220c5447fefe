/**
 * Paired A/B of builds of ours on a remote image: each build mounts the bench's 256 MiB remote qcow2
 * (scripts/bench/remote.ts builds it) from a private nginx, in turn, repeated; fio sequential 1 MiB
 * (the whole file; 64 MiB under latency) and random 4 KiB, with the daemon's CPU per MiB.
 *
 * tsx scripts/bench/remote-ab.ts LATENCY_MS REPS NAME=DIST [NAME=DIST ...]   (DIST: a saved dist/ folder)
 */
import path from 'node:path';
import { startNginx } from '../../test/support/nginx.js';
import { startLatencyProxy } from './latency-proxy.js';
import { IMAGES } from './images.js';
import { mountPeer } from './peers.js';
import { WORKLOADS } from './workloads.js';
import { cpuSeconds, median, installCleanUpHandlers, cleanUpAll, MiB } from './util.js';
installCleanUpHandlers();
const [lat, reps, ...vs] = process.argv.slice(2);
const nginx = await startNginx(IMAGES);
let base = nginx.url; let proxy;
if (Number(lat)) { proxy = await startLatencyProxy(nginx.port, Number(lat)); base = `http://127.0.0.1:${proxy.port}`; }
const url = `${base}/remote-256m.qcow2`;
const res: Record<string, { seq: number[]; cpu: number[]; rand: number[] }> = {};
try {
  for (let r = 0; r < Number(reps); r++) {
    for (const v of r % 2 ? [...vs].reverse() : vs) {
      const [name, dir] = v.split('=');
      const m = await mountPeer('ours', { image: url, tag: `abr-${name}-${r}`, oursArgs: ['-o', 'remote_cache_size=256M'], oursCli: path.join(dir, 'cli/qcow-mount.js') });
      try {
        const c0 = cpuSeconds(m.pid)!;
        const s = await WORKLOADS.seq1m.run(m.file, 256 * MiB, { seconds: 5, seqBytes: Number(lat) ? 64 * MiB : 256 * MiB, seqOffset: 0 });
        const c1 = cpuSeconds(m.pid)!;
        const q = await WORKLOADS.rand4k1.run(m.file, 256 * MiB, { seconds: 3, seqBytes: 0 });
        const e = (res[name] ??= { seq: [], cpu: [], rand: [] });
        e.seq.push(s.value); e.cpu.push(((c1 - c0) * 1e6) / (s.bytes / MiB)); e.rand.push(q.value);
        console.log(`${lat} ms ${name} rep ${r}: seq ${s.value.toFixed(0)} MB/s (${(((c1 - c0) * 1e6) / (s.bytes / MiB)).toFixed(0)} us/MiB), rand ${q.value.toFixed(0)} IOPS`);
      } finally { await m.stop(); }
    }
  }
  for (const [n, e] of Object.entries(res)) console.log(`${lat} ms ${n}: seq ${median(e.seq).toFixed(0)} [${Math.min(...e.seq).toFixed(0)}-${Math.max(...e.seq).toFixed(0)}] MB/s, cpu ${median(e.cpu).toFixed(0)} us/MiB, rand ${median(e.rand).toFixed(0)} [${Math.min(...e.rand).toFixed(0)}-${Math.max(...e.rand).toFixed(0)}] IOPS`);
} finally { proxy?.stop(); await nginx.stop(); cleanUpAll(); }
