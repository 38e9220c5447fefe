/**
 * A worker of the inflate pool (inflate-pool.ts): inflates one compressed cluster per message straight
 * into shared memory with the same codec code as the main thread, then flags it done (or failed) and
 * wakes a main thread that may be waiting for it.
 */
import { parentPort } from 'node:worker_threads';
import { decompressCluster } from './decompress.js';
import { INFLATE_STATE, type InflateJob } from './inflate-pool.js';

parentPort!.on('message', (job: InflateJob) => {
  const state = new Int32Array(job.state);
  let result: number = INFLATE_STATE.FAILED;
  try {
    decompressCluster(job.type, new Uint8Array(job.src), new Uint8Array(job.out));
    result = INFLATE_STATE.DONE;
  } catch {
    // The main thread inflates it again itself and reports the error with the cluster's name.
  }
  Atomics.store(state, 0, result);
  Atomics.notify(state, 0);
});
