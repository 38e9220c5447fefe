import path from 'node:path';
import fs from 'node:fs';
import { type CacheOptions, SharedCaches } from './caches.js';
import { ClusterReader } from './disk/cluster-reader.js';
import type { Disk } from './disk/disk.js';
import { Qcow1Disk } from './disk/qcow1-disk.js';
import { Qcow2Disk } from './disk/qcow2-disk.js';
import { RawDisk } from './disk/raw-disk.js';
import { type DataDecryption, type EncryptionInfo, type KeyOptions, openEncryption } from './encryption.js';
import { QcowError } from './errors.js';
import { type Header, decodeHeader, headerBytesWanted, l2EntriesPerTable, probeMagic } from './format/header.js';
import { BlockCache } from './io/block-cache.js';
import { QCOW1_HEADER_BYTES, decodeQcow1Header, qcow1AsHeader } from './format/qcow1-header.js';
import { HostFile } from './io/host-file.js';
import { heldForWriting } from './io/qemu-locks.js';
import type { ImageFile } from './io/image-file.js';
import { DEFAULT_REMOTE_BLOCK_SIZE, DEFAULT_REMOTE_CACHE_SIZE, RemoteFile, type RemoteOptions, type RemoteStats } from './io/remote-file.js';
import { isRemoteName, parseRemoteUrl, redactUrl, resolveRemoteName, sameOrigin } from './io/remote-url.js';
import { type Snapshot, openSnapshots } from './snapshot.js';
import type { ImageProblem } from './problems.js';
import { loadL1Table } from './translate/l1-table.js';
import { type GuestMemory, type MemoryOptions, openGuestMemory } from './memory/guest-memory.js';
import { Qcow1Map, loadQcow1L1 } from './translate/qcow1-map.js';
import { type GuestMap, Qcow2Map } from './translate/qcow2-map.js';

export interface OpenOptions extends CacheOptions, KeyOptions {
  /** Longest backing chain followed below the top image (default 32). */
  maxChainDepth?: number;
  /** Admit block devices as backing or data files (default: regular files only). */
  allowNonRegularFiles?: boolean;
  /** Read the external data file from this path instead of the name the image gives. */
  dataFile?: string;
  /** Ignore the backing file: unallocated runs read as zeros (QEMU's `backing: null`). */
  noBacking?: boolean;
  /**
   * Refuse an image with any damaged part. By default a snapshot table, a snapshot's extra data or its
   * L1 table that cannot be used hides only the snapshots concerned, listed in `problems`.
   */
  strict?: boolean;
  /**
   * Read an image that a running QEMU holds for writing (qemu-img's `-U` / `force-share`). Without it
   * such an image is refused: what it holds keeps changing under the reader. Either way
   * `heldForWriting` says whether it was.
   */
  forceShare?: boolean;
  /** For an image given by http(s) URL (and the files it names). */
  remote?: RemoteOpenOptions;
}

/** How images read over HTTP(S) are fetched. */
export interface RemoteOpenOptions {
  /**
   * Headers sent with every request to the top image's server (scheme, host and port): a bearer token,
   * say. Never sent to another server that a backing file name points at; never logged.
   */
  headers?: [string, string][];
  /** PEM certificates to trust besides the system's (a server with a self-signed certificate). */
  ca?: string;
  /** Bytes of fetched blocks kept, for the whole chain (default 256 MiB). */
  cacheSize?: number;
  /** A request with no bytes for this long is retried (default 15 s). */
  timeoutMs?: number;
  /** Retries of a failed request before the read fails with EIO (default 4). */
  retries?: number;
}

/** Where a remote image came from and how its fetching went (for info.json). */
export interface RemoteSource {
  /** The URL without credentials or query string. */
  readonly url: string;
  /** The object's size and validators, as the server gave them at open. */
  readonly size: number;
  readonly etag?: string;
  readonly lastModified?: string;
  /** Counters summed over every remote file of the chain; cache figures are the chain's shared cache. */
  stats(): RemoteStats;
}

