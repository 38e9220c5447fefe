import { CONTROL_BYTES, SLOT } from './remote-protocol.js';

/** One block of a remote file: its bytes and control word, both in memory the network worker writes. */
export interface CachedBlock {
  file: number;
  index: number;
  control: SharedArrayBuffer;
  /** Int32 view of the control word (SLOT.*). */
  state: Int32Array;
  data: SharedArrayBuffer;
}

/**
 * Fixed-size blocks of remote files, least recently used evicted first, bounded in bytes. One cache
 * may serve every file of a backing chain. Blocks still being fetched are never evicted (the worker
 * writes into them); evicted blocks' shared buffers are reused rather than freed.
 */
export class BlockCache {
  readonly maxBlocks: number;
  private readonly blocks = new Map<number, CachedBlock>();
  /** Small dense numbers for the files this cache serves (key = index * 2^16 + slot, a plain number). */
  private readonly slots = new Map<number, number>();
  private readonly spare: CachedBlock[] = [];
  /** Blocks ever allocated (their buffers live as long as the cache). */
  private allocated = 0;

  constructor(
    /** Bytes of block data kept at most (rounded down to whole blocks, at least 16 blocks). */
    readonly capacityBytes: number,
    readonly blockSize: number,
  ) {
    this.maxBlocks = Math.max(16, Math.floor(capacityBytes / blockSize));
  }

  /** Bytes held in buffers now (data of cached blocks and spare buffers). */
  get bytes(): number {
    return this.allocated * this.blockSize;
  }

  get count(): number {
    return this.blocks.size;
  }

  /** The block if cached (ready, or pending a fetch), marked most recently used. */
  get(file: number, index: number): CachedBlock | undefined {
    const key = this.keyOf(file, index);
    const block = this.blocks.get(key);
    if (block) {
      this.blocks.delete(key);
      this.blocks.set(key, block);
    }
    return block;
  }

  has(file: number, index: number): boolean {
    return this.blocks.has(this.keyOf(file, index));
  }

  /**
   * A new PENDING block for (file, index), evicting the least recently used settled block if the cache
   * is full; undefined when every block is still being fetched.
   */
  claim(file: number, index: number): CachedBlock | undefined {
    let block = this.spare.pop();
    if (!block && this.allocated < this.maxBlocks) {
      this.allocated++;
      const control = new SharedArrayBuffer(CONTROL_BYTES);
      block = { file, index, control, state: new Int32Array(control, 0, 2), data: new SharedArrayBuffer(this.blockSize) };
    }
    if (!block) block = this.evictOne();
    if (!block) return undefined;
    block.file = file;
    block.index = index;
    Atomics.store(block.state, 0, SLOT.PENDING);
    this.blocks.set(this.keyOf(file, index), block);
    return block;
  }

  /** Forgets a block (a failed fetch): its buffer is reused once the worker is done with it. */
  drop(block: CachedBlock): void {
    const key = this.keyOf(block.file, block.index);
    if (this.blocks.get(key) !== block) return;
    this.blocks.delete(key);
    if (Atomics.load(block.state, 0) !== SLOT.PENDING) this.spare.push(block);
    else this.allocated--; // still the worker's: let it be collected when it lets go
  }

  /** Forgets every settled block of a file (pending ones are evicted later, once settled). */
  dropFile(file: number): void {
    for (const block of [...this.blocks.values()]) if (block.file === file && Atomics.load(block.state, 0) !== SLOT.PENDING) this.drop(block);
  }

  /** A block still being fetched, if any (to wait for when the cache is full of them). */
  somePending(): CachedBlock | undefined {
    for (const block of this.blocks.values()) if (Atomics.load(block.state, 0) === SLOT.PENDING) return block;
    return undefined;
  }

  private evictOne(): CachedBlock | undefined {
    for (const [key, block] of this.blocks) {
      if (Atomics.load(block.state, 0) === SLOT.PENDING) continue;
      this.blocks.delete(key);
      return block;
    }
    return undefined;
  }

  /**
   * A number, not a string (no allocation or hashing per lookup: a sequential reader's read-ahead looks
   * up each block of its window on every read). Exact while index < 2^37 (512 TiB in 4 KiB blocks).
   */
  private keyOf(file: number, index: number): number {
    let slot = this.slots.get(file);
    if (slot === undefined) {
      slot = this.slots.size;
      if (slot >= 0x10000) throw new Error('a block cache serves at most 65536 files');
      this.slots.set(file, slot);
    }
    return index * 0x10000 + slot;
  }
}
