/**
 * Node built-ins loaded at their first use instead of at a command's start. A built-in imported at the
 * top of any bundled module is loaded by every command at every start, used or not: node:crypto (and
 * the streams it brings) costs ~5 ms, worker_threads (with the perf hooks it loads) ~2 ms,
 * child_process, zlib and tty 1-2 ms each (bench/NOTES.md, "Start-up, second pass"). A plain export
 * needs none of them. Each getter loads its module once; later calls return it.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

function lazy<T>(id: string): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= require(id) as T);
}

export const lazyCrypto = lazy<typeof import('node:crypto')>('node:crypto');
export const lazyZlib = lazy<typeof import('node:zlib')>('node:zlib');
export const lazyWorkerThreads = lazy<typeof import('node:worker_threads')>('node:worker_threads');
export const lazyChildProcess = lazy<typeof import('node:child_process')>('node:child_process');
export const lazyTty = lazy<typeof import('node:tty')>('node:tty');