export type ImageFormat = 'qcow2' | 'qcow' | 'raw';

/** One image of the backing chain below the top one. */
export interface BackingLink {
  /** 1 for the top image's backing file, 2 for its backing file, and so on. */
  depth: number;
  /** The name as the image above wrote it. */
  name: string;
  /** The resolved path that was opened. */
  path: string;
  format: ImageFormat;
  /** Where the format came from: the image above's backing format extension, or probing the file. */
  formatSource: 'header' | 'probed';
  /** Virtual size (for raw: the file size rounded up to whole 512-byte sectors, as QEMU counts it). */
  size: number;
  /** For qcow2 and qcow links. */
  header?: Header;
  /** For an encrypted link: what its encryption is (never a key), and whether a key opened it. */
  encryption?: EncryptionInfo;
}

/** An opened qcow2 (or qcow v1) image: its header, snapshots and backing chain, and a Disk for every view. */
export interface QcowImage {
  readonly path: string;
  /** 'qcow' for a qcow version 1 image (its header is shown in the qcow2 shape, version 1). */
  readonly format: 'qcow2' | 'qcow';
  readonly header: Header;
  /** For an encrypted image: what its encryption is (never a key), and whether a key opened it. */
  readonly encryption?: EncryptionInfo;
  /**
   * Encrypted images of the chain (this one or its backing files) that no passphrase was given for:
   * reading their data fails (ENOKEY); a command refuses to serve or export such an image.
   */
  readonly locked: readonly string[];
  readonly fileSize: number;
  readonly mtime: Date;
  /** The snapshots that can be read (a damaged one is left out and listed in `problems`). */
  readonly snapshots: readonly Snapshot[];
  /** A running QEMU held the image (or a file of its chain) for writing when it was opened (see `forceShare`). */
  readonly heldForWriting: boolean;
  /** Damaged parts left out instead of refusing the image (always empty with `strict`). */
  readonly problems: readonly ImageProblem[];
  readonly backingChain: readonly BackingLink[];
  /** The external data file's resolved path, where the image has one. */
  readonly dataFilePath?: string;
  /** Set where the image was opened by http(s) URL. */
  readonly remote?: RemoteSource;
  /** The disk as it is now: the header's L1 table, merged with the backing chain. */
  readonly active: Disk;
  /** The disk as it was at a snapshot, with the snapshot's own size. */
  snapshotDisk(snapshot: Snapshot): Disk;
  /** The VM state a snapshot saved, or undefined when it saved none. */
  vmState(snapshot: Snapshot): Disk | undefined;
  /**
   * The RAM a snapshot's VM state holds: its layout (machine type, RAM blocks, page counts, physical
   * ranges) and, where the machine's physical map is known, the flat `.ram` and ELF `.core` disks.
   * Undefined when the snapshot saved no VM state. The first call per snapshot reads the VM state's RAM
   * part once (sequentially); the result (or the QcowError for a stream that cannot be read) is kept.
   */
  memory(snapshot: Snapshot, options?: MemoryOptions): GuestMemory | undefined;
  /** Finds a snapshot by unique ID, else by name (the way `qemu-img snapshot -a` looks them up). */
  findSnapshot(idOrName: string): Snapshot | undefined;
  readonly caches: SharedCaches;
  close(): void;
}

const DEFAULT_MAX_CHAIN_DEPTH = 32;

/**
 * Opens a qcow2 image read-only, by path or by http(s) URL (read with Range requests; its backing files
 * resolve against the URL). Throws a QcowError (one line, naming the file) for a bad image.
 */
export async function openImage(imagePath: string, options: OpenOptions = {}): Promise<QcowImage> {
  return openImageSync(imagePath, options);
}

