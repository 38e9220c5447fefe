/**
 * A damaged part of an image that was left out instead of refusing the whole image (see OpenOptions
 * `strict`): what could not be read, where in the file, why, and what it hides.
 */
export interface ImageProblem {
  /** The structure: `snapshot table`, `snapshot 1 ("x", id 2): L1 table`, `snapshot 0: extra data`. */
  what: string;
  /** Byte offset of that structure in the image file. */
  offset: number;
  /** The same offset in hex, as the messages write it. */
  where: string;
  /** Why it cannot be used (one line, without the file name). */
  why: string;
  /** What is hidden because of it: `all 2 snapshots`, `snapshot 1`. */
  hides: string;
}

/** One line for a problem: `snapshot table at 0x0: ...; all 65536 snapshots hidden`. */
export function problemLine(file: string, p: ImageProblem): string {
  return `${file}: ${p.what} at ${p.where}: ${p.why}; ${p.hides} hidden`;
}
