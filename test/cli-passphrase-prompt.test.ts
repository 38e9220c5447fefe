/**
 * The passphrase prompt on a real terminal: qcow-export run on a pseudo-terminal (python3's pty module
 * drives it like a person at a keyboard) asks for the LUKS passphrase, the typed bytes are not echoed,
 * and the image opens (the export equals QEMU's bytes); a wrong passphrase, typed at every prompt, ends
 * in the one-line "no key slot ... opens" error and exit 2.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cryptFixturesReady, cryptPath } from './support/crypt-fixtures.js';
import { repoRoot } from './support/fixtures.js';
import { toolsAvailable } from './support/tools.js';

const ready = toolsAvailable('qemu-img', 'python3', 'stty') && cryptFixturesReady();
const BIN = path.join(repoRoot, 'dist/cli/qcow-export.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-prompt-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs argv on a pty; types each answer (and Enter) when a passphrase prompt appears. */
const DRIVER = `
import json, os, pty, sys
answers, argv = json.loads(sys.argv[1]), sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
out, prompts = b'', 0
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    while out.count(b'assphrase for ') > prompts and out.rstrip(b' ').endswith(b'):'):
        os.write(fd, (answers[prompts] if prompts < len(answers) else '').encode() + b'\\n')
        prompts += 1
_, status = os.waitpid(pid, 0)
print(json.dumps({'output': out.decode('utf8', 'replace'), 'status': os.waitstatus_to_exitcode(status), 'prompts': prompts}))
`;

function onTerminal(answers: string[], args: string[]): { output: string; status: number; prompts: number } {
  const r = spawnSync('python3', ['-c', DRIVER, JSON.stringify(answers), process.execPath, BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as { output: string; status: number; prompts: number };
}

describe.runIf(ready)('passphrase prompt on a terminal', () => {
  const image = cryptPath('luks-aes256-xts/disk.qcow2');

  it('prompts, does not echo, and opens the image', () => {
    const out = path.join(tmp, 'ok.raw');
    const r = onTerminal(['correct horse'], [image, out]);
    expect(r.output).toContain(`Passphrase for ${image} (LUKS): `);
    expect(r.output).not.toContain('correct horse');
    expect(r.prompts).toBe(1);
    expect(r.status, r.output).toBe(0);
    expect(fs.readFileSync(out).equals(fs.readFileSync(cryptPath('luks-aes256-xts/active.raw')))).toBe(true);
  });

  it('a wrong passphrase at every prompt: one line, exit 2, nothing echoed', () => {
    const out = path.join(tmp, 'wrong.raw');
    const r = onTerminal(['not the passphrase', 'not the passphrase', 'not the passphrase'], [image, out]);
    expect(r.prompts, r.output).toBe(3);
    expect(r.output).not.toContain('not the passphrase');
    const errors = r.output.split(/\r?\n/).filter((l) => l.startsWith('qcow-export:'));
    expect(errors).toEqual([`qcow-export: no key slot of ${image} opens with this passphrase`]);
    expect(r.status).toBe(2);
    expect(fs.existsSync(out)).toBe(false);
  });
});