export function openImageSync(imagePath: string, options: OpenOptions = {}): QcowImage {
  const ctx: ChainContext = { options, caches: new SharedCaches(options), opened: [], chain: [], readers: [], locked: [] };
  try {
    const at: LayerLocation = isRemoteName(imagePath) ? remoteLocation(imagePath) : { path: path.resolve(imagePath), seen: [] };
    const top = openLayer({ ...at, top: true }, 0, ctx);
    return buildImage(top, ctx);
  } catch (err) {
    for (const r of ctx.readers) r.close();
    for (const f of ctx.opened) f.close();
    throw err;
  }
}

/** What opening the images of one chain shares and collects. */
interface ChainContext {
  readonly options: OpenOptions;
  readonly caches: SharedCaches;
  /** Every file opened so far, closed together. */
  readonly opened: ImageFile[];
  /** The images below the top one, in depth order. */
  readonly chain: BackingLink[];
  /** For remote images: one block cache for the chain, and the top image's URL (whose server gets the headers). */
  remoteCache?: BlockCache;
  topUrl?: URL;
  /** Every cluster reader made, closed (keys zeroed) together. */
  readonly readers: ClusterReader[];
  readonly locked: string[];
  /** Set when a file of the chain was held for writing by a running QEMU (read anyway: forceShare). */
  heldForWriting?: boolean;
}

/** Where one image of the chain is, and how to read it. */
interface LayerLocation {
  /** A local path, or for a remote file its URL without secrets (what messages show). */
  path: string;
  /** A remote file's URL as given, credentials and query string included. */
  url?: URL;
  /** For a backing file: the image that names it and the name it gives. */
  namedBy?: { image: string; name: string };
  /** Undefined: probe the file (a backing file whose format the image above does not record). */
  format?: ImageFormat;
  /** Real paths of the images above, to refuse a cycle. */
  seen: string[];
  /** The image opened by name: qcow2 or qcow v1 (told by the header), never raw. */
  top?: boolean;
}

/** One opened image of the chain: the top image's is what its views are built from. */
interface Layer {
  file: ImageFile;
  /** Its active view, merged with the images below it. */
  disk: Disk;
  header?: Header;
  format?: 'qcow2' | 'qcow';
  map?: GuestMap;
  reader?: ClusterReader;
  backing?: Disk;
  dataFilePath?: string;
  encryption?: EncryptionInfo;
}

/**
 * Opens one image of a chain (the top one at depth 0) and the chain below it: the one place where an
 * image file becomes a Disk.
 */
