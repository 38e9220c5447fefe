import { LRUCache } from 'lru-cache';
import { InflatePool } from './codec/inflate-pool.js';

export const DEFAULT_L2_CACHE_BYTES = 32 * 1024 * 1024;
export const DEFAULT_CLUSTER_CACHE_BYTES = 32 * 1024 * 1024;
/** Snapshot L1 tables kept loaded; one table is at most 32 MiB (MAX_L1_BYTES), so one always fits. */
export const DEFAULT_SNAPSHOT_L1_CACHE_BYTES = 32 * 1024 * 1024;
/** One table or cluster is at most 2 MiB; a cache must hold at least one. */
const MIN_CACHE_BYTES = 2 * 1024 * 1024;

export interface CacheOptions {
  /** Bytes of L2 tables kept (default 32 MiB: 256 GiB of a 64 KiB-cluster disk). */
  l2CacheBytes?: number;
  /** Bytes of decompressed clusters kept (default 32 MiB). */
  clusterCacheBytes?: number;
  /**
   * Bytes of snapshot L1 tables kept loaded (default and minimum 32 MiB, the largest one table can be).
   * Without a bound, reading from many snapshots whose (possibly overlapping) L1 tables are large
   * would keep every table for good.
   */
  snapshotL1CacheBytes?: number;
  /**
   * Worker threads that inflate compressed clusters ahead of sequential reads (default 0: none; the
   * mount daemon uses them). Inflated clusters land in the cluster cache as if read inline.
   */
  inflateThreads?: number;
}

/**
 * The caches every view of one opened image (and its backing chain) shares. Keys combine the host
 * file's id with the host offset, so snapshots that share L2 tables share cache entries too.
 */
export class SharedCaches {
  readonly l2: LRUCache<number | string, DataView>;
  readonly clusters: LRUCache<number | string, Buffer>;
  /** Snapshot L1 tables, keyed by file id, offset and entry count. */
  readonly snapshotL1: LRUCache<string, Float64Array>;
  /** Inflating ahead of sequential readers, where enabled (inflateThreads). */
  readonly inflater: InflatePool | undefined;
  l2Loads = 0;
  clusterInflations = 0;

  constructor(options: CacheOptions = {}) {
    const l2Bytes = Math.max(MIN_CACHE_BYTES, options.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES);
    const clusterBytes = Math.max(MIN_CACHE_BYTES, options.clusterCacheBytes ?? DEFAULT_CLUSTER_CACHE_BYTES);
    this.l2 = new LRUCache({ maxSize: l2Bytes, sizeCalculation: (v) => v.byteLength });
    this.clusters = new LRUCache({ maxSize: clusterBytes, sizeCalculation: (v) => v.byteLength });
    const l1Bytes = Math.max(DEFAULT_SNAPSHOT_L1_CACHE_BYTES, options.snapshotL1CacheBytes ?? DEFAULT_SNAPSHOT_L1_CACHE_BYTES);
    this.snapshotL1 = new LRUCache({ maxSize: l1Bytes, sizeCalculation: (v) => Math.max(1, v.byteLength) });
    const threads = Math.min(8, Math.max(0, Math.floor(options.inflateThreads ?? 0)));
    // At most 16 clusters in flight or waiting to be taken (readers ask for 1 MiB or two clusters ahead).
    this.inflater = threads > 0 ? new InflatePool(threads, 16) : undefined;
  }
}
