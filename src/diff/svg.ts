import type { ByteRange } from './ranges.js';

/** One view drawn as a band: a snapshot (in time order) or the active disk. */
export interface TimelineBand {
  label: string;
  date?: Date;
  /** The view's own disk size. */
  size: number;
  /** What changed since the band above; undefined for the first band (nothing to compare with). */
  changed?: readonly ByteRange[];
}

/** A partition drawn under the axis. */
export interface TimelinePartition {
  label: string;
  start: number;
  size: number;
}

export interface TimelineInput {
  title: string;
  bands: readonly TimelineBand[];
  partitions?: readonly TimelinePartition[];
  /** Width of the plot in pixels (default 960): changes are aggregated into this many columns. */
  width?: number;
}

const LABEL_WIDTH = 260;
const MARGIN = 12;
const LEVELS = 4;
const GIB = 1024 ** 3;
/** Darker = a larger share of the pixel's bytes changed. */
const LEVEL_COLOURS = ['#f4a582', '#e66a4d', '#c22f2a', '#7f0000'];

/**
 * The changes between consecutive views as an SVG timeline. Changes are summed into pixel columns and
 * drawn as at most one path per shade per band, so the file stays small and readable whatever the
 * number of clusters (a 2 TiB disk with 200 snapshots: at most 200 × 4 paths).
 */
export function renderTimelineSvg(input: TimelineInput): string {
  const width = Math.max(100, Math.floor(input.width ?? 960));
  const bands = input.bands;
  const maxSize = Math.max(1, ...bands.map((b) => b.size));
  const bandHeight = bands.length <= 40 ? 18 : bands.length <= 100 ? 12 : 9;
  const font = Math.max(7, bandHeight - 4);
  const plotX = MARGIN + LABEL_WIDTH;
  const top = MARGIN + 34;
  const xOf = (offset: number) => plotX + (Math.min(offset, maxSize) / maxSize) * width;
  const out: string[] = [];
  const bandsBottom = top + bands.length * bandHeight;

  out.push(`<text x="${MARGIN}" y="${MARGIN + 14}" font-size="14" font-weight="bold">${escapeXml(input.title)}</text>`);
  out.push(
    `<text x="${MARGIN}" y="${MARGIN + 28}" font-size="10" fill="#555">bands in time order; marked: changed since the band above (darker = more of the pixel's bytes)</text>`,
  );

  bands.forEach((band, i) => {
    const y = top + i * bandHeight;
    const h = bandHeight - 2;
    const date = band.date ? `<tspan fill="#666" dx="6">${formatDate(band.date)}</tspan>` : '';
    out.push(`<text x="${MARGIN}" y="${y + h - 2}" font-size="${font}">${escapeXml(truncate(band.label, 30))}${date}</text>`);
    out.push(`<rect x="${plotX}" y="${y}" width="${round(xOf(band.size) - plotX)}" height="${h}" fill="#e8eef4"/>`);
    if (!band.changed || band.changed.length === 0) return;
    const shares = columnShares(band.changed, maxSize, width);
    const paths: string[][] = Array.from({ length: LEVELS }, () => []);
    let runStart = 0;
    for (let c = 1; c <= width; c++) {
      const prev = level(shares[c - 1]);
      if (c < width && level(shares[c]) === prev) continue;
      if (prev > 0) paths[prev - 1].push(`M${plotX + runStart} ${y}h${c - runStart}v${h}h-${c - runStart}z`);
      runStart = c;
    }
    paths.forEach((d, l) => {
      if (d.length > 0) out.push(`<path fill="${LEVEL_COLOURS[l]}" d="${d.join('')}"/>`);
    });
  });

  // Axis in GiB.
  const axisY = bandsBottom + 4;
  out.push(`<line x1="${plotX}" y1="${axisY}" x2="${plotX + width}" y2="${axisY}" stroke="#333"/>`);
  const step = niceStep(maxSize / GIB / 8);
  for (let g = 0; g * GIB <= maxSize + 1e-9 * GIB; g += step) {
    const x = round(xOf(g * GIB));
    out.push(`<line x1="${x}" y1="${axisY}" x2="${x}" y2="${axisY + 4}" stroke="#333"/>`);
    out.push(`<text x="${x}" y="${axisY + 15}" font-size="9" text-anchor="middle">${formatGib(g, step)}</text>`);
  }
  out.push(`<text x="${plotX + width}" y="${axisY + 27}" font-size="10" text-anchor="end">offset (GiB)</text>`);

  // Partitions under the axis.
  let bottom = axisY + 30;
  const parts = input.partitions ?? [];
  if (parts.length > 0) {
    const py = axisY + 32;
    out.push(`<text x="${MARGIN}" y="${py + 11}" font-size="10">partitions</text>`);
    parts.forEach((p, i) => {
      const x = xOf(p.start);
      const w = Math.max(1, xOf(p.start + p.size) - x);
      out.push(
        `<rect x="${round(x)}" y="${py}" width="${round(w)}" height="14" fill="${i % 2 ? '#b8d4b0' : '#9cc3e4'}" stroke="#fff" stroke-width="0.5"/>`,
      );
      const text = truncate(p.label, Math.floor(w / 6));
      if (text.length > 0) out.push(`<text x="${round(x + 2)}" y="${py + 11}" font-size="9">${escapeXml(text)}</text>`);
    });
    bottom = py + 20;
  }

  const svgWidth = plotX + width + MARGIN;
  const svgHeight = bottom + MARGIN;
  return (
    `<?xml version="1.0" encoding="UTF-8"?>\n` +
    `<svg xmlns="http://www.w3.org/2000/svg" width="${svgWidth}" height="${svgHeight}" viewBox="0 0 ${svgWidth} ${svgHeight}" font-family="sans-serif">\n` +
    `<rect width="100%" height="100%" fill="#fff"/>\n` +
    out.join('\n') +
    '\n</svg>\n'
  );
}

