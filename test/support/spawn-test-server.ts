import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'http-test-server.ts');

/** http-test-server.ts in a child process: serves `file` bent by `mode` on 127.0.0.1. */
export interface TestServer {
  url: string;
  child: ChildProcess;
  /** Kills the server (SIGKILL) and waits for it to be gone. */
  kill(): Promise<void>;
}

export async function startTestServer(file: string, mode: string): Promise<TestServer> {
  const child = spawn(process.execPath, ['--import', 'tsx', script, file, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(Number(out.trim()));
    });
    child.once('exit', (code) => reject(new Error(`test server exited (${code}) before listening`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    child,
    kill: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await gone;
    },
  };
}
