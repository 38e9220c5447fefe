import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** Where scripts/make-fixtures.sh puts QEMU-made images and QEMU's raw output for each view. */
export const fixturesDir = process.env.QCOW_FIXTURES ?? path.join(repoRoot, 'fixtures');

export interface FixtureView {
  view: 'active' | 'snapshot' | 'vmstate';
  snapshot?: string;
  id?: string;
  /** QEMU's bytes for this view, relative to fixturesDir (absent for views compared by regions only). */
  oracle?: string;
  size: number;
  [key: string]: unknown;
}

export interface FixtureImage {
  name: string;
  image: string;
  description: string;
  compare: 'full' | 'sampled';
  written?: [number, number][];
  views: FixtureView[];
  [key: string]: unknown;
}

export interface FixtureManifest {
  qemu: string;
  images: FixtureImage[];
}

export function fixturesReady(): boolean {
  return fs.existsSync(path.join(fixturesDir, 'manifest.json'));
}

export function loadManifest(): FixtureManifest {
  return JSON.parse(fs.readFileSync(path.join(fixturesDir, 'manifest.json'), 'utf8')) as FixtureManifest;
}

export function fixturePath(relative: string): string {
  return path.join(fixturesDir, relative);
}
