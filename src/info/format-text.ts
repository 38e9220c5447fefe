/**
 * Human-readable rendering of an image description (describeImage): what `qemu-img info` and
 * `qemu-img snapshot -l` print, in their words and layout where they have them, plus the backing
 * chain, feature names and the files a mount shows.
 */
import { memoryRows } from './describe-memory.js';
import type { Extent } from '../disk/disk.js';
import type { EncryptionInfo } from '../encryption.js';
import { oneLine } from '../errors.js';
import { formatSize } from '../units.js';
import type { ImageInfo, PartitionsInfo, SnapshotInfo } from './describe.js';

/** `8 MiB (8389120 bytes)`, as qemu-img shows the virtual size. */
export function formatSizeExact(bytes: number): string {
  return `${formatSize(bytes)} (${bytes} bytes)`;
}

/** Terminal columns a string takes: code points, with East Asian wide ones counted twice (roughly). */
function width(text: string): number {
  let w = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (cp >= 0x300 && cp <= 0x36f) continue; // combining marks
    w += (cp >= 0x1100 && cp <= 0x115f) || (cp >= 0x2e80 && cp <= 0xa4cf) || (cp >= 0xac00 && cp <= 0xd7a3) || (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0xff00 && cp <= 0xff60) || (cp >= 0x1f300 && cp <= 0x1faff) || (cp >= 0x20000 && cp <= 0x3fffd) ? 2 : 1;
  }
  return w;
}

const padEnd = (text: string, n: number) => text + ' '.repeat(Math.max(0, n - width(text)));
const padStart = (text: string, n: number) => ' '.repeat(Math.max(0, n - width(text))) + text;

