import type { LRUCache } from 'lru-cache';
import { QcowError, hex } from '../errors.js';
import type { Header } from '../format/header.js';
import { l2EntriesPerTable } from '../format/header.js';
import { COMPRESSED_HI, ClusterType, L1_OFFSET_HI_MASK, OFFSET_LO_MASK, ZERO_FLAG_LO, classifyExtended, classifyStandard, compressedDescriptor, standardOffset } from '../format/l2.js';
import { type ImageFile, fileOffsetKey } from '../io/image-file.js';

/** What a run of guest bytes is, as the L2 tables say. */
export const enum RunKind {
  /** Stored as it is in the data file, at `Run.host`. */
  Data = 1,
  /** Reads as zeros: a zero flag or zero subclusters. */
  Zero = 2,
  /** Not allocated in this image: the backing file's bytes, else zeros. */
  Unallocated = 3,
  /** One compressed cluster (never more than one per run): descriptor at `host`, `hostLength` bytes. */
  Compressed = 4,
}

/**
 * One run, filled in by `Qcow2Map.mapRun` and reused by its caller for the next one, so that
 * translating a read allocates nothing.
 */
export class Run {
  kind: RunKind = RunKind.Unallocated;
  /** Guest bytes the run covers. */
  length = 0;
  /** Data: host offset of the first byte. Compressed: host offset of the compressed stream. */
  host = 0;
  /** Compressed: bytes from `host` to the end of the descriptor's last sector. */
  hostLength = 0;
  /** Compressed: offset of the run's first byte inside the inflated cluster. */
  inCluster = 0;
  /** Compressed: the cluster's guest offset in the L1 space (for messages and cache keys). */
  guestCluster = 0;
}

/** What a disk view needs of a mapping: qcow2's (Qcow2Map) or qcow v1's (Qcow1Map). */
export interface GuestMap {
  readonly clusterSize: number;
  mapRun(l1: Float64Array, origin: number, position: number, length: number, run: Run): void;
}

/** The L2 table cache shared by every view and image of a chain (SharedCaches has this shape). */
export interface L2Cache {
  readonly l2: LRUCache<number | string, DataView>;
  l2Loads: number;
}

/**
 * Guest-to-host translation of one qcow2 file: its cluster geometry and its L2 tables (through the
 * shared cache). Maps only: it reads L1/L2 tables, never guest data.
 */
export class Qcow2Map implements GuestMap {
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly l2Entries: number;
  /** Guest bytes one L2 table maps. */
  readonly l2Span: number;
  readonly entryBytes: 8 | 16;
  readonly subclusterSize: number;
  readonly hasDataFile: boolean;
  private readonly version: number;
  /** One piece at a time while a run is being grown. */
  private readonly piece = new Run();

  constructor(
    header: Header,
    /** The qcow2 file: L2 tables live here. */
    readonly file: ImageFile,
    /** Where guest data lives (the external data file, or the qcow2 file): its size bounds data clusters. */
    readonly dataFile: ImageFile,
    private readonly cache: L2Cache,
  ) {
    this.clusterBits = header.clusterBits;
    this.clusterSize = header.clusterSize;
    this.l2Entries = l2EntriesPerTable(header);
    this.l2Span = this.l2Entries * this.clusterSize;
    this.entryBytes = header.extendedL2 ? 16 : 8;
    this.subclusterSize = header.extendedL2 ? this.clusterSize / 32 : this.clusterSize;
    this.hasDataFile = header.hasDataFile;
    this.version = header.version;
  }

  /** The L2 table at `offset`, from the cache or the file. */
  l2Table(offset: number, l1Index: number): DataView {
    const key = fileOffsetKey(this.file.id, offset);
    const cached = this.cache.l2.get(key);
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
    this.cache.l2.set(key, table);
    this.cache.l2Loads++;
    return table;
  }

  /**
   * Fills `run` with the longest run of one kind that starts at `position` of a view (its L1 table `l1`,
   * starting at `origin` of the L1 space) and ends within `length` bytes: data runs as far as the host
   * clusters follow each other, zero and unallocated runs across entries and tables, a compressed run
   * within its one cluster. The caller loops until its range is covered. A bad entry inside the range
   * throws a QcowError (EIO) naming it; entries past the range are not looked at.
   */
  mapRun(l1: Float64Array, origin: number, position: number, length: number, run: Run): void {
    this.mapPiece(l1, origin + position, length, run);
    const piece = this.piece;
    let covered = run.length;
    while (covered < length && run.kind !== RunKind.Compressed) {
      if (this.entryBytes === 8) {
        covered += this.continueInTable(l1, origin + position + covered, length - covered, run, covered);
        if (covered >= length) break;
      }
      // The entry that ends the run (or starts the next table) is mapped, and checked, the usual way.
      this.mapPiece(l1, origin + position + covered, length - covered, piece);
      if (piece.kind !== run.kind || (run.kind === RunKind.Data && piece.host !== run.host + covered)) break;
      covered += piece.length;
    }
    run.length = covered;
  }

