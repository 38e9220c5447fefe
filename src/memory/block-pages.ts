import { QcowError } from '../errors.js';
import type { Disk } from '../disk/disk.js';

/**
 * Where each page of one RAM block is in the VM state, kept as runs: a run starts at a page and lasts
 * until the next run, and is either data (page k of the run is at `where + k * (pageSize + 8)` in the
 * stream: consecutive page records of one block, each an 8-byte header then the page) or a page filled
 * with one byte (a zero-page record), or pages the stream never sent (read as zeros).
 *
 * Memory: 12 bytes per run (Uint32 first page + Float64 where). savevm sends each block's pages once,
 * in order, so a run is a stretch of consecutive data pages or of zero pages: the worst case is every
 * page alternating (16 Mi runs, 192 MiB, for 64 GiB of RAM); a mostly idle guest needs a few KiB.
 * Measured (synthetic streams, Node 20): 64 GiB of zero pages = 1 run, 12 bytes, indexed in
 * 1.9 s (16 Mi records); 1 GiB with every other page data = 262144 runs, 3 MiB.
 * Pages sent again out of order ("the last record wins") go to a bounded map instead.
 */
export class BlockPages {
  readonly pageCount: number;
  /** Pages the stream sent with their bytes, and as zero-page records. */
  dataPages = 0;
  zeroPages = 0;
  private starts = new Uint32Array(16);
  private where = new Float64Array(16);
  private runs = 0;
  /** Pages [0, covered) are described by runs; later ones were never sent. */
  private covered = 0;
  private lastData = -1;
  private resent: Map<number, number> | undefined;
  private readonly stride: number;

  constructor(
    readonly name: string,
    readonly length: number,
    readonly pageSize: number,
    /** The image file, for error messages. */
    readonly file: string,
  ) {
    this.pageCount = Math.ceil(length / pageSize);
    this.stride = pageSize + 8;
  }

  /** Most pages that may be re-sent out of order before the stream is refused (bounds the map). */
  static readonly MAX_RESENT_PAGES = 65536;
  /** `where` for pages no record sent. */
  static readonly UNSENT = -257;

  /** A data page whose bytes start at stream offset `at`. */
  addData(page: number, at: number): boolean {
    this.dataPages++;
    return this.add(page, at);
  }

  /** A page filled with `fill`. */
  addFill(page: number, fill: number): boolean {
    this.zeroPages++;
    return this.add(page, -1 - fill);
  }

  /** False when the page was sent before and too many pages were (the caller refuses the stream). */
  private add(page: number, where: number): boolean {
    if (page < this.covered) {
      this.resent ??= new Map();
      if (this.resent.size >= BlockPages.MAX_RESENT_PAGES && !this.resent.has(page)) return false;
      this.resent.set(page, where);
      return true;
    }
    if (page > this.covered) this.push(this.covered, BlockPages.UNSENT);
    const last = this.runs - 1;
    const extends_ =
      last >= 0 && (where >= 0 ? this.where[last] >= 0 && where === this.lastData + this.stride : this.where[last] === where) && page === this.covered;
    if (!extends_) this.push(page, where);
    if (where >= 0) this.lastData = where;
    this.covered = page + 1;
    return true;
  }

  private push(page: number, where: number): void {
    if (this.runs === this.starts.length) {
      const grow = this.runs * 2;
      const starts = new Uint32Array(grow);
      starts.set(this.starts);
      const w = new Float64Array(grow);
      w.set(this.where);
      this.starts = starts;
      this.where = w;
    }
    this.starts[this.runs] = page;
    this.where[this.runs] = where;
    this.runs++;
  }

  /** Drops the growth slack once the stream is read. */
  finish(): void {
    this.starts = this.starts.slice(0, this.runs);
    this.where = this.where.slice(0, this.runs);
  }

  get runCount(): number {
    return this.runs;
  }

  /** Pages the stream never sent (they read as zeros). */
  get unsentPages(): number {
    let n = this.pageCount - this.covered;
    for (let r = 0; r < this.runs; r++) if (this.where[r] === BlockPages.UNSENT) n += this.runEnd(r) - this.starts[r];
    return n;
  }

  /** Bytes of the index: what the 64 GiB bound is about. */
  get indexBytes(): number {
    return this.starts.byteLength + this.where.byteLength + (this.resent?.size ?? 0) * 64;
  }

  private runEnd(r: number): number {
    return r + 1 < this.runs ? this.starts[r + 1] : this.covered;
  }

