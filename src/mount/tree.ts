import type { Disk } from '../disk/disk.js';
import type { QcowImage } from '../image.js';
import { type ImageInfo, describeImage } from '../info/describe.js';
import type { MemoryOptions } from '../memory/guest-memory.js';
import { snapshotFileNames } from '../names/snapshot-names.js';
import type { Volume } from '../volume/partitions.js';
import { imageVolumes } from '../volume/image-volumes.js';

/**
 * The file tree a mount shows, built once from an opened image (the image is immutable while mounted):
 *
 *   /active.raw            the active disk
 *   /active.pN             its partitions (Linux numbers), where it has an MBR or a GPT
 *   /info.json             describeImage() as JSON
 *   /snapshots/NAME.raw    each snapshot's disk
 *   /snapshots/NAME.pN     that disk's partitions
 *   /snapshots/NAME.vmstate  each snapshot's VM state, where it saved one
 *   /snapshots/NAME.ram    its guest-physical RAM, flat, where the RAM could be rebuilt from the VM state
 *   /snapshots/NAME.core   the same RAM as an ELF64 core (one PT_LOAD per physical range)
 */
export type MountNode = DirNode | DiskNode | BytesNode;

interface NodeBase {
  /** Absolute path inside the mount, `/` for the root. */
  path: string;
  /** Inode-like number, stable for the life of the mount. */
  ino: number;
  mtime: Date;
}

export interface DirNode extends NodeBase {
  kind: 'dir';
  /** Child names in display order. */
  children: Map<string, MountNode>;
}

export interface DiskNode extends NodeBase {
  kind: 'disk';
  disk: Disk;
  size: number;
  /** What the file is, for log lines: `active disk`, `snapshot "x" (id 1)`, ... */
  what: string;
}

export interface BytesNode extends NodeBase {
  kind: 'bytes';
  bytes: Buffer;
  size: number;
}

export type FileNode = DiskNode | BytesNode;

export class MountTree {
  readonly root: DirNode;
  private readonly byPath = new Map<string, MountNode>();
  private nextIno = 1;

  constructor(mtime: Date) {
    this.root = this.add({ kind: 'dir', path: '/', ino: 0, mtime, children: new Map() });
  }

  lookup(path: string): MountNode | undefined {
    return this.byPath.get(path);
  }

  /** Every node, in creation order (the root first). */
  nodes(): MountNode[] {
    return [...this.byPath.values()];
  }

  /** All file nodes, with their paths. */
  files(): FileNode[] {
    return this.nodes().filter((n): n is FileNode => n.kind !== 'dir');
  }

  mkdir(parent: DirNode, name: string, mtime: Date): DirNode {
    return this.link(parent, name, { kind: 'dir', path: '', ino: 0, mtime, children: new Map() });
  }

  addDisk(parent: DirNode, name: string, disk: Disk, mtime: Date, what: string): DiskNode {
    return this.link(parent, name, { kind: 'disk', path: '', ino: 0, mtime, disk, size: disk.size, what });
  }

  addBytes(parent: DirNode, name: string, bytes: Buffer, mtime: Date): BytesNode {
    return this.link(parent, name, { kind: 'bytes', path: '', ino: 0, mtime, bytes, size: bytes.length });
  }

  private link<T extends MountNode>(parent: DirNode, name: string, node: T): T {
    if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
      throw new Error(`internal: "${name}" is not a file name`);
    }
    if (parent.children.has(name)) throw new Error(`internal: two entries named "${name}" in ${parent.path}`);
    node.path = parent.path === '/' ? `/${name}` : `${parent.path}/${name}`;
    parent.children.set(name, node);
    return this.add(node);
  }

  private add<T extends MountNode>(node: T): T {
    node.ino = this.nextIno++;
    this.byPath.set(node.path, node);
    return node;
  }
}

/**
 * Spaces kept at the end of info.json for what a mount may add later (`imageChanged`): the kernel keeps
 * a file's size for the attribute timeout, so the file must not grow.
 */
const INFO_RESERVE = 512;

/** info.json's bytes: the JSON, then spaces up to `size` (default: INFO_RESERVE more), then a newline. */
export function infoBytes(info: ImageInfo, size?: number): Buffer {
  const json = JSON.stringify(info, null, 2);
  const length = Buffer.byteLength(json);
  const total = size !== undefined && size > length ? size : length + INFO_RESERVE + 1;
  const bytes = Buffer.alloc(total, 0x20);
  bytes.write(json, 0, 'utf8');
  bytes[total - 1] = 0x0a;
  return bytes;
}

export interface TreeOptions {
  /** How guest memory is rebuilt from VM states (the VM's max-ram-below-4g). */
  memory?: MemoryOptions;
  /** Where a VM state whose RAM cannot be rebuilt is reported (one line each). */
  log?: (line: string) => void;
}

/**
 * Builds the tree for an image: active.raw, info.json and snapshots/ with one file per view. Each VM
 * state's RAM is indexed here (one sequential read of its RAM part), so info.json can tell its pages.
 */
export function buildMountTree(image: QcowImage, options: TreeOptions = {}): MountTree {
  const tree = new MountTree(image.mtime);
  const volumes = imageVolumes(image);
  tree.addDisk(tree.root, 'active.raw', image.active, image.mtime, 'active disk');
  addPartitions(tree, tree.root, 'active', volumes.active, image.mtime, 'active disk');
  const memoryOptions = options.memory ?? {};
  const described = describeImage(image, volumes, { memory: memoryOptions });
  tree.addBytes(tree.root, 'info.json', infoBytes(described), image.mtime);
  const dir = tree.mkdir(tree.root, 'snapshots', image.mtime);
  const names = snapshotFileNames(image.snapshots);
  image.snapshots.forEach((s, i) => {
    const what = `snapshot ${s.index} ("${s.name}", id ${s.uniqueId})`;
    tree.addDisk(dir, names[i]!.raw, image.snapshotDisk(s), s.date, what);
    addPartitions(tree, dir, names[i]!.raw.replace(/\.raw$/, ''), volumes.snapshots[i], s.date, what);
    const vm = image.vmState(s);
    if (vm && names[i]!.vmstate) tree.addDisk(dir, names[i]!.vmstate!, vm, s.date, `${what} VM state`);
    const files = described.snapshots[i]!.files;
    const memory = vm && files.ram && files.core ? image.memory(s, memoryOptions) : undefined;
    if (memory?.ram && memory.core) {
      tree.addDisk(dir, files.ram!.slice('snapshots/'.length), memory.ram, s.date, `${what} RAM`);
      tree.addDisk(dir, files.core!.slice('snapshots/'.length), memory.core, s.date, `${what} RAM (ELF core)`);
    } else if (vm) {
      options.log?.(`${what}: no .ram/.core: ${described.snapshots[i]!.memory?.problem ?? 'no memory description'}`);
    }
  });
  return tree;
}

/** `BASE.pN` beside a view for each partition with bytes on the disk. */
function addPartitions(tree: MountTree, dir: DirNode, base: string, volume: Volume | undefined, mtime: Date, what: string): void {
  for (const p of volume?.partitions ?? []) {
    const name = `${base}.${p.suffix}`;
    // Snapshot names are free text: never let a partition file take a name another file has.
    if (dir.children.has(name)) continue;
    tree.addDisk(dir, name, p.disk, mtime, `${what} partition ${p.number}`);
  }
}