  /**
   * Bytes from `guest` (a cluster boundary) that continue `run` through the standard entries of one L2
   * table: a tight loop over the table in hand, where mapPiece would look the table up again for every
   * cluster (a fully allocated 1 GiB view is 16384 of them, walked cold at every export's start). Stops
   * before the first entry that does not continue the run; entries it passes get mapPiece's checks.
   */
  private continueInTable(l1: Float64Array, guest: number, length: number, run: Run, covered: number): number {
    const { clusterSize, l2Span, l2Entries, hasDataFile } = this;
    const kind = run.kind;
    if (kind === RunKind.Compressed || (kind === RunKind.Zero && this.version < 3)) return 0;
    const l1Index = Math.floor(guest / l2Span);
    if (l1Index >= l1.length || l1[l1Index] === 0) return 0;
    const tableBase = l1Index * l2Span;
    if ((guest - tableBase) % clusterSize !== 0) return 0;
    const table = this.l2Table(l1[l1Index]!, l1Index);
    let index = (guest - tableBase) / clusterSize;
    let nextHost = run.host + covered;
    let done = 0;
    if (kind === RunKind.Data && !hasDataFile) {
      // The common case, inlined (the loop runs cold, in the interpreter): an entry goes on with the run if
      // it is neither compressed nor zero-flagged and holds the next host cluster, which must lie in the file.
      const size = this.dataFile.size;
      for (; done < length && index < l2Entries; index++) {
        const hi = table.getUint32(index * 8);
        const lo = table.getUint32(index * 8 + 4);
        if (hi & COMPRESSED_HI || lo & ZERO_FLAG_LO) break;
        if ((hi & L1_OFFSET_HI_MASK) !== Math.floor(nextHost / 0x1_0000_0000) || (lo & OFFSET_LO_MASK) >>> 0 !== nextHost % 0x1_0000_0000) break;
        if (nextHost >= size) this.hostCluster(hi, lo, tableBase + index * clusterSize, true); // throws, naming it
        nextHost += clusterSize;
        done += Math.min(clusterSize, length - done);
      }
      return done;
    }
    for (; done < length && index < l2Entries; index++) {
      const hi = table.getUint32(index * 8);
      const lo = table.getUint32(index * 8 + 4);
      const type = classifyStandard(hi, lo, hasDataFile);
      if (kind === RunKind.Data) {
        if (type !== ClusterType.Data || standardOffset(hi, lo) !== nextHost) break;
        this.hostCluster(hi, lo, tableBase + index * clusterSize, true);
        nextHost += clusterSize;
      } else if (kind === RunKind.Zero) {
        if (type !== ClusterType.Zero) break;
        if (standardOffset(hi, lo) !== 0) this.hostCluster(hi, lo, tableBase + index * clusterSize, false);
      } else if (type !== ClusterType.Unallocated) break;
      done += Math.min(clusterSize, length - done);
    }
    return done;
  }

  /** One piece at guest offset `guest` of the L1 space: within one entry, or one L2 span where none. */
  private mapPiece(l1: Float64Array, guest: number, length: number, out: Run): void {
    const { clusterSize, l2Span } = this;
    const l1Index = Math.floor(guest / l2Span);
    out.kind = RunKind.Unallocated;
    if (l1Index >= l1.length) {
      // Past the L1 table nothing is mapped: one run to the end (a snapshot may claim a 1 PiB disk with
      // a one-entry L1 table).
      out.length = length;
      return;
    }
    const tableBase = l1Index * l2Span;
    const l2Offset = l1[l1Index]!;
    if (l2Offset === 0) {
      out.length = Math.min(length, tableBase + l2Span - guest);
      return;
    }
    const table = this.l2Table(l2Offset, l1Index);
    const index = Math.floor((guest - tableBase) / clusterSize);
    const clusterStart = tableBase + index * clusterSize;
    const inCluster = guest - clusterStart;
    out.length = Math.min(length, clusterSize - inCluster);
    const at = index * this.entryBytes;
    const hi = table.getUint32(at);
    const lo = table.getUint32(at + 4);
    if (this.entryBytes === 8) {
      const type = classifyStandard(hi, lo, this.hasDataFile);
      if (type === ClusterType.Data) {
        out.kind = RunKind.Data;
        out.host = this.hostCluster(hi, lo, clusterStart, true) + inCluster;
      } else if (type === ClusterType.Zero) {
        if (this.version < 3) {
          // QEMU: "Zero cluster entry found in pre-v3 image" (EIO); bit 0 means nothing before v3.
          throw new QcowError('EIO', this.file.path, `zero cluster entry in a version 2 image for guest offset ${hex(clusterStart)} (zero flags need version 3)`);
        }
        if (standardOffset(hi, lo) !== 0) this.hostCluster(hi, lo, clusterStart, false); // QEMU checks a preallocated zero cluster too
        out.kind = RunKind.Zero;
      } else if (type === ClusterType.Compressed) this.compressed(hi, lo, clusterStart, inCluster, out);
      return;
    }
    this.mapSubclusters(hi, lo, table.getUint32(at + 12), table.getUint32(at + 8), clusterStart, inCluster, out);
  }

