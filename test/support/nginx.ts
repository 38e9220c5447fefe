import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** A private nginx serving one folder on 127.0.0.1 (Debian's nginx; the test starts and stops it). */
export interface Nginx {
  /** `http://127.0.0.1:PORT` or `https://localhost:PORT`, no trailing slash. */
  url: string;
  port: number;
  /** With `tls`: the self-signed certificate (PEM) the server presents. */
  certPem?: string;
  certFile?: string;
  /** Requests seen so far (from the access log): `METHOD PATH RANGE auth=AUTHORIZATION` (`-` where absent). */
  accessLog(): string[];
  stop(): Promise<void>;
  /** Kills it at once (SIGKILL), for synchronous clean-up paths. */
  kill(): void;
}

export interface NginxOptions {
  /** Serve over HTTPS with a fresh self-signed certificate for `localhost` (made with openssl). */
  tls?: boolean;
  /** Require `Authorization: Bearer TOKEN`. */
  bearer?: string;
  /** nginx's limit_rate (bytes per second per connection, e.g. `1m`): a slow link, for reads caught mid-way. */
  limitRate?: string;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Starts nginx serving `root` read-only; resolves once it accepts connections. */
export async function startNginx(root: string, options: NginxOptions = {}): Promise<Nginx> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow-nginx-'));
  const port = await freePort();
  let certPem: string | undefined;
  let tlsLines = '';
  if (options.tls) {
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem')],
      { stdio: 'ignore' },
    );
    certPem = fs.readFileSync(path.join(dir, 'cert.pem'), 'utf8');
    tlsLines = `ssl_certificate ${dir}/cert.pem; ssl_certificate_key ${dir}/key.pem;`;
  }
  const auth = options.bearer ? `if ($http_authorization != "Bearer ${options.bearer}") { return 401; }` : '';
  const conf = `
daemon off;
master_process off;
worker_processes 1;
user root;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  log_format rq '$request_method $uri $http_range auth=$http_authorization';
  access_log ${dir}/access.log rq;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  sendfile on; keepalive_requests 100000; keepalive_timeout 60s;
  types { application/octet-stream qcow2 raw; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${port} ${options.tls ? 'ssl' : ''};
    ${tlsLines}
    root ${root};
    location / { ${auth} ${options.limitRate ? `limit_rate ${options.limitRate};` : ''} }
  }
}
`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const child: ChildProcess = spawn('nginx', ['-p', dir, '-c', path.join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  await waitForPort(port, 10_000, () => (child.exitCode !== null ? `nginx exited: ${stderr}` : undefined));
  const host = options.tls ? 'localhost' : '127.0.0.1';
  return {
    url: `${options.tls ? 'https' : 'http'}://${host}:${port}`,
    port,
    certPem,
    certFile: options.tls ? path.join(dir, 'cert.pem') : undefined,
    accessLog: () => {
      try {
        return fs.readFileSync(path.join(dir, 'access.log'), 'utf8').split('\n').filter(Boolean);
      } catch {
        return [];
      }
    },
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
    stop: async () => {
      // Killed by a signal (kill() above), it has a signalCode and no exitCode.
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function waitForPort(port: number, timeoutMs: number, failed: () => string | undefined = () => undefined): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const why = failed();
    if (why) throw new Error(why);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on port ${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