/** Share (0–1) of each pixel column's bytes covered by `ranges`. */
export function columnShares(ranges: readonly ByteRange[], size: number, columns: number): Float64Array {
  const covered = new Float64Array(columns);
  const perColumn = size / columns;
  for (const r of ranges) {
    const start = Math.max(0, r.start);
    const end = Math.min(size, r.start + r.length);
    if (end <= start) continue;
    const c0 = Math.min(columns - 1, Math.floor(start / perColumn));
    const c1 = Math.min(columns - 1, Math.floor((end - 1) / perColumn));
    for (let c = c0; c <= c1; c++) {
      const lo = Math.max(start, c * perColumn);
      const hi = Math.min(end, (c + 1) * perColumn);
      covered[c] += hi - lo;
    }
  }
  for (let c = 0; c < columns; c++) covered[c] = Math.min(1, covered[c] / perColumn);
  return covered;
}

/** 0 = nothing changed; 1–4 by share, so one changed byte still shows as a pixel. */
function level(share: number): number {
  return share <= 0 ? 0 : Math.min(LEVELS, Math.ceil(share * LEVELS));
}

function niceStep(raw: number): number {
  if (!(raw > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function formatGib(g: number, step: number): string {
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  return g.toFixed(decimals);
}

function formatDate(d: Date): string {
  return Number.isNaN(d.getTime()) ? '' : d.toISOString().slice(0, 16).replace('T', ' ');
}

function round(n: number): string {
  return (Math.round(n * 10) / 10).toString();
}

function truncate(s: string, max: number): string {
  if (max <= 0) return '';
  const chars = [...s];
  return chars.length <= max ? s : `${chars.slice(0, Math.max(0, max - 1)).join('')}…`;
}

/** Text for XML: markup escaped, characters XML 1.0 cannot hold (controls, lone surrogates) replaced. */
export function escapeXml(s: string): string {
  return (
    s
      // eslint-disable-next-line no-control-regex
      .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd')
      .replace(/&/g, '&amp;')
      .replace(/</g, '&lt;')
      .replace(/>/g, '&gt;')
      .replace(/"/g, '&quot;')
  );
}