function openLayer(at: LayerLocation, depth: number, ctx: ChainContext): Layer {
  const { options, caches } = ctx;
  const open = () => (at.url ? RemoteFile.open(at.url, remoteOptions(at.url, ctx)) : HostFile.open(at.path, at.namedBy ? { allowNonRegular: options.allowNonRegularFiles } : {}));
  const file = at.namedBy ? openNamedFile(at.namedBy.image, 'backing file', at.namedBy.name, at.path, open) : open();
  ctx.opened.push(file);
  checkNotLive(file.path, ctx);
  const format = at.top ? 'qcow2' : (at.format ?? probeFormat(file));
  const link = at.namedBy ? { depth, name: at.namedBy.name, path: file.path, format, formatSource: at.format ? ('header' as const) : ('probed' as const) } : undefined;
  if (format === 'raw') {
    const disk = new RawDisk(file, depth);
    if (link) ctx.chain.push({ ...link, size: disk.size });
    return { file, disk };
  }

  const head = Buffer.alloc(Math.min(file.size, 8));
  file.readAt(head, 0, head.length, 0, 'header');
  if (probeMagic(head).qcow && probeMagic(head).version === 1) return openQcow1Layer(file, at, depth, ctx, link && { ...link, format: 'qcow' as const });
  const header = readHeader(file);
  const linkAt = ctx.chain.length;
  if (link) ctx.chain.push({ ...link, format: 'qcow2', size: header.size, header });
  let dataFile: ImageFile = file;
  let dataFilePath: string | undefined;
  if (header.hasDataFile) {
    // The dataFile option stands for the top image's data file only.
    const override = depth === 0 ? options.dataFile : undefined;
    if (override !== undefined) {
      dataFilePath = path.resolve(override);
      dataFile = HostFile.open(dataFilePath, { allowNonRegular: options.allowNonRegularFiles });
    } else {
      if (header.dataFile === undefined) throw new QcowError('EBADIMAGE', file.path, 'needs an external data file but names none (pass dataFile)');
      const where = resolveLocation(file, header.dataFile, 'external data file');
      dataFilePath = where.path;
      const open = () => (where.url ? RemoteFile.open(where.url, remoteOptions(where.url, ctx)) : HostFile.open(where.path, { allowNonRegular: options.allowNonRegularFiles }));
      dataFile = openNamedFile(file.path, 'external data file', header.dataFile, dataFilePath, open);
    }
    ctx.opened.push(dataFile);
  }
  const map = new Qcow2Map(header, file, dataFile, caches);
  const crypt = openLayerEncryption(file, header, ctx);
  if (link && crypt.encryption) ctx.chain[linkAt]!.encryption = crypt.encryption;
  const reader = new ClusterReader(dataFile, header.compressionType, header.clusterSize, caches, crypt.decryption, crypt.locked);
  ctx.readers.push(reader);
  const backing = depth === 0 && options.noBacking ? undefined : openBacking(file, header, depth + 1, ctx, [...at.seen, identity(at)]);
  const l1 = loadL1Table(file, header.l1TableOffset, header.l1Size, header.clusterSize, 'active');
  // QEMU counts whole sectors: a header size that is not a multiple of 512 is rounded down.
  const disk = new Qcow2Disk(map, reader, () => l1, roundToSector(header.size), backing, depth);
  return { file, disk, header, format: 'qcow2', map, reader, backing, dataFilePath, encryption: crypt.encryption };
}

/** A qcow version 1 image of the chain: no snapshots, no data file, AES or no encryption. */
function openQcow1Layer(file: ImageFile, at: LayerLocation, depth: number, ctx: ChainContext, link: Omit<BackingLink, 'size'> | undefined): Layer {
  const v1 = decodeQcow1Header(file.readExact(0, Math.min(file.size, QCOW1_HEADER_BYTES), 'header'), file.path, file.size);
  const backingName = v1.backingFileOffset ? file.readExact(v1.backingFileOffset, v1.backingFileSize, 'backing file name').toString('utf8') : undefined;
  const header = qcow1AsHeader(v1, backingName);
  const linkAt = ctx.chain.length;
  if (link) ctx.chain.push({ ...link, size: header.size, header });
  const crypt = openLayerEncryption(file, header, ctx);
  if (link && crypt.encryption) ctx.chain[linkAt]!.encryption = crypt.encryption;
  const map = new Qcow1Map(v1, file, ctx.caches);
  const reader = new ClusterReader(file, 'zlib', v1.clusterSize, ctx.caches, crypt.decryption, crypt.locked);
  ctx.readers.push(reader);
  const backing = depth === 0 && ctx.options.noBacking ? undefined : openBacking(file, header, depth + 1, ctx, [...at.seen, identity(at)]);
  const l1 = loadQcow1L1(v1, file);
  const disk = new Qcow1Disk(map, reader, () => l1, v1.size, backing, depth);
  return { file, disk, header, format: 'qcow', map, reader, backing, encryption: crypt.encryption };
}

