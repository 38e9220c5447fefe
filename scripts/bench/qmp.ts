/**
 * A minimal QMP client over a QEMU child's stdio: enough to take hundreds of internal snapshots in one
 * process (qemu-img snapshot -c starts a process per snapshot and takes ~40 s for 500).
 */
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { track } from './util.js';

export interface Qmp {
  execute(command: string, args?: Record<string, unknown>): Promise<unknown>;
  /** `qemu-io DEVICE "CMD"` through the human monitor. */
  qemuIo(device: string, cmd: string): Promise<void>;
  quit(): Promise<void>;
}

export async function startQmp(qemuArgs: string[]): Promise<Qmp> {
  const child = spawn('qemu-system-x86_64', ['-nodefaults', '-display', 'none', '-qmp', 'stdio', ...qemuArgs], { stdio: ['pipe', 'pipe', 'pipe'] });
  track(child);
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const lines = readline.createInterface({ input: child.stdout });
  const queue: string[] = [];
  let waiting: ((line: string | null) => void) | undefined;
  let closed = false;
  lines.on('line', (l) => {
    if (waiting) {
      const w = waiting;
      waiting = undefined;
      w(l);
    } else queue.push(l);
  });
  lines.on('close', () => {
    closed = true;
    if (waiting) waiting(null);
  });
  const next = (): Promise<string | null> =>
    queue.length > 0 ? Promise.resolve(queue.shift()!) : closed ? Promise.resolve(null) : new Promise((r) => (waiting = r));

  const readMessage = async (): Promise<Record<string, unknown>> => {
    for (;;) {
      const l = await next();
      if (l === null) throw new Error(`QEMU exited early: ${stderr.trim()}`);
      const s = l.trim();
      if (!s.startsWith('{')) continue;
      try {
        return JSON.parse(s) as Record<string, unknown>;
      } catch {
        continue;
      }
    }
  };
  const execute = async (command: string, args?: Record<string, unknown>): Promise<unknown> => {
    child.stdin.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    for (;;) {
      const m = await readMessage();
      if ('event' in m) continue;
      if ('error' in m) throw new Error(`QMP ${command}: ${JSON.stringify(m.error)}`);
      if ('return' in m) return m.return;
    }
  };

  await readMessage(); // greeting
  await execute('qmp_capabilities');
  return {
    execute,
    async qemuIo(device, cmd) {
      const out = (await execute('human-monitor-command', { 'command-line': `qemu-io ${device} "${cmd}"` })) as string;
      if (/error|failed|invalid/i.test(out)) throw new Error(`qemu-io ${cmd}: ${out.trim()}`);
    },
    async quit() {
      child.stdin.write(`${JSON.stringify({ execute: 'quit' })}\n`);
      await new Promise<void>((resolve, reject) => {
        if (child.exitCode !== null) return resolve();
        child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`QEMU exited with ${code}: ${stderr.trim()}`))));
      });
    },
  };
}
