import type { SharedCaches } from '../caches.js';
import { DecompressError, decompressCluster } from '../codec/decompress.js';
import { QcowError, hex } from '../errors.js';
import type { DataDecryption } from '../encryption.js';
import type { CompressionType } from '../format/header.js';
import { type ImageFile, fileOffsetKey } from '../io/image-file.js';
import type { Run } from '../translate/qcow2-map.js';

/**
 * Reads the guest bytes of one qcow2 file's runs from where they are stored: data runs straight from the
 * data file, compressed clusters inflated once into the shared cluster cache (or by the inflate pool,
 * ahead of a sequential reader). What a run's bytes need before they are served happens here: data runs
 * of an encrypted image are decrypted per 512-byte sector (compressed clusters never are: QEMU stores
 * them in the clear and inflates them without decrypting).
 */
/** zstd clusters go to the inflate pool only from this many worker threads (see inflateAhead). */
export const ZSTD_POOL_MIN_THREADS = 3;

export class ClusterReader {
  constructor(
    /** Where guest data lives: the external data file, or the qcow2 file. */
    readonly dataFile: ImageFile,
    readonly compressionType: CompressionType,
    readonly clusterSize: number,
    private readonly caches: SharedCaches,
    /** Set for an encrypted image that a key opened. */
    readonly decryption?: DataDecryption,
    /** Set for an encrypted image that no key opened: reading its data is refused with this. */
    private readonly locked?: QcowError,
  ) {}

  /** A read's sectors that start or end mid-sector are decrypted here, then copied out. */
  private bounce = Buffer.alloc(0);

  /** Whether worker threads can inflate clusters ahead of a reader. */
  get inflatesAhead(): boolean {
    return this.caches.inflater !== undefined;
  }

  /**
   * Whether a data run's guest bytes are its host bytes as stored, untransformed. The native FUSE
   * back-end splices such runs from the data file itself, bypassing readData: anything that makes
   * readData transform bytes (decryption) must make this false.
   */
  get servesHostBytes(): boolean {
    return this.decryption === undefined && this.locked === undefined;
  }

  /**
   * Reads `length` bytes of a data run at host offset `host` (guest offset `guest` in its L1 space) into
   * `into[dst..]`, decrypted where the image is encrypted.
   */
  readData(into: Uint8Array, dst: number, length: number, host: number, guest: number): void {
    const d = this.decryption;
    if (!d) {
      if (this.locked) throw this.locked;
      this.dataFile.readAt(into, dst, length, host, 'guest data');
      return;
    }
    const lead = host % 512;
    const span = Math.ceil((lead + length) / 512) * 512;
    if (lead === 0 && span === length) {
      this.dataFile.readAt(into, dst, length, host, 'guest data');
      d.decrypt(into.subarray(dst, dst + length), host, guest);
      return;
    }
    if (this.bounce.length < span) this.bounce = Buffer.alloc(Math.max(span, 64 * 1024));
    const sectors = this.bounce.subarray(0, span);
    this.dataFile.readAt(sectors, 0, span, host - lead, 'guest data');
    d.decrypt(sectors, host - lead, guest - lead);
    into.set(sectors.subarray(lead, lead + length), dst);
  }

  /** Zeroes the key this reader decrypts with. */
  close(): void {
    this.decryption?.close();
    this.bounce.fill(0);
  }

  /** The inflated contents of a compressed run's cluster. */
  compressedCluster(run: Run): Buffer {
    const key = fileOffsetKey(this.dataFile.id, run.host);
    const cached = this.caches.clusters.get(key);
    if (cached) return cached;
    const ahead = this.caches.inflater?.take(key);
    if (ahead) {
      this.caches.clusters.set(key, ahead);
      this.caches.clusterInflations++;
      return ahead;
    }
    const where = `compressed cluster at ${hex(run.host)} (guest offset ${hex(run.guestCluster)})`;
    if (run.host >= this.dataFile.size) {
      throw new QcowError('EIO', this.dataFile.path, `${where} lies past the end of the file (size ${this.dataFile.size})`);
    }
    // The descriptor's last sector may reach past the end of the file; QEMU reads zeros there.
    const src = Buffer.allocUnsafe(run.hostLength);
    this.dataFile.readAt(src, 0, run.hostLength, run.host, 'compressed cluster');
    const cluster = Buffer.allocUnsafe(this.clusterSize);
    try {
      decompressCluster(this.compressionType, src, cluster);
    } catch (err) {
      if (err instanceof DecompressError) throw new QcowError('EIO', this.dataFile.path, `${where}: ${err.message}`);
      throw err;
    }
    this.caches.clusters.set(key, cluster);
    this.caches.clusterInflations++;
    return cluster;
  }

  /**
   * Has a compressed run's cluster inflated by a worker, unless it is cached or on its way already. Best
   * effort: anything odd (past the end of the file, a full pool) is left to the read that will need the
   * cluster, which inflates it itself and reports any error.
   */
  inflateAhead(run: Run): void {
    const pool = this.caches.inflater;
    if (!pool) return;
    // zstd inflates a 64 KiB cluster in ~60 us, zlib in ~130 us. On 2 cores, through FUSE, handing
    // clusters to workers gained 9-28% for zlib but cost 2-10% for zstd (the cores are busy already);
    // so zstd goes to workers only where there are cores to spare.
    if (this.compressionType === 'zstd' && pool.threads < ZSTD_POOL_MIN_THREADS) return;
    const key = fileOffsetKey(this.dataFile.id, run.host);
    if (pool.has(key) || this.caches.clusters.has(key) || run.host >= this.dataFile.size) return;
    if (pool.size >= pool.maxJobs) pool.harvest((k, c) => this.caches.clusters.set(k, c));
    const src = Buffer.allocUnsafe(run.hostLength);
    this.dataFile.readAt(src, 0, run.hostLength, run.host, 'compressed cluster');
    pool.submit(key, this.compressionType, src, this.clusterSize);
  }
}
