import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { RangeList, clipRanges, mergeRanges, rangesContain, totalBytes } from '../src/diff/ranges.js';
import { columnShares, escapeXml, renderTimelineSvg, type TimelineBand } from '../src/diff/svg.js';
import { prng } from './support/prng.js';
import { toolsAvailable } from './support/tools.js';

describe('ranges', () => {
  it('merges touching and overlapping ranges added in order', () => {
    const l = new RangeList();
    l.add(0, 10);
    l.add(10, 5);
    l.add(12, 1);
    l.add(20, 5);
    l.add(22, 10);
    expect(l.items).toEqual([
      { start: 0, length: 15 },
      { start: 20, length: 12 },
    ]);
    expect(l.total).toBe(27);
    expect(() => l.add(5, 1)).toThrow(RangeError);
  });

  it('sorts, clips and searches', () => {
    const merged = mergeRanges([
      { start: 50, length: 10 },
      { start: 0, length: 5 },
      { start: 3, length: 4 },
    ]);
    expect(merged).toEqual([
      { start: 0, length: 7 },
      { start: 50, length: 10 },
    ]);
    expect(clipRanges(merged, 55)).toEqual([
      { start: 0, length: 7 },
      { start: 50, length: 5 },
    ]);
    expect(totalBytes(merged)).toBe(17);
    expect([0, 6, 7, 49, 50, 59, 60].map((p) => rangesContain(merged, p))).toEqual([true, true, false, false, true, true, false]);
  });
});

const TIB = 1024 ** 4;

function bigTimeline(): TimelineBand[] {
  const random = prng(7);
  const bands: TimelineBand[] = [];
  for (let i = 0; i < 200; i++) {
    const l = new RangeList();
    let at = 0;
    // ~5000 scattered 64 KiB clusters per snapshot
    for (let k = 0; k < 5000; k++) {
      at += Math.floor(random() * (2 * TIB / 5000)) + 65536;
      l.add(at, 65536);
    }
    bands.push({ label: `snap-${i}`, date: new Date(Date.UTC(2026, 0, 1) + i * 3600_000), size: 2 * TIB, changed: i === 0 ? undefined : l.items });
  }
  bands.push({ label: 'active', size: 2 * TIB, changed: [{ start: 0, length: TIB }] });
  return bands;
}

describe('timeline SVG', () => {
  it('aggregates into pixel columns, a single changed byte still counts', () => {
    const shares = columnShares([{ start: 0, length: 150 }, { start: 999, length: 1 }], 1000, 10);
    expect([...shares]).toEqual([1, 0.5, 0, 0, 0, 0, 0, 0, 0, 0.01]);
  });

  it('stays small for a 2 TiB disk with 200 snapshots', () => {
    const svg = renderTimelineSvg({ title: 'big.qcow2', bands: bigTimeline(), partitions: [{ label: 'p1 EFI', start: 1 << 20, size: 512 << 20 }, { label: 'p2 root', start: 513 << 20, size: 2 * TIB - (514 << 20) }] });
    expect(svg.length).toBeLessThan(3_000_000);
    expect((svg.match(/<path /g) ?? []).length).toBeLessThanOrEqual(201 * 4);
    expect(svg).toContain('snap-199<tspan fill="#666" dx="6">2026-01-09 07:00');
    expect(svg).toContain('>2000<'); // GiB ticks
  });

  it('escapes names an image may hold', () => {
    expect(escapeXml('a<b>&"\x01\ud800')).toBe('a&lt;b&gt;&amp;&quot;\ufffd\ufffd');
  });

  const tools = toolsAvailable('rsvg-convert', 'xmllint');
  it.skipIf(!tools)('parses as XML and renders with rsvg-convert', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'diff-svg-'));
    try {
      const bands: TimelineBand[] = [
        { label: 'first <&> "snap"', date: new Date(0), size: 64 << 20 },
        { label: 'second', date: new Date(86400_000), size: 64 << 20, changed: [{ start: 1 << 20, length: 65536 }, { start: 40 << 20, length: 4 << 20 }] },
        { label: 'active', size: 96 << 20, changed: [{ start: 64 << 20, length: 32 << 20 }] },
      ];
      const file = path.join(dir, 'd.svg');
      fs.writeFileSync(file, renderTimelineSvg({ title: 'x.qcow2', bands, partitions: [{ label: 'p1', start: 1 << 20, size: 60 << 20 }] }));
      execFileSync('xmllint', ['--noout', file]);
      execFileSync('rsvg-convert', ['-o', path.join(dir, 'd.png'), file]);
      const png = fs.readFileSync(path.join(dir, 'd.png'));
      expect(png.subarray(1, 4).toString()).toBe('PNG');
      const svg = renderTimelineSvg({ title: 'big', bands: bigTimeline() });
      fs.writeFileSync(file, svg);
      execFileSync('xmllint', ['--noout', file]);
      execFileSync('rsvg-convert', ['-o', path.join(dir, 'big.png'), file]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