/** An encrypted layer's decryption, with the keys given; a layer no key was given for is locked. */
function openLayerEncryption(file: ImageFile, header: Header, ctx: ChainContext): { encryption?: EncryptionInfo; decryption?: DataDecryption; locked?: QcowError } {
  if (header.cryptMethod === 'none') return {};
  const { info, decryption } = openEncryption(file, header.cryptMethod, header.encryption, ctx.options);
  if (decryption) return { encryption: info, decryption };
  ctx.locked.push(file.path);
  const kind = header.cryptMethod === 'luks' ? 'LUKS' : 'AES';
  return { encryption: info, locked: new QcowError('ENOKEY', file.path, `is encrypted (${kind}) and no passphrase was given for it`) };
}

function roundToSector(size: number): number {
  return size - (size % 512);
}

/** The backing file an image names, opened as the next layer down (undefined where it names none). */
function openBacking(naming: ImageFile, header: Header, depth: number, ctx: ChainContext, seen: string[]): Disk | undefined {
  if (header.backingFile === undefined) return undefined;
  const namingPath = naming.path;
  const maxDepth = ctx.options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (depth > maxDepth) throw new QcowError('EBADIMAGE', namingPath, `backing chain is deeper than ${maxDepth} images`);
  const name = header.backingFile;
  const where = resolveLocation(naming, name, 'backing file');
  const real = identity(where);
  if (seen.includes(real)) {
    throw new QcowError('EBADIMAGE', namingPath, `backing file cycle: ${[...seen, real].map((p) => path.basename(p)).join(' -> ')}`);
  }
  // An empty backing format extension means "probe", as in QEMU.
  let format: ImageFormat | undefined;
  if (header.backingFormat !== undefined && header.backingFormat !== '') {
    if (header.backingFormat === 'qcow2' || header.backingFormat === 'raw' || header.backingFormat === 'qcow') format = header.backingFormat;
    else if (header.backingFormat === 'file') format = 'raw';
    else throw new QcowError('EUNSUPPORTED', namingPath, `backing file ${name} has format "${header.backingFormat}", which is not supported (qcow2, qcow and raw are)`);
  }
  return openLayer({ ...where, namedBy: { image: namingPath, name }, format, seen }, depth, ctx).disk;
}

/** The image's views, built on its top layer. */
function buildImage(top: Layer, ctx: ChainContext): QcowImage {
  const { file, header, map, reader, backing, format } = top as Required<Layer>;
  const { caches } = ctx;
  const l2Span = l2EntriesPerTable(header) * header.clusterSize;
  const { snapshots, problems } = format === 'qcow' ? { snapshots: [] as Snapshot[], problems: [] } : openSnapshots(file, header, l2Span, caches.snapshotL1, ctx.options.strict === true);
  const disks = new Map<Snapshot, Disk>();
  const vmStates = new Map<Snapshot, Disk>();
  const memories = new Map<string, GuestMemory | QcowError>();
  const image: QcowImage = {
    path: file.path,
    format,
    header,
    encryption: top.encryption,
    locked: ctx.locked,
    fileSize: file.size,
    mtime: file.mtime,
    snapshots,
    problems,
    heldForWriting: ctx.heldForWriting === true,
    backingChain: ctx.chain,
    dataFilePath: top.dataFilePath,
    remote: file instanceof RemoteFile ? remoteSource(file, ctx) : undefined,
    active: top.disk,
    caches,
    snapshotDisk(s) {
      let disk = disks.get(s);
      if (!disk) {
        disk = new Qcow2Disk(map as Qcow2Map, reader, () => s.l1Table(), s.diskSize, backing, 0); // snapshots: qcow2 only
        disks.set(s, disk);
      }
      return disk;
    },
    vmState(s) {
      if (!s.hasVmState) return undefined;
      let disk = vmStates.get(s);
      if (!disk) {
        disk = new Qcow2Disk(map as Qcow2Map, reader, () => s.l1Table(), s.vmStateSize, undefined, 0, s.vmStateOffset);
        vmStates.set(s, disk);
      }
      return disk;
    },
    memory(s, options = {}) {
      const vmState = image.vmState(s);
      if (!vmState) return undefined;
      const key = `${s.index}:${options.maxRamBelow4g ?? ''}`;
      let memory = memories.get(key);
      if (!memory) {
        try {
          memory = openGuestMemory(vmState, { file: file.path, what: `snapshot ${s.index} ("${s.name}", id ${s.uniqueId}) VM state` }, options);
        } catch (err) {
          if (!(err instanceof QcowError)) throw err;
          memory = err;
        }
        memories.set(key, memory);
      }
      if (memory instanceof QcowError) throw memory;
      return memory;
    },
    findSnapshot(idOrName) {
      return snapshots.find((s) => s.uniqueId === idOrName) ?? snapshots.find((s) => s.name === idOrName);
    },
    close() {
      for (const r of ctx.readers) r.close();
      for (const f of ctx.opened) f.close();
      caches.l2.clear();
      caches.clusters.clear();
      caches.snapshotL1.clear();
      caches.inflater?.close();
    },
  };
  return image;
}

