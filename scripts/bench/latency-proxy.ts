/**
 * A TCP proxy that adds a fixed delay to every chunk in each direction: network latency on loopback for
 * one server only, where `tc qdisc ... netem` is not available (this kernel has no sch_netem) or would
 * slow every other process on the machine. Order is kept (every chunk waits the same time); bandwidth is
 * not limited.
 *
 * As a script: tsx scripts/bench/latency-proxy.ts TARGET_PORT DELAY_MS  (prints its port on stdout)
 */
import { type ChildProcess, spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

export function serveDelayed(targetPort: number, delayMs: number): Promise<net.Server> {
  const server = net.createServer((client) => {
    client.setNoDelay(true);
    const upstream = net.connect(targetPort, '127.0.0.1');
    upstream.setNoDelay(true);
    const pipe = (from: net.Socket, to: net.Socket) => {
      from.on('data', (d) => setTimeout(() => to.writable && to.write(d), delayMs));
      from.on('end', () => setTimeout(() => to.end(), delayMs));
      from.on('error', () => setTimeout(() => to.destroy(), delayMs));
      from.on('close', () => setTimeout(() => to.destroy(), delayMs));
    };
    pipe(client, upstream);
    pipe(upstream, client);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** The proxy in its own process (so that the bench's own work does not delay it more). */
export async function startLatencyProxy(targetPort: number, delayMs: number): Promise<{ port: number; child: ChildProcess; stop(): void }> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), String(targetPort), String(delayMs)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(Number(out.trim()));
    });
    child.once('exit', (c) => reject(new Error(`latency proxy exited (${c})`)));
  });
  return { port, child, stop: () => child.kill('SIGKILL') };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const server = await serveDelayed(Number(process.argv[2]), Number(process.argv[3]));
  process.stdout.write(`${(server.address() as net.AddressInfo).port}\n`);
}