/** `2026-11-25 14:39:12` in local time, as qemu-img prints a snapshot's date. */
export function formatDate(seconds: number): string {
  const d = new Date(seconds * 1000);
  const p = (n: number) => `${n}`.padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** Names wider than this do not widen the TAG column; their row runs on instead. */
const MAX_TAG_COLUMN = 40;

/**
 * The snapshot list as `qemu-img snapshot -l` shows it (ID, TAG, VM SIZE, DATE, VM CLOCK, ICOUNT), with
 * columns sized to their contents, plus FILE: the snapshot's files in a mount.
 */
export function formatSnapshotTable(snapshots: readonly SnapshotInfo[]): string {
  const header = ['ID', 'TAG', 'VM SIZE', 'DATE', 'VM CLOCK', 'ICOUNT', 'FILE'];
  const rows = snapshots.map((s) => [
    oneLine(s.id),
    oneLine(s.name),
    formatSize(s.vmStateSize),
    formatDate(s.dateSeconds),
    s.vmClock,
    s.icount ?? '',
    [s.files.raw, s.files.vmstate].filter((f): f is string => !!f).map(oneLine).join(', '),
  ]);
  // Text columns left-aligned, numbers right-aligned, as qemu-img does.
  return formatTable(header, rows, [false, false, true, true, true, true, false], [Infinity, MAX_TAG_COLUMN]);
}

/**
 * Rows under a header, columns two spaces apart and as wide as their widest cell (capped per column by
 * `maxWidths`: a wider cell runs on), `right` ones right-aligned; the last column is never padded.
 */
function formatTable(header: string[], rows: string[][], right: boolean[], maxWidths: number[] = []): string {
  const widths = header.map((h, c) => Math.max(width(h), ...rows.map((r) => Math.min(maxWidths[c] ?? Infinity, width(r[c]!)))));
  const line = (cells: string[]) =>
    cells
      .map((cell, c) => (c === cells.length - 1 ? cell : right[c] ? padStart(cell, widths[c]!) : padEnd(cell, widths[c]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

export interface TextInfoExtras {
  /** Bytes the image file takes on the host (st_blocks * 512): qemu-img's "disk size". */
  allocatedBytes?: number;
}

/** The whole `qcow-info IMAGE` report. */
export function formatInfoText(info: ImageInfo, extras: TextInfoExtras = {}): string {
  const out: string[] = [];
  const yesNo = (b: boolean) => (b ? 'true' : 'false');
  out.push(`image: ${oneLine(info.image)}`);
  out.push(`file format: ${info.format}`);
  out.push(`virtual size: ${formatSizeExact(info.virtualSize)}`);
  if (extras.allocatedBytes !== undefined) out.push(`disk size: ${formatSize(extras.allocatedBytes)}`);
  out.push(`file size: ${formatSizeExact(info.fileSize)}`);
  if (info.remote) {
    const r = info.remote;
    const validators = [r.etag !== null ? `ETag ${r.etag}` : '', r.lastModified !== null ? `Last-Modified ${r.lastModified}` : ''].filter(Boolean).join(', ');
    out.push(`remote: read over HTTP with Range requests${validators ? ` (${oneLine(validators)})` : ''}; ${r.requests} requests, ${formatSizeExact(r.bytesFetched)} fetched`);
  }
  out.push(`cluster_size: ${info.clusterSize}`);
  if (info.backingFile !== null) {
    const first = info.backingChain[0];
    out.push(`backing file: ${oneLine(info.backingFile)}${first ? ` (actual path: ${oneLine(first.path)})` : ''}`);
    if (info.extensions.backingFormat !== null) out.push(`backing file format: ${oneLine(info.extensions.backingFormat)}`);
  }
  if (info.encryption !== 'none') out.push(`encrypted: yes (${info.encryption}${info.encrypt && !info.encrypt.unlocked ? ', no passphrase given' : ''})`);

  if (info.snapshots.length > 0) {
    out.push('Snapshot list:');
    out.push(formatSnapshotTable(info.snapshots));
  }

  const tables = [
    ['active', info.partitions] as const,
    ...info.snapshots.map((s) => [s.files.raw.replace(/^snapshots\//, '').replace(/\.raw$/, ''), s.partitions] as const),
  ].filter((t): t is readonly [string, PartitionsInfo] => t[1] !== null);
  if (tables.length > 0) {
    out.push('Partitions:');
    out.push(formatPartitionTable(tables));
    for (const [view, t] of tables) for (const p of t.problems) out.push(`    problem in ${oneLine(view)}: ${oneLine(p)}`);
  }

  if (info.problems.length > 0) {
    out.push('Problems (left out; --strict refuses the image instead):');
    for (const p of info.problems) out.push(`    ${oneLine(p.what)} at ${p.where}: ${oneLine(p.why)}; ${oneLine(p.hides)} hidden`);
  }

  out.push('Format specific information:');
  if (info.format === 'qcow') {
    // qcow version 1 has no compat level, refcounts, features or extensions.
    out.push('    format: qcow (version 1)');
    if (info.encrypt) out.push(...formatEncryption(info.encrypt));
    pushChainAndFiles(info, out);
    return out.join('\n');
  }
  const fmt: [string, string][] = [
    ['compat', info.version === 3 ? '1.1' : '0.10'],
    ['compression type', info.compressionType],
    ['lazy refcounts', yesNo(info.lazyRefcounts)],
    ['refcount bits', `${info.refcountBits}`],
  ];
  if (info.dataFile) {
    fmt.push(['data file', oneLine(info.dataFile.name ?? info.dataFile.path)]);
    fmt.push(['data file raw', yesNo(info.dataFile.raw)]);
  } else if (info.extensions.dataFile !== null) fmt.push(['data file', oneLine(info.extensions.dataFile)]);
  fmt.push(['corrupt', yesNo(info.corrupt)], ['extended l2', yesNo(info.extendedL2)], ['dirty', yesNo(info.dirty)]);
  if (info.extensions.bitmaps) fmt.push(['bitmaps', `${info.extensions.bitmaps.count}`]);
  for (const [k, v] of fmt) out.push(`    ${k}: ${v}`);
  if (info.encrypt) out.push(...formatEncryption(info.encrypt));

  out.push('Features:');
  for (const kind of ['incompatible', 'compatible', 'autoclear'] as const) {
    const names = info.features[kind];
    out.push(`    ${kind}: ${names.length > 0 ? names.map(oneLine).join(', ') : '(none)'}`);
  }

  pushChainAndFiles(info, out);
  return out.join('\n');
}

/** The encryption as `qemu-img info` shows it under "encrypt:" (LUKS: cipher, ivgen, hash, key slots). */
function formatEncryption(e: EncryptionInfo): string[] {
  const out = ['    encrypt:', `        format: ${e.format}`];
  if (e.format === 'luks') {
    out.push(`        cipher alg: ${e.cipherAlg}`, `        cipher mode: ${e.cipherMode}`, `        ivgen alg: ${e.ivgenAlg}`);
    if (e.ivgenHashAlg) out.push(`        ivgen hash alg: ${e.ivgenHashAlg}`);
    out.push(`        hash alg: ${e.hashAlg}`, `        payload offset: ${e.payloadOffset}`, `        master key iters: ${e.masterKeyIterations}`, `        uuid: ${oneLine(e.uuid ?? '')}`);
    out.push(`        active key slots: ${e.slots!.filter((s) => s.active).map((s) => s.index).join(', ') || '(none)'}`);
    out.push('        slots:');
    for (const s of e.slots!) {
      out.push(`            [${s.index}]: active: ${s.active}${s.active ? `, iters: ${s.iterations}, stripes: ${s.stripes}` : ''}, key offset: ${s.keyOffset}`);
    }
  }
  out.push(`        passphrase: ${e.unlocked ? 'given, opens it' : 'not given'}`);
  return out;
}

function pushChainAndFiles(info: ImageInfo, out: string[]): void {
  if (info.backingChain.length > 0) {
    out.push('Backing chain:');
    const rows = info.backingChain.map((l) => [
      `${l.depth}`,
      l.format,
      formatSize(l.size),
      `${oneLine(l.path)}${l.formatSource === 'probed' ? ' (format probed)' : ''}${l.encryption ? ` (encrypted: ${l.encryption}${l.encrypt?.unlocked ? '' : ', no passphrase given'})` : ''}`,
    ]);
    const w = [0, 1, 2].map((c) => Math.max(...rows.map((r) => width(r[c]!))));
    for (const r of rows) out.push(`    ${padStart(r[0]!, w[0]!)}  ${padEnd(r[1]!, w[1]!)}  ${padStart(r[2]!, w[2]!)}  ${r[3]}`);
  }
  if (info.dataFile) out.push(`External data file: ${oneLine(info.dataFile.path)}`);

  out.push('Files in a mount:');
  const files: [string, string][] = [
    [info.files.active, formatSizeExact(info.virtualSize)],
    [info.files.info, ''],
  ];
  const partitionFiles = (t: PartitionsInfo | null) => {
    for (const p of t?.partitions ?? []) if (p.file) files.push([p.file, formatSizeExact(p.fileSize)]);
  };
  partitionFiles(info.partitions);
  for (const s of info.snapshots) {
    files.push([s.files.raw, formatSizeExact(s.diskSize)]);
    partitionFiles(s.partitions);
    if (s.files.vmstate) files.push([s.files.vmstate, formatSizeExact(s.vmStateSize)]);
  }
  const fw = Math.min(60, Math.max(...files.map(([f]) => width(oneLine(f)))));
  for (const [f, size] of files) out.push(`    ${size ? `${padEnd(oneLine(f), fw)}  ${size}` : oneLine(f)}`);
}

/** Every view's partitions: VIEW, N, scheme and sector size, start, size, type, GPT name, file. */
export function formatPartitionTable(tables: readonly (readonly [string, PartitionsInfo])[]): string {
  const header = ['VIEW', 'N', 'TABLE', 'START', 'SIZE', 'TYPE', 'NAME', 'FILE'];
  const rows = tables.flatMap(([view, t]) =>
    t.partitions.map((p) => [
      oneLine(view),
      `${p.number}`,
      `${t.scheme}/${t.sectorSize}${p.bootable ? ' boot' : ''}`,
      `${p.start}`,
      formatSize(p.size),
      oneLine(p.typeName ? `${p.typeName} (${p.type})` : p.type),
      oneLine(p.name ?? ''),
      p.file ? oneLine(p.file) : '(beyond the disk)',
    ]),
  );
  return formatTable(header, rows, [false, true, false, true, true, false, false, false], [MAX_TAG_COLUMN]);
}

/** One snapshot in detail: `qcow-info IMAGE --snapshot NAME`. */
export function formatSnapshotDetail(s: SnapshotInfo): string {
  const rows: [string, string][] = [
    ['id', oneLine(s.id)],
    ['name', oneLine(s.name)],
    ['index', `${s.index}`],
    ['date', `${formatDate(s.dateSeconds)} (${s.date})`],
    ['vm clock', `${s.vmClock} (${s.vmClockNs} ns)`],
    ['vm state size', formatSizeExact(s.vmStateSize)],
    ['disk size', formatSizeExact(s.diskSize)],
    ['icount', s.icount ?? '(none)'],
    ['l1 table', `${s.l1Size} entries at 0x${s.l1TableOffset.toString(16)}`],
    ['extra data', `${s.extraDataSize} bytes`],
    ['file', oneLine(s.files.raw)],
  ];
  if (s.files.vmstate) rows.push(['vm state file', oneLine(s.files.vmstate)]);
  if (s.files.ram) rows.push(['ram file', oneLine(s.files.ram)]);
  if (s.files.core) rows.push(['core file', oneLine(s.files.core)]);
  if (s.memory) rows.push(...memoryRows(s.memory));
  return rows.map(([k, v]) => `${k}: ${v}`).join('\n');
}

/**
 * A view's extents as a table, like `qemu-img map` (human format): guest offset, length, what the run is,
 * the chain depth that holds it and, for data, its host offset.
 */
export function formatExtents(extents: readonly Extent[], chainFiles: readonly string[] = []): string {
  const hex = (n: number) => `0x${n.toString(16)}`;
  const rows = extents.map((e) => [
    hex(e.start),
    hex(e.length),
    e.kind,
    `${e.depth}`,
    e.host !== undefined ? hex(e.host) : '',
    e.kind === 'data' || e.kind === 'compressed' ? oneLine(chainFiles[e.depth] ?? '') : '',
  ]);
  const header = ['OFFSET', 'LENGTH', 'KIND', 'DEPTH', 'HOST OFFSET', 'FILE'];
  return formatTable(header, rows, [true, true, false, true, true, false]);
}
