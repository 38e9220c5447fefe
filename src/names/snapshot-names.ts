/**
 * File names for snapshots, by one deterministic rule (documented in the README):
 *
 * 1. A snapshot's stem is its name when the name is usable as a file name: not empty, not `.` or `..`,
 *    no `/` and no NUL, at most 200 bytes (room for the suffix within NAME_MAX).
 * 2. A usable name that no other snapshot shares is used as it is: `NAME.raw`, `NAME.vmstate`.
 * 3. Otherwise (unusable or shared) the stem is `NAME@ID` with the snapshot's unique ID, when that ID
 *    is itself usable and unique in the table and the stem stays within 240 bytes (room for one
 *    `#INDEX` and `.vmstate` within NAME_MAX, 255). NAME here is the name's readable form: each `/`
 *    becomes `∕` (U+2215 DIVISION SLASH) and each NUL `␀` (U+2400), so `snap 3/odd` (ID 3) becomes
 *    `snap 3∕odd@3`; where even that form is unusable (empty, `.`, `..`, over 200 bytes) it is left
 *    out: `@ID`.
 * 4. Otherwise the stem is `#INDEX` (the entry's position in the table, from 0), with the readable
 *    NAME before it where there is one: `NAME#INDEX`.
 * 5. If a stem made by rules 3-4 still equals another snapshot's stem, `#INDEX` is added until unique.
 *
 * So no snapshot is ever hidden and no two snapshots share a file name, and the same table always
 * gives the same names.
 */
export interface NamedSnapshot {
  index: number;
  uniqueId: string;
  name: string;
}

const MAX_STEM_BYTES = 200;
/** `NAME@ID` at most: with rule 5's `#INDEX` (index < 65536: 6 bytes) and `.vmstate`, within NAME_MAX. */
const MAX_DERIVED_BYTES = 240;

export function isUsableFileName(s: string): boolean {
  return s !== '' && s !== '.' && s !== '..' && !s.includes('/') && !s.includes('\0') && Buffer.byteLength(s) <= MAX_STEM_BYTES;
}

/** The name with `/` and NUL replaced by visible stand-ins; undefined where that is still unusable. */
export function readableName(name: string): string | undefined {
  const readable = name.replaceAll('/', '\u2215').replaceAll('\0', '\u2400');
  return isUsableFileName(readable) ? readable : undefined;
}

function counts(values: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const v of values) m.set(v, (m.get(v) ?? 0) + 1);
  return m;
}

/** The stem (file name without `.raw` / `.vmstate`) of each snapshot, in table order. */
export function snapshotStems(snapshots: readonly NamedSnapshot[]): string[] {
  const nameCount = counts(snapshots.map((s) => s.name));
  const idCount = counts(snapshots.map((s) => s.uniqueId));
  const stems = snapshots.map((s) => {
    const usable = isUsableFileName(s.name);
    if (usable && nameCount.get(s.name) === 1) return { stem: s.name, derived: false };
    const prefix = usable ? s.name : (readableName(s.name) ?? '');
    const withId = `${prefix}@${s.uniqueId}`;
    if (isUsableFileName(s.uniqueId) && idCount.get(s.uniqueId) === 1 && Buffer.byteLength(withId) <= MAX_DERIVED_BYTES) return { stem: withId, derived: true };
    return { stem: `${prefix}#${s.index}`, derived: true };
  });
  const taken = new Set(stems.filter((s) => !s.derived).map((s) => s.stem));
  return stems.map((s, i) => {
    if (!s.derived) return s.stem;
    let stem = s.stem;
    while (taken.has(stem)) stem = `${stem}#${snapshots[i]!.index}`;
    taken.add(stem);
    return stem;
  });
}

export interface SnapshotFileNames {
  raw: string;
  /** Present only where the snapshot saved VM state. */
  vmstate?: string;
}

export function snapshotFileNames(snapshots: readonly (NamedSnapshot & { vmStateSize: number })[]): SnapshotFileNames[] {
  return snapshotStems(snapshots).map((stem, i) => ({
    raw: `${stem}.raw`,
    ...(snapshots[i]!.vmStateSize > 0 ? { vmstate: `${stem}.vmstate` } : {}),
  }));
}
