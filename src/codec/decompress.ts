import { createRequire } from 'node:module';
import type { CompressionType } from '../format/header.js';
import { lazyZlib } from '../lazy-builtins.js';

/**
 * zstd comes from zstd-napi: Node 20's zlib has no zstd, and zstd-napi binds the reference libzstd
 * (built from its bundled source when no prebuild fits), with the streaming API that QEMU's own
 * decoder relies on to stop at exactly one cluster and ignore the bytes after the frame.
 */
const require = createRequire(import.meta.url);
type StreamResult = [returnValue: number, dstProduced: number, srcConsumed: number];
interface DCtx {
  decompressStream(dst: Uint8Array, src: Uint8Array): StreamResult;
  reset(directive: number): void;
}
type ZstdBinding = { DCtx: new () => DCtx; ResetDirective: { sessionOnly: number } };
// Loaded at the first zstd cluster: the binding costs 13-29 ms of start-up that a zlib or uncompressed
// image never needs (bench/NOTES.md, qcow-export).
let zstdBinding: ZstdBinding | undefined;

/** A corrupt compressed cluster: the caller turns it into EIO naming the cluster. */
export class DecompressError extends Error {}

let dctx: DCtx | undefined;

/**
 * Inflates one compressed cluster into `into` (exactly `into.length` bytes, one cluster). `src` runs to
 * the end of the descriptor's last sector and may carry unrelated bytes after the stream; like QEMU we
 * stop once the cluster is full. Output that falls short of a cluster, or (unlike QEMU, which would
 * silently cut it) a stream that holds more than a cluster, is corrupt.
 */
export function decompressCluster(type: CompressionType, src: Uint8Array, into: Uint8Array): void {
  if (type === 'zstd') zstdCluster(src, into);
  else zlibCluster(src, into);
}

function zlibCluster(src: Uint8Array, into: Uint8Array): void {
  let out: Buffer;
  try {
    // Z_SYNC_FLUSH: a stream cut at the descriptor's end is fine as long as it filled the cluster.
    // chunkSize: one output chunk of a whole cluster, not 16 KiB pieces joined afterwards (~15% faster).
    const zlib = lazyZlib();
    out = zlib.inflateRawSync(src, {
      finishFlush: zlib.constants.Z_SYNC_FLUSH,
      maxOutputLength: into.length,
      chunkSize: Math.max(zlib.constants.Z_MIN_CHUNK, into.length),
    });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ERR_BUFFER_TOO_LARGE') throw new DecompressError(`zlib data inflates to more than one cluster (${into.length} bytes)`);
    throw new DecompressError(`zlib data is corrupt (${e.message})`);
  }
  if (out.length !== into.length) throw new DecompressError(`zlib data inflates to ${out.length} bytes, not one cluster (${into.length})`);
  into.set(out);
}

function zstdCluster(src: Uint8Array, into: Uint8Array): void {
  zstdBinding ??= require('zstd-napi/binding') as ZstdBinding;
  dctx ??= new zstdBinding.DCtx();
  dctx.reset(zstdBinding.ResetDirective.sessionOnly);
  let inPos = 0;
  let outPos = 0;
  let ret = 0;
  while (outPos < into.length) {
    let produced: number;
    let consumed: number;
    try {
      [ret, produced, consumed] = dctx.decompressStream(into.subarray(outPos), src.subarray(inPos));
    } catch (err) {
      throw new DecompressError(`zstd data is corrupt (${(err as Error).message})`);
    }
    if (produced === 0 && consumed === 0) {
      throw new DecompressError(`zstd data ends after ${outPos} bytes, short of one cluster (${into.length})`);
    }
    inPos += consumed;
    outPos += produced;
  }
  // A frame still wanting input or holding output once the cluster is full is bigger than a cluster.
  if (ret > 0) throw new DecompressError(`zstd frame does not end at one cluster (${into.length} bytes)`);
}
