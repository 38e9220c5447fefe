import { QcowError, hex } from '../errors.js';
import type { Header } from '../format/header.js';
import { l2EntriesPerTable } from '../format/header.js';
import { compressedDescriptor } from '../format/l2.js';
import { DecompressError, decompressCluster } from '../codec/decompress.js';
import type { HostFile } from '../io/host-file.js';
import { type SharedCaches, cacheKey } from './caches.js';

/**
 * The cluster geometry and metadata access of one qcow2 file: L2 tables and decompressed clusters,
 * both through the caches shared with every other view and image of the chain.
 */
export class Qcow2Metadata {
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly l2Entries: number;
  /** Guest bytes one L2 table maps. */
  readonly l2Span: number;
  readonly entryBytes: 8 | 16;
  readonly extendedL2: boolean;
  readonly subclusterSize: number;
  readonly hasDataFile: boolean;

  constructor(
    readonly header: Header,
    /** The qcow2 file itself: metadata lives here. */
    readonly file: HostFile,
    /** Where guest data lives: the external data file, or the qcow2 file. */
    readonly dataFile: HostFile,
    readonly caches: SharedCaches,
    /** 0 for the top image, 1 for its backing file, and so on. */
    readonly depth: number,
  ) {
    this.clusterBits = header.clusterBits;
    this.clusterSize = header.clusterSize;
    this.l2Entries = l2EntriesPerTable(header);
    this.l2Span = this.l2Entries * this.clusterSize;
    this.extendedL2 = header.extendedL2;
    this.entryBytes = header.extendedL2 ? 16 : 8;
    this.subclusterSize = header.extendedL2 ? this.clusterSize / 32 : this.clusterSize;
    this.hasDataFile = header.hasDataFile;
  }

  /** The L2 table at `offset`, from the cache or the file. */
  l2Table(offset: number, l1Index: number): DataView {
    const key = cacheKey(this.file.id, offset);
    const cached = this.caches.l2.get(key);
    if (cached) return cached;
    if (offset % this.clusterSize !== 0) {
      throw new QcowError('EIO', this.file.path, `L2 table offset ${hex(offset)} (L1 index ${l1Index}) is not cluster aligned`);
    }
    // A table that starts past the end is EIO; one cut by the end reads zeros (unallocated entries)
    // past it, as QEMU's file driver reads a truncated image.
    if (offset >= this.file.size) {
      throw new QcowError('EIO', this.file.path, `L2 table at ${hex(offset)} (L1 index ${l1Index}) lies past the end of the file (size ${this.file.size})`);
    }
    const bytes = Buffer.allocUnsafe(this.clusterSize);
    this.file.readAt(bytes, 0, this.clusterSize, offset, `L2 table (L1 index ${l1Index})`);
    const table = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.caches.l2.set(key, table);
    this.caches.l2Loads++;
    return table;
  }

  /** The inflated contents of the compressed cluster an L2 entry (hi, lo) describes. */
  compressedCluster(hi: number, lo: number, guestOffset: number): Buffer {
    const { offset, length } = compressedDescriptor(hi, lo, this.clusterBits);
    const key = cacheKey(this.dataFile.id, offset);
    const cached = this.caches.clusters.get(key);
    if (cached) return cached;
    const ahead = this.caches.inflater?.take(key);
    if (ahead) {
      this.caches.clusters.set(key, ahead);
      this.caches.clusterInflations++;
      return ahead;
    }
    const where = `compressed cluster at ${hex(offset)} (guest offset ${hex(guestOffset)})`;
    if (offset >= this.dataFile.size) {
      throw new QcowError('EIO', this.dataFile.path, `${where} lies past the end of the file (size ${this.dataFile.size})`);
    }
    // The descriptor's last sector may reach past the end of the file; QEMU reads zeros there.
    const src = Buffer.allocUnsafe(length);
    this.dataFile.readAt(src, 0, length, offset, 'compressed cluster');
    const cluster = Buffer.allocUnsafe(this.clusterSize);
    try {
      decompressCluster(this.header.compressionType, src, cluster);
    } catch (err) {
      if (err instanceof DecompressError) throw new QcowError('EIO', this.dataFile.path, `${where}: ${err.message}`);
      throw err;
    }
    this.caches.clusters.set(key, cluster);
    this.caches.clusterInflations++;
    return cluster;
  }

  /**
   * Has the compressed cluster an L2 entry (hi, lo) describes inflated by a worker, unless it is cached
   * or on its way already. Best effort: anything odd (past the end of the file, a full pool) is left to
   * the read that will need the cluster, which inflates it itself and reports any error.
   */
  inflateAhead(hi: number, lo: number): void {
    const pool = this.caches.inflater;
    if (!pool) return;
    // zstd inflates a 64 KiB cluster in ~60 us, zlib in ~130 us. On 2 cores, through FUSE, handing
    // clusters to workers gained 9-28% for zlib but cost 2-10% for zstd (the cores are busy already);
    // so zstd goes to workers only where there are cores to spare.
    if (this.header.compressionType === 'zstd' && pool.threads < 3) return;
    const { offset, length } = compressedDescriptor(hi, lo, this.clusterBits);
    const key = cacheKey(this.dataFile.id, offset);
    if (pool.has(key) || this.caches.clusters.has(key) || offset >= this.dataFile.size) return;
    if (pool.size >= pool.maxJobs) pool.harvest((k, c) => this.caches.clusters.set(k, c));
    const src = Buffer.allocUnsafe(length);
    this.dataFile.readAt(src, 0, length, offset, 'compressed cluster');
    pool.submit(key, this.header.compressionType, src, this.clusterSize);
  }
}