  private mapSubclusters(hi: number, lo: number, allocMask: number, zeroMask: number, clusterStart: number, inCluster: number, out: Run): void {
    const type = classifyExtended(hi, lo, this.hasDataFile, allocMask, zeroMask);
    // QEMU checks the host offset of every entry that has one (zero and unallocated subclusters of an
    // allocated cluster too), whichever subcluster is read.
    const hasOffset = standardOffset(hi, lo) !== 0 || (this.hasDataFile && (hi & 0x80000000) !== 0);
    switch (type) {
      case ClusterType.Compressed:
        this.compressed(hi, lo, clusterStart, inCluster, out);
        return;
      case ClusterType.Data:
        out.kind = RunKind.Data;
        out.host = this.hostCluster(hi, lo, clusterStart, true) + inCluster;
        return;
      case ClusterType.Zero:
      case ClusterType.Unallocated:
        if (hasOffset) this.hostCluster(hi, lo, clusterStart, false);
        out.kind = type === ClusterType.Zero ? RunKind.Zero : RunKind.Unallocated;
        return;
      case ClusterType.Invalid:
        throw new QcowError(
          'EIO',
          this.file.path,
          `extended L2 entry for guest cluster ${hex(clusterStart)} is invalid (bitmap alloc ${hex(allocMask)}, zero ${hex(zeroMask)}, offset ${hex(standardOffset(hi, lo))})`,
        );
    }
    // Mixed subclusters: the piece is the subclusters from inCluster that share the first one's state.
    const host = allocMask !== 0 ? this.hostCluster(hi, lo, clusterStart, true) : hasOffset ? this.hostCluster(hi, lo, clusterStart, false) : 0;
    const sc = this.subclusterSize;
    const first = Math.floor(inCluster / sc);
    const kind = subclusterKind(allocMask, zeroMask, first);
    let last = first;
    while (last < 31 && subclusterKind(allocMask, zeroMask, last + 1) === kind) last++;
    out.kind = kind;
    out.length = Math.min(out.length, (last + 1) * sc - inCluster);
    if (kind === RunKind.Data) out.host = host + inCluster;
  }

  private compressed(hi: number, lo: number, clusterStart: number, inCluster: number, out: Run): void {
    // QEMU refuses compressed clusters in an image with an external data file (EIO).
    if (this.hasDataFile) {
      throw new QcowError('EIO', this.file.path, `compressed cluster entry for guest offset ${hex(clusterStart)} in an image with an external data file`);
    }
    const { offset, length } = compressedDescriptor(hi, lo, this.clusterBits);
    out.kind = RunKind.Compressed;
    out.host = offset;
    out.hostLength = length;
    out.inCluster = inCluster;
    out.guestCluster = clusterStart;
  }

  /** The host cluster of a data entry, checked as QEMU checks it before using it. */
  private hostCluster(hi: number, lo: number, guestCluster: number, willRead: boolean): number {
    const host = standardOffset(hi, lo);
    if (host % this.clusterSize !== 0) {
      throw new QcowError('EIO', this.file.path, `cluster offset ${hex(host)} for guest offset ${hex(guestCluster)} is not cluster aligned`);
    }
    if (this.hasDataFile) {
      if (host !== guestCluster) {
        throw new QcowError('EIO', this.file.path, `external data file offset ${hex(host)} does not match guest offset ${hex(guestCluster)}`);
      }
    } else if (willRead && host >= this.dataFile.size) {
      throw new QcowError('EIO', this.file.path, `data cluster at ${hex(host)} for guest offset ${hex(guestCluster)} lies past the end of the file (size ${this.dataFile.size})`);
    }
    return host;
  }
}

function subclusterKind(allocMask: number, zeroMask: number, bit: number): RunKind {
  return (allocMask >>> bit) & 1 ? RunKind.Data : (zeroMask >>> bit) & 1 ? RunKind.Zero : RunKind.Unallocated;
}
