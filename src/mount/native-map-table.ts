/**
 * Builds one table of the native back-end's translation map from a walk over guest runs: for each
 * cluster, its host offset when the whole cluster is one stored run, -2 when it all reads as zeros,
 * -1 (unknown: JavaScript serves it) for anything else — mixed subclusters, compressed clusters the
 * native side does not inflate, runs that fall through to a backing file, data the host file does not
 * wholly hold. A zlib cluster the native side inflates: its stream's host offset, and the stream's
 * length in `zlibLengths` (0 for every other entry).
 */
export const UNKNOWN = -1;
export const ZEROS = -2;

export class MapTableBuilder {
  readonly entries: Float64Array;
  /** For a zlib cluster, its stream's bytes (to the end of its last sector); else 0. */
  readonly zlibLengths: Float64Array;
  /** Bytes of each cluster covered so far by runs of one kind (-1: mixed, never published). */
  private readonly covered: Float64Array;

  constructor(
    /** Guest position (in the view) of the table's first cluster. */
    readonly start: number,
    clusters: number,
    readonly clusterSize: number,
    /** Bytes of the view past `start` (the last table may end early). */
    readonly limit: number,
    /** Size of the host file data runs point into: a cluster past its end stays with JS. */
    readonly hostSize: number,
  ) {
    this.entries = new Float64Array(clusters).fill(UNKNOWN);
    this.zlibLengths = new Float64Array(clusters);
    this.covered = new Float64Array(clusters);
  }

  /** A stored run at guest `pos` (view position) of `length` bytes, at `host` in the host file. */
  data(pos: number, length: number, host: number): void {
    // Each cluster's host start, as this run places it.
    this.each(pos, length, (i, inCluster, n, p) => {
      if (this.zlibLengths[i] !== 0) this.covered[i] = -1;
      this.mark(i, inCluster, n, host + (p - pos) - inCluster);
    });
  }

  /** A run that reads as zeros without any file (zero flag, or unallocated with no backing file). */
  zero(pos: number, length: number): void {
    this.each(pos, length, (i, inCluster, n) => {
      if (this.zlibLengths[i] !== 0) this.covered[i] = -1;
      this.mark(i, inCluster, n, ZEROS);
    });
  }

  /** A zlib-compressed cluster's run: its stream at `host`, `hostLength` bytes to its last sector's end. */
  zlib(pos: number, length: number, host: number, hostLength: number): void {
    this.each(pos, length, (i, inCluster, n) => {
      if (this.covered[i] !== 0 && this.zlibLengths[i] !== hostLength) this.covered[i] = -1;
      this.zlibLengths[i] = hostLength;
      this.mark(i, inCluster, n, host);
    });
  }

  /** A run JS must serve (compressed, backing, encrypted...): its clusters stay unknown. */
  other(pos: number, length: number): void {
    this.each(pos, length, (i) => {
      this.covered[i] = -1;
      this.entries[i] = UNKNOWN;
    });
  }

  /** The entries, with clusters not wholly covered by one kind left unknown. */
  finish(): Float64Array {
    const cs = this.clusterSize;
    for (let i = 0; i < this.entries.length; i++) {
      const want = Math.min(cs, this.limit - i * cs);
      if (want <= 0 || this.covered[i] !== want) this.entries[i] = UNKNOWN;
      else if (this.zlibLengths[i] !== 0) {
        // A stream starting past the end of the file is EIO, said by JavaScript.
        if (this.entries[i]! >= this.hostSize) this.entries[i] = UNKNOWN;
      } else if (this.entries[i]! >= 0 && this.entries[i]! + cs > this.hostSize) this.entries[i] = UNKNOWN;
      if (this.entries[i] === UNKNOWN) this.zlibLengths[i] = 0;
    }
    return this.entries;
  }

  private mark(i: number, inCluster: number, n: number, value: number): void {
    if (this.covered[i] === -1) return;
    if (this.covered[i] === 0) {
      this.entries[i] = value;
    } else if (this.entries[i] !== value) {
      this.covered[i] = -1;
      return;
    }
    // Runs arrive in guest order: a cluster is whole when its covered bytes reach its size.
    if (inCluster !== this.covered[i]) {
      this.covered[i] = -1;
      return;
    }
    this.covered[i]! += n;
  }

  private each(pos: number, length: number, fn: (index: number, inCluster: number, n: number, at: number) => void): void {
    const cs = this.clusterSize;
    let p = Math.max(pos, this.start);
    const end = Math.min(pos + length, this.start + this.limit, this.start + this.entries.length * cs);
    while (p < end) {
      const rel = p - this.start;
      const i = Math.floor(rel / cs);
      const inCluster = rel - i * cs;
      const n = Math.min(cs - inCluster, end - p);
      fn(i, inCluster, n, p);
      p += n;
    }
  }
}
