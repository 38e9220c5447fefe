import { describe, expect, it } from 'vitest';
import type { SnapshotInfo } from '../src/info/describe.js';
import { oneLine } from '../src/errors.js';
import { formatExtents, formatSizeExact, formatSnapshotTable } from '../src/info/format-text.js';
import { formatSize } from '../src/units.js';

describe('formatSize, as QEMU size_to_str', () => {
  it.each([
    [0, '0 B'],
    [512, '512 B'],
    [999, '999 B'],
    [1000, '0.977 KiB'],
    [1024, '1 KiB'],
    [433168, '423 KiB'],
    [707707, '691 KiB'],
    [999 * 1024, '999 KiB'],
    [1000 * 1024, '0.977 MiB'],
    [1023 * 1024, '0.999 MiB'],
    [3104768, '2.96 MiB'],
    [8389120, '8 MiB'],
    [1.5 * 2 ** 30, '1.5 GiB'],
    [2 ** 41, '2 TiB'],
  ])('%d -> %s', (n, text) => {
    expect(formatSize(n)).toBe(text);
  });

  it('exact sizes carry the byte count', () => {
    expect(formatSizeExact(8389120)).toBe('8 MiB (8389120 bytes)');
  });
});

describe('oneLine (control characters escaped in text output)', () => {
  it('escapes control characters, keeps the rest', () => {
    expect(oneLine('a\nb\tc\x7f')).toBe('a\\nb\\tc\\x7f');
    expect(oneLine('ünïcödé ☃ / x')).toBe('ünïcödé ☃ / x');
  });
});

const snap = (over: Partial<SnapshotInfo>): SnapshotInfo => ({
  index: 0,
  id: '1',
  name: 's',
  date: '2026-01-01T00:00:00.000Z',
  dateSeconds: 1767225600,
  dateNanoseconds: 0,
  vmClockNs: '0',
  vmClock: '00:00:00.000',
  vmStateSize: 0,
  diskSize: 1048576,
  icount: null,
  l1Size: 1,
  l1TableOffset: 65536,
  extraDataSize: 24,
  files: { raw: 'snapshots/s.raw', vmstate: null },
  partitions: null,
  ...over,
});

describe('formatSnapshotTable', () => {
  it('aligns columns to their contents (wide characters counted as two columns)', () => {
    const table = formatSnapshotTable([
      snap({ id: '1', name: 'short', files: { raw: 'snapshots/short.raw', vmstate: 'snapshots/short.vmstate' }, vmStateSize: 433168 }),
      snap({ id: '10', name: '雪 snow', icount: '12345', files: { raw: 'snapshots/雪 snow.raw', vmstate: null } }),
      snap({ id: '2', name: '', files: { raw: 'snapshots/@2.raw', vmstate: null } }),
    ]).split('\n');
    expect(table[0]).toMatch(/^ID +TAG +VM SIZE +DATE +VM CLOCK +ICOUNT +FILE$/);
    expect(table[1]).toMatch(/^1 +short +423 KiB +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +00:00:00\.000 +snapshots\/short\.raw, snapshots\/short\.vmstate$/);
    expect(table[2]).toMatch(/ 12345 {2}snapshots\/雪 snow\.raw$/);
    // The DATE column ends at the same terminal column on every line.
    const col = (line: string, re: RegExp) => {
      const m = re.exec(line)!;
      let w = 0;
      for (const ch of line.slice(0, m.index + m[0].length)) w += /[\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\uff00-\uff60]/.test(ch) ? 2 : 1;
      return w;
    };
    const dateEnds = table.slice(1).map((l) => col(l, /\d\d:\d\d:\d\d(?= )/));
    expect(new Set(dateEnds).size).toBe(1);
    expect(col(table[0]!, /DATE/)).toBe(dateEnds[0]);
  });
});

describe('formatExtents', () => {
  it('lists runs with hex offsets, kind, depth, host offset and file for data', () => {
    const text = formatExtents(
      [
        { start: 0, length: 65536, kind: 'data', depth: 0, host: 327680 },
        { start: 65536, length: 131072, kind: 'unallocated', depth: 0 },
        { start: 196608, length: 65536, kind: 'compressed', depth: 1 },
      ],
      ['/img/top.qcow2', '/img/base.qcow2'],
    ).split('\n');
    expect(text[0]).toMatch(/^ *OFFSET +LENGTH +KIND +DEPTH +HOST OFFSET +FILE$/);
    expect(text[1]).toMatch(/^ +0x0 +0x10000 +data +0 +0x50000 +\/img\/top\.qcow2$/);
    expect(text[2]).toMatch(/^ *0x10000 +0x20000 +unallocated +0$/);
    expect(text[3]).toMatch(/^ *0x30000 +0x10000 +compressed +1 +\/img\/base\.qcow2$/);
  });
});