  /** The run holding `page` (page < covered). */
  private runOf(page: number): number {
    let lo = 0;
    let hi = this.runs - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid] <= page) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /**
   * Copies block bytes [offset, offset + length) into `into` at `intoAt`. Consecutive data pages come
   * from one read of the VM state (their 8-byte record headers are skipped in memory), through `window`,
   * which reads ahead within the run, so a sequential reader costs about what reading the VM state costs.
   */
  read(into: Uint8Array, intoAt: number, offset: number, length: number, window: StreamWindow): void {
    const ps = this.pageSize;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const page = Math.floor(pos / ps);
      const dst = intoAt + (pos - offset);
      if (page >= this.covered) {
        into.fill(0, dst, dst + (end - pos));
        break;
      }
      const r = this.runOf(page);
      const spanEnd = Math.min(end, this.runEnd(r) * ps);
      const w = this.where[r];
      if (w < 0) {
        into.fill(w === BlockPages.UNSENT ? 0 : -1 - w, dst, dst + (spanEnd - pos));
        pos = spanEnd;
        continue;
      }
      // Data pages: as many as the window holds, from one stretch of the stream.
      const pagesFit = Math.max(1, Math.floor(StreamWindow.BYTES / this.stride));
      const lastPage = Math.min(Math.ceil(spanEnd / ps), page + pagesFit) - 1;
      const stop = Math.min(spanEnd, (lastPage + 1) * ps);
      const first = w + (page - this.starts[r]) * this.stride;
      const from = first + (pos - page * ps);
      const to = first + (lastPage - page) * this.stride + (stop - lastPage * ps);
      const runDataEnd = w + (this.runEnd(r) - this.starts[r]) * this.stride - 8;
      const { buf, at } = window.get(from, to, runDataEnd, this);
      let src = at;
      let p = pos;
      while (p < stop) {
        const pageEnd = Math.min(stop, (Math.floor(p / ps) + 1) * ps);
        buf.copy(into, intoAt + (p - offset), src, src + (pageEnd - p));
        src += pageEnd - p + 8;
        p = pageEnd;
      }
      pos = stop;
    }
    if (this.resent) this.readResent(into, intoAt, offset, length, window.vmState);
  }

  /**
   * Calls `visit(start, end, zero)` for consecutive stretches of block bytes within [offset, offset +
   * length): `zero` where the pages read as zeros (zero-page records, unsent pages). Re-sent pages
   * count as data.
   */
  forEachStretch(offset: number, length: number, visit: (start: number, end: number, zero: boolean) => void): void {
    const ps = this.pageSize;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const page = Math.floor(pos / ps);
      if (page >= this.covered) {
        visit(pos, end, !this.resent);
        return;
      }
      const r = this.runOf(page);
      const stop = Math.min(end, this.runEnd(r) * ps);
      const w = this.where[r];
      visit(pos, stop, !this.resent && (w === BlockPages.UNSENT || w === -1));
      pos = stop;
    }
  }

  private readResent(into: Uint8Array, intoAt: number, offset: number, length: number, vmState: Disk): void {
    const ps = this.pageSize;
    const end = offset + length;
    for (const [page, w] of this.resent ?? []) {
      const a = Math.max(offset, page * ps);
      const b = Math.min(end, (page + 1) * ps);
      if (a >= b) continue;
      const dst = intoAt + (a - offset);
      if (w < 0) into.fill(-1 - w, dst, dst + (b - a));
      else vmState.readSync(into.subarray(dst, dst + (b - a)), w + (a - page * ps));
    }
  }
}

/**
 * The stretch of the VM state last read for data pages, kept so that a sequential reader's next pages
 * (FUSE asks for 128 KiB at a time) come from memory: about one read of the VM state per MiB. Reads
 * are synchronous, so one window serves every block of a VM state.
 */
export class StreamWindow {
  static readonly BYTES = 1024 * 1024;
  private readonly buf = Buffer.allocUnsafe(StreamWindow.BYTES);
  private from = 0;
  private to = 0;

  constructor(readonly vmState: Disk) {}

  /** Stream bytes [from, to) (at most BYTES), reading ahead up to `limit` when not held. */
  get(from: number, to: number, limit: number, block: BlockPages): { buf: Buffer; at: number } {
    if (from >= this.from && to <= this.to) return { buf: this.buf, at: from - this.from };
    const end = Math.max(to, Math.min(limit, from + StreamWindow.BYTES));
    this.to = 0; // nothing valid while reading: a failed read leaves nothing behind
    const got = this.vmState.readSync(this.buf.subarray(0, end - from), from);
    if (got < to - from) throw new QcowError('EIO', block.file, `VM state ends before the pages of RAM block "${block.name}" at ${from}`);
    this.from = from;
    this.to = from + got;
    return { buf: this.buf, at: 0 };
  }
}
