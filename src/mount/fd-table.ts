import type { FileNode } from './tree.js';

/**
 * Open file handles: FUSE's fh numbers mapped to the node opened, so a read finds its disk without a
 * path lookup. Numbers start at 1 (0 is what FUSE reports when no handle was given) and are reused
 * lowest-first once released.
 */
export class FdTable {
  private readonly open = new Map<number, FileNode>();
  private readonly free: number[] = [];
  private next = 1;

  get size(): number {
    return this.open.size;
  }

  allocate(node: FileNode): number {
    let fd: number;
    if (this.free.length > 0) {
      this.free.sort((a, b) => b - a);
      fd = this.free.pop()!;
    } else {
      fd = this.next++;
    }
    this.open.set(fd, node);
    return fd;
  }

  get(fd: number): FileNode | undefined {
    return this.open.get(fd);
  }

  /** Forgets a handle; false when it was not open. */
  release(fd: number): boolean {
    if (!this.open.delete(fd)) return false;
    this.free.push(fd);
    return true;
  }
}
