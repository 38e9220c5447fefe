/**
 * The fuse module's enable_uring parameter for the bench: FUSE over io_uring is offered only to
 * connections made while it is Y (root; default N). Set for as long as some configuration needs it
 * and put back to what it was when the last one lets go, at the bench's clean-up, or on a signal.
 * (Kernel 6.18 keeps a connection on io_uring if it goes back to N while mounted; older ones failed
 * its ring commands then, so it stays Y while such a mount is up.)
 */
import fs from 'node:fs';
import { ENABLE_URING_PARAMETER as URING_PARAM } from '../../src/mount/fuse3-native.js';
import { atCleanUp, log } from './util.js';

let holders = 0;
let before: string | undefined;
let dropCleanUp: (() => void) | undefined;

function restore(): void {
  if (before !== undefined) fs.writeFileSync(URING_PARAM, `${before}\n`);
}

/** Sets enable_uring to Y (throws when the kernel has no such parameter); returns the release. */
export function holdUringEnabled(): () => void {
  if (holders === 0) {
    if (!fs.existsSync(URING_PARAM)) throw new Error(`${URING_PARAM} is absent: this kernel has no FUSE over io_uring`);
    before = fs.readFileSync(URING_PARAM, 'utf8').trim();
    dropCleanUp = atCleanUp(restore);
    fs.writeFileSync(URING_PARAM, 'Y\n');
    if (before !== 'Y') log(`enable_uring ${before} -> Y (put back when done)`);
  }
  holders++;
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (--holders > 0) return;
    restore();
    dropCleanUp?.();
    dropCleanUp = undefined;
    before = undefined;
  };
}