/** Refuses a file a running QEMU holds for writing, as qemu-img does, unless forceShare. */
function checkNotLive(filePath: string, ctx: ChainContext): void {
  if (!heldForWriting(filePath)) return;
  if (!ctx.options.forceShare) {
    throw new QcowError(
      'EBUSY',
      filePath,
      'failed to get shared "write" lock: a running QEMU (qemu-system, qemu-storage-daemon or qemu-nbd) holds the image open for writing; stop it, or read anyway with force-share (-U), knowing the view may be inconsistent',
    );
  }
  ctx.heldForWriting = true;
}

function readHeader(file: ImageFile): Header {
  const first = Buffer.alloc(Math.min(file.size, 4096));
  file.readAt(first, 0, first.length, 0, 'header');
  const { qcow, version } = probeMagic(first);
  if (qcow && version !== 1) {
    const want = Math.min(file.size, headerBytesWanted(first));
    if (want > first.length) {
      const whole = Buffer.alloc(want);
      file.readAt(whole, 0, want, 0, 'header');
      return decodeHeader(whole, file.path, file.size);
    }
  }
  if (file.size === 0) throw new QcowError('EBADIMAGE', file.path, 'is empty (0 bytes), not a qcow2 image');
  return decodeHeader(first, file.path, file.size);
}

/**
 * Opens a file an image names (backing or external data file) so that a failure starts with the image
 * that names it: `top.qcow2: backing file "base.qcow2" (/abs/base.qcow2): no such file`. The code is
 * kept (ENOENT, EACCES, EBADIMAGE).
 */
function openNamedFile(namingPath: string, what: string, name: string, target: string, open: () => ImageFile): ImageFile {
  try {
    return open();
  } catch (err) {
    if (!(err instanceof QcowError)) throw err;
    const problem = err.message.startsWith(`${err.file}: `) ? err.message.slice(err.file.length + 2) : err.message;
    throw new QcowError(err.code, namingPath, `${what} "${name}" (${target}): ${problem}`, { cause: err });
  }
}

/** Formats we recognise by their magic but cannot read: never mistake them for raw data. */
const FOREIGN_MAGICS: [string, Buffer][] = [
  ['vmdk', Buffer.from('KDMV')],
  ['vdi', Buffer.from('<<< ')],
  ['vhdx', Buffer.from('vhdxfile')],
  ['vpc', Buffer.from('conectix')],
  ['qed', Buffer.from('QED\0')],
  ['luks', Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])],
];

function probeFormat(file: ImageFile): ImageFormat {
  const head = Buffer.alloc(Math.min(file.size, 512));
  file.readAt(head, 0, head.length, 0, 'header');
  const { qcow, version } = probeMagic(head);
  if (qcow) {
    return version === 1 ? 'qcow' : 'qcow2';
  }
  for (const [fmt, magic] of FOREIGN_MAGICS) {
    if (head.subarray(0, magic.length).equals(magic)) throw new QcowError('EUNSUPPORTED', file.path, `looks like a ${fmt} image, which is not supported as a backing file`);
  }
  return 'raw';
}

