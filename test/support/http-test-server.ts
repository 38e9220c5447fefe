/**
 * A small HTTP server that misbehaves on purpose, for the remote-file tests. It runs in its own process
 * (the reader under test blocks its thread while it waits for bytes) and serves a file with Range
 * support, bent by a mode:
 *
 *   normal          a correct server
 *   norange         answers every GET with 200 and the whole file
 *   fail-first=N    the first N requests after the probe get 503
 *   slow=BYTES      sends the body BYTES at a time, every 100 ms
 *   stall           answers the probe, then never answers again (the connection stays open)
 *   die-after=N     after N requests, writes half of the next body and exits
 *   change-after=N  after N requests, the ETag and Last-Modified change
 *   redirect        every GET is answered with a 302 to /real/<path> (which is served)
 *
 * Usage: node --import tsx http-test-server.ts FILE MODE   (prints the port on stdout)
 */
import fs from 'node:fs';
import http from 'node:http';

const [file, mode = 'normal'] = process.argv.slice(2);
const data = fs.readFileSync(file);
const [name, arg] = mode.split('=');
const n = Number(arg ?? 0);
let requests = 0;
/** The open's request (the first Range request at 0) is the probe, whatever its length. */
let probed = false;
const seen: string[] = [];

const server = http.createServer((req, res) => {
  requests++;
  seen.push(`${req.method} ${req.url} ${req.headers.range ?? ''} ${req.headers.authorization ?? ''}`);
  if (req.url === '/__log') {
    res.end(JSON.stringify(seen));
    return;
  }
  if (name === 'redirect' && !req.url?.startsWith('/real/')) {
    res.writeHead(302, { Location: `/real${req.url}` });
    res.end();
    return;
  }
  const changed = name === 'change-after' && requests > n;
  const headers = {
    ETag: changed ? '"v2"' : '"v1"',
    'Last-Modified': changed ? 'Thu, 02 Jan 2025 00:00:00 GMT' : 'Wed, 01 Jan 2025 00:00:00 GMT',
    'Accept-Ranges': 'bytes',
  };
  if (name === 'norange') {
    res.writeHead(200, { ...headers, 'Content-Length': data.length });
    res.end(data);
    return;
  }
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  if (!m) {
    res.writeHead(200, { ...headers, 'Content-Length': data.length });
    res.end(data);
    return;
  }
  const start = Number(m[1]);
  const end = Math.min(Number(m[2]), data.length - 1);
  const probe = start === 0 && (end === 0 || !probed);
  if (start === 0) probed = true;
  if (!probe && name === 'fail-first' && requests <= n + 1) {
    res.writeHead(503);
    res.end();
    return;
  }
  if (!probe && name === 'stall') return; // never answers
  const body = data.subarray(start, end + 1);
  res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${data.length}`, 'Content-Length': body.length });
  if (!probe && name === 'die-after' && requests > n) {
    res.write(body.subarray(0, body.length >> 1), () => process.exit(0));
    return;
  }
  if (!probe && name === 'slow') {
    let at = 0;
    const tick = setInterval(() => {
      const piece = body.subarray(at, at + n);
      at += piece.length;
      if (at >= body.length) {
        clearInterval(tick);
        res.end(piece);
      } else res.write(piece);
    }, 100);
    res.on('close', () => clearInterval(tick));
    return;
  }
  res.end(body);
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${(server.address() as { port: number }).port}\n`);
});
