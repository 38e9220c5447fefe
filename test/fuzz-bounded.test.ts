/**
 * A short, fixed-seed fuzz campaign (scripts/fuzz.ts) in every test run: mutants of valid images must
 * be refused or read with a one-line QcowError (EBADIMAGE / EUNSUPPORTED / EIO), never crash, hang or
 * grow without bound. Longer campaigns: `npm run fuzz -- --seed S --iterations N`.
 */
import { describe, expect, it } from 'vitest';
import { formatReport, runFuzz } from '../scripts/fuzz.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'qemu-io');

describe.skipIf(!ready)('bounded fuzz campaign', () => {
  it('seed 20261125: no bug, hang, crash or runaway memory', { timeout: 120_000 }, async () => {
    const report = await runFuzz({ seed: 20261125, iterations: 3000, timeLimitSec: 25, deadlineSec: 10, rssLimitMiB: 768 });
    console.log(formatReport(report));
    expect(report.findings, formatReport(report)).toEqual([]);
    // Enough iterations ran to mean something, and both refusals and reads were exercised.
    expect(report.iterations).toBeGreaterThan(200);
    expect(report.outcomes['refused-EBADIMAGE'] ?? 0).toBeGreaterThan(0);
    expect((report.outcomes.opened ?? 0) + (report.outcomes['opened-eio'] ?? 0)).toBeGreaterThan(0);
  });
});