/**
 * Resolves a backing or data file name relative to the folder of the image that names it. For backing
 * files that is what QEMU does; for an external data file QEMU 7.2 resolves a relative name against its
 * own working directory instead, so the same image can read different files there: we keep one rule
 * (the image's folder), and the `dataFile` option names the file outright. Protocol names (`nbd:`,
 * `http://`, `json:{...}`) are refused: we only read files.
 */
function resolveNamedFile(namingPath: string, name: string, what: string): string {
  if (name === '') throw new QcowError('EBADIMAGE', namingPath, `${what} name is empty`);
  if (name.includes('\0')) throw new QcowError('EBADIMAGE', namingPath, `${what} name contains a NUL byte`);
  let plain = name;
  const colon = name.indexOf(':');
  const slash = name.indexOf('/');
  if (colon > 0 && (slash < 0 || colon < slash)) {
    if (name.startsWith('file:')) plain = name.slice(5);
    else {
      const protocol = name.startsWith('json:') ? 'json:' : `${name.slice(0, colon)}:`;
      throw new QcowError('EBADIMAGE', namingPath, `${what} "${name}" uses the ${protocol} protocol; only local files are read`);
    }
  }
  return path.resolve(path.dirname(namingPath), plain);
}

/** The top image's location when it is given by URL. */
function remoteLocation(urlText: string): LayerLocation {
  const url = parseRemoteUrl(urlText);
  return { path: redactUrl(url), url, seen: [] };
}

/**
 * Where a name that an image gives (backing or external data file) points: for a remote image, against
 * its URL (a relative name on the same server; an http(s) URL as given; a local path refused); for a
 * local image, against its folder (protocol names refused).
 */
function resolveLocation(naming: ImageFile, name: string, what: string): { path: string; url?: URL } {
  if (naming instanceof RemoteFile) {
    const url = resolveRemoteName(naming.secretUrl, name, what);
    return { path: redactUrl(url), url };
  }
  return { path: resolveNamedFile(naming.path, name, what) };
}

/** What identifies a file of the chain, to refuse a cycle: its real path, or its URL without secrets. */
function identity(at: { path: string; url?: URL }): string {
  return at.url ? redactUrl(at.url) : realpath(at.path);
}

/** The chain's remote files share one block cache; the user's headers go to the top image's server only. */
function remoteOptions(url: URL, ctx: ChainContext): RemoteOptions {
  const r = ctx.options.remote ?? {};
  ctx.remoteCache ??= new BlockCache(r.cacheSize ?? DEFAULT_REMOTE_CACHE_SIZE, DEFAULT_REMOTE_BLOCK_SIZE);
  ctx.topUrl ??= url;
  return { headers: sameOrigin(url, ctx.topUrl) ? r.headers : [], ca: r.ca, timeoutMs: r.timeoutMs, retries: r.retries, cache: ctx.remoteCache };
}

function remoteSource(top: RemoteFile, ctx: ChainContext): RemoteSource {
  return {
    url: top.path,
    size: top.size,
    etag: top.etag,
    lastModified: top.lastModified,
    stats() {
      const all = ctx.opened.filter((f): f is RemoteFile => f instanceof RemoteFile).map((f) => f.remoteStats());
      const sum = (k: keyof RemoteStats) => all.reduce((n, s) => n + s[k], 0);
      return {
        hits: sum('hits'),
        misses: sum('misses'),
        readAhead: sum('readAhead'),
        requests: sum('requests'),
        bytesFetched: sum('bytesFetched'),
        retries: sum('retries'),
        failures: sum('failures'),
        cacheBytes: top.cache.bytes,
        cacheLimit: top.cache.maxBlocks * top.cache.blockSize,
      };
    },
  };
}

function realpath(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return p;
  }
}
