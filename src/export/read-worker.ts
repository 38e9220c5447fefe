/**
 * A worker of the export read pool: opens the same image and view read-only and serves chunk reads into
 * buffers that travel back and forth by transfer (no copy). Decompression, the costly part of reading a
 * compressed image, thus runs on several cores.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openImageSync } from '../image.js';
import { QcowError } from '../errors.js';
import { SliceDisk } from '../disk/slice-disk.js';
import type { ReadRequest, ReadReply, ViewSpec } from './read-pool.js';

const spec = workerData as ViewSpec;
const image = openImageSync(spec.imagePath, spec.openOptions);
const snapshot = spec.snapshotIndex === undefined ? undefined : image.snapshots.find((s) => s.index === spec.snapshotIndex);
if (spec.snapshotIndex !== undefined && !snapshot) throw new Error(`snapshot index ${spec.snapshotIndex} is gone`);
const view = snapshot ? (spec.vmstate ? image.vmState(snapshot) : image.snapshotDisk(snapshot)) : image.active;
if (!view) throw new Error('the snapshot has no VM state');
const disk = spec.window ? new SliceDisk(view, spec.window.start, spec.window.length) : view;

parentPort!.on('message', (req: ReadRequest) => {
  let reply: ReadReply;
  try {
    const got = disk.readSync(new Uint8Array(req.buffer, 0, req.length), req.position);
    reply = { id: req.id, buffer: req.buffer, got };
  } catch (err) {
    const e = err as Error;
    reply =
      err instanceof QcowError
        ? { id: req.id, buffer: req.buffer, error: { message: e.message, code: err.code, file: err.file } }
        : { id: req.id, buffer: req.buffer, error: { message: e.message } };
  }
  parentPort!.postMessage(reply, [reply.buffer]);
});
