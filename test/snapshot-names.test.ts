import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { type NamedSnapshot, isUsableFileName, snapshotFileNames, snapshotStems } from '../src/names/snapshot-names.js';

/** A table from [id, name] pairs, indexed in order. */
function table(...rows: [id: string, name: string][]): NamedSnapshot[] {
  return rows.map(([uniqueId, name], index) => ({ index, uniqueId, name }));
}

const stems = (...rows: [string, string][]) => snapshotStems(table(...rows));
const NAME_MAX = 255;
const LONGEST_SUFFIX = '.vmstate'.length;

describe('snapshot file names', () => {
  it('keeps unique usable names as they are', () => {
    expect(stems(['1', 'clean install'], ['2', 'before-upgrade'], ['3', 'ünïcödé ☃'])).toEqual(['clean install', 'before-upgrade', 'ünïcödé ☃']);
    expect(stems()).toEqual([]);
  });

  it('uses @ID for names that cannot be file names', () => {
    expect(stems(['1', ''], ['2', '.'], ['3', '..'])).toEqual(['@1', '@2', '@3']);
    // '...' and names with dots or spaces are fine.
    expect(stems(['1', '...'], ['2', '.hidden'], ['3', ' '])).toEqual(['...', '.hidden', ' ']);
  });

  it('keeps the readable part of a name with / or NUL: visible stand-ins, then @ID', () => {
    expect(stems(['3', 'snap 3/odd'], ['4', 'a/b'], ['5', 'nul\0byte'], ['6', '/'], ['7', '../x'])).toEqual(['snap 3∕odd@3', 'a∕b@4', 'nul␀byte@5', '∕@6', '..∕x@7']);
    // A real name equal to the stand-in form keeps it; the altered one still carries @ID.
    expect(stems(['1', 'a∕b'], ['2', 'a/b'])).toEqual(['a∕b', 'a∕b@2']);
    // Where the ID cannot be used: NAME#INDEX with the readable form.
    expect(stems(['x', 'a/b'], ['x', 'a/b'])).toEqual(['a∕b#0', 'a∕b#1']);
    // Over 200 bytes even as stand-ins: left out.
    expect(stems(['9', `${'a'.repeat(200)}/`])).toEqual(['@9']);
  });

  it('limits names to 200 bytes (UTF-8), leaving room for the suffix within NAME_MAX', () => {
    const ascii200 = 'a'.repeat(200);
    const utf200 = 'é'.repeat(100); // 2 bytes each
    const utf201 = '€'.repeat(67); // 3 bytes each: 201 bytes in 67 characters
    expect(stems(['1', ascii200], ['2', 'a'.repeat(201)], ['3', utf200], ['4', utf201])).toEqual([ascii200, '@2', utf200, '@4']);
    expect(isUsableFileName(utf200)).toBe(true);
    expect(isUsableFileName(utf201)).toBe(false);
  });

  it('gives shared names NAME@ID', () => {
    expect(stems(['1', 'x'], ['2', 'x'], ['3', 'y'])).toEqual(['x@1', 'x@2', 'y']);
    expect(stems(['10', 'same'], ['11', 'same'], ['12', 'same'])).toEqual(['same@10', 'same@11', 'same@12']);
  });

  it('falls back to #INDEX where the ID is shared or unusable', () => {
    expect(stems(['1', 'x'], ['1', 'x'])).toEqual(['x#0', 'x#1']);
    expect(stems(['1', ''], ['1', ''])).toEqual(['#0', '#1']);
    expect(stems(['', ''], ['a/b', 'x'], ['a/b', 'x'], ['..', '..'])).toEqual(['#0', 'x#1', 'x#2', '#3']);
    // A usable ID shared with another snapshot is not used, even where the names differ.
    expect(stems(['7', ''], ['7', 'fine'])).toEqual(['#0', 'fine']);
  });

  it('resolves a derived name that equals a real one', () => {
    // Snapshot 0 would be "x@1", which snapshot 2 is really called: the real name wins.
    expect(stems(['1', 'x'], ['2', 'x'], ['3', 'x@1'])).toEqual(['x@1#0', 'x@2', 'x@1']);
    expect(stems(['1', ''], ['2', '@1'])).toEqual(['@1#0', '@1']);
    expect(stems(['1', 'x'], ['1', 'x'], ['2', 'x#0'])).toEqual(['x#0#0', 'x#1', 'x#0']);
  });

  it('resolves two derived names that are equal', () => {
    // 0 and 1 share "x": 0 becomes x@1#5. 5 and 6 share "x@1" and an ID: 5 becomes x@1#5 too.
    const got = stems(['1#5', 'x'], ['9', 'x'], ['a', 'p'], ['b', 'q'], ['c', 'r'], ['7', 'x@1'], ['7', 'x@1']);
    expect(got).toEqual(['x@1#5', 'x@9', 'p', 'q', 'r', 'x@1#5#5', 'x@1#6']);
    // "a@b" + "@c" and "a" + "@b@c" make the same NAME@ID: the later one takes #INDEX.
    expect(stems(['c', 'a@b'], ['c2', 'a@b'], ['b@c', 'a'], ['z', 'a'])).toEqual(['a@b@c', 'a@b@c2', 'a@b@c#2', 'a@z']);
  });

  it('keeps derived names within NAME_MAX with the longest suffix, even with long names and IDs', () => {
    const name = 'n'.repeat(200);
    const got = stems(['i'.repeat(200), name], ['j'.repeat(200), name]);
    expect(new Set(got).size).toBe(2);
    for (const stem of got) {
      expect(Buffer.byteLength(stem) + LONGEST_SUFFIX).toBeLessThanOrEqual(NAME_MAX);
      expect(stem.startsWith(name)).toBe(true);
    }
    // NAME@ID up to 240 bytes; past that NAME#INDEX.
    expect(got).toEqual([`${name}#0`, `${name}#1`]);
    expect(stems(['1', name], ['2', name])).toEqual([`${name}@1`, `${name}@2`]);
    const id39 = 'i'.repeat(39);
    expect(stems([id39, name], ['j' + id39, name])).toEqual([`${name}@${id39}`, `${name}#1`]);
  });

  it('is deterministic', () => {
    const t = table(['1', 'a'], ['2', 'a'], ['3', ''], ['3', 'b/c'], ['4', 'a@1']);
    expect(snapshotStems(t)).toEqual(snapshotStems(t.map((s) => ({ ...s }))));
    expect(snapshotStems(t)).toEqual(['a@1#0', 'a@2', '#2', 'b∕c#3', 'a@1']);
  });

  it('adds .vmstate only where the snapshot saved VM state', () => {
    const names = snapshotFileNames([
      { index: 0, uniqueId: '1', name: 'with', vmStateSize: 4096 },
      { index: 1, uniqueId: '2', name: 'without', vmStateSize: 0 },
      { index: 2, uniqueId: '3', name: '', vmStateSize: 1 },
    ]);
    expect(names).toEqual([{ raw: 'with.raw', vmstate: 'with.vmstate' }, { raw: 'without.raw' }, { raw: '@3.raw', vmstate: '@3.vmstate' }]);
  });

  it('never gives two snapshots one name, nor an unusable name (random tables)', () => {
    const piece = fc.constantFrom('', '.', '..', '/', '\0', '@', '#', '1', '2', 'a', 'b', '#0', '@1', 'é', 'x'.repeat(100), 'y'.repeat(60));
    const text = fc.array(piece, { maxLength: 4 }).map((p) => p.join(''));
    const row = fc.tuple(text, text);
    fc.assert(
      fc.property(fc.array(row, { maxLength: 30 }), (rows) => {
        const t = table(...rows);
        const got = snapshotStems(t);
        expect(got).toHaveLength(t.length);
        expect(new Set(got).size).toBe(got.length);
        const nameCount = new Map<string, number>();
        for (const s of t) nameCount.set(s.name, (nameCount.get(s.name) ?? 0) + 1);
        got.forEach((stem, i) => {
          expect(isUsableFileName(stem) || Buffer.byteLength(stem) > 200).toBe(true);
          expect(stem.includes('/') || stem.includes('\0') || stem === '' || stem === '.' || stem === '..').toBe(false);
          expect(Buffer.byteLength(stem) + LONGEST_SUFFIX).toBeLessThanOrEqual(NAME_MAX);
          const name = t[i]!.name;
          // A usable name no one else has is kept as it is; any other usable name starts its stem.
          if (isUsableFileName(name) && nameCount.get(name) === 1) expect(stem).toBe(name);
          else if (isUsableFileName(name)) expect(stem.startsWith(name) && stem.length > name.length).toBe(true);
        });
        expect(snapshotStems(t)).toEqual(got);
      }),
      { numRuns: 500 },
    );
  });
});
