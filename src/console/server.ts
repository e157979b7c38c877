// `stratovisor console`: a web page over the VMs whose API sockets the console was given (and the
// `*.sock` sockets in --dir): state, config, uptime, counter charts, lifecycle buttons, booting a
// VM on an idle VMM, and each VM's serial console in xterm.js over a WebSocket.
//
// HTTP: Node's http server; WebSockets: the `ws` library. Every request needs the console's token
// (cookie or Authorization: Bearer), except POST /login which takes it; the unauthenticated
// answer is 401 with a login form. Host must be the listen address (DNS rebinding); WebSocket
// upgrades and POSTs from another Origin get 403. The page names VMs by id only: it can reach
// no socket the console was not given.
import http from 'node:http';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, lstatSync, existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer, type WebSocket, type RawData } from 'ws';
import { VmLink, type Viewer } from './vm_link.js';
import { allowedHosts, newToken, originAllowed, presentedToken, sessionCookie, tokenMatches, isLoopback } from './auth.js';

/** Where `npm run build` puts the page's bundle (scripts/build-console.mjs). */
export const WEB_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'console-web');

/** Most bytes one WebSocket message (keystrokes, a paste) may carry; larger ones are refused. */
export const MAX_WS_MESSAGE = 64 * 1024;
/** A viewer that has this much output unsent is too slow: output to it is dropped until it catches up. */
export const VIEWER_BACKLOG_LIMIT = 4 * 1024 * 1024;
const MAX_BODY = 64 * 1024;
const LIFECYCLE = new Set(['pause', 'resume', 'reboot', 'power-button', 'shutdown']);

export interface ConsoleServerOptions {
  host?: string;
  port?: number;
  apiSockets?: string[];
  /** A folder whose `*.sock` entries are API sockets (rescanned at each poll). */
  dir?: string;
  /** Fixed token (tests); default: a new random one. */
  token?: string;
  pollMs?: number;
  /** A VMM that does not answer vm.info in this time is shown Unreachable (default POLL_TIMEOUT_MS). */
  pollTimeoutMs?: number;
  log?: (m: string) => void;
}

export interface BootRequest {
  kernel: string;
  initramfs?: string;
  cmdline?: string;
  vcpus: number;
  memoryMiB: number;
  disks?: string[];
}

class HttpError extends Error {
  constructor(readonly status: number, message: string) { super(message); }
}

const LOGIN_SCRIPT = `(() => {
  const f = document.getElementById('f'), msg = document.getElementById('msg');
  async function login(token) {
    const r = await fetch('/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ token }) });
    if (r.ok) { history.replaceState(null, '', '/'); location.reload(); } else msg.textContent = 'wrong token';
  }
  const m = /[#&]token=([^&]+)/.exec(location.hash);
  if (m) { const t = decodeURIComponent(m[1]); history.replaceState(null, '', '/'); void login(t); }
  f.addEventListener('submit', (e) => { e.preventDefault(); void login(f.elements.token.value); });
})();`;
const LOGIN_SCRIPT_HASH = createHash('sha256').update(LOGIN_SCRIPT).digest('base64');
const LOGIN_PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>Stratovisor console: log in</title></head>
<body style="font-family:sans-serif;background:#111;color:#ddd"><h1>Stratovisor console</h1>
<p>Access needs the token printed when <code>stratovisor console</code> started.</p>
<form id="f"><input name="token" type="password" autocomplete="off" size="40" placeholder="token"> <button>Log in</button></form>
<p id="msg"></p><script>${LOGIN_SCRIPT}</script></body></html>`;

export class ConsoleServer {
  readonly token: string;
  private readonly opts: ConsoleServerOptions;
  private readonly links = new Map<string, VmLink>();
  private readonly bySocket = new Map<string, VmLink>();
  private nextId = 1;
  private readonly http: http.Server;
  private readonly wss: WebSocketServer;
  private hosts = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private readonly log: (m: string) => void;
  host = '127.0.0.1';
  port = 0;

  constructor(opts: ConsoleServerOptions = {}) {
    this.opts = opts;
    this.token = opts.token ?? newToken();
    this.log = opts.log ?? (() => {});
    for (const s of opts.apiSockets ?? []) this.addSocket(s);
    this.http = http.createServer((req, res) => { void this.onRequest(req, res); });
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_WS_MESSAGE });
    this.http.on('upgrade', (req, sock, head) => this.onUpgrade(req, sock as import('node:net').Socket, head));
  }

  /** Start listening; resolves with the URL to open (its fragment carries the token). */
  async listen(): Promise<string> {
    const host = this.opts.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(this.opts.port ?? 0, host, () => { this.http.off('error', reject); resolve(); });
    });
    const addr = this.http.address() as import('node:net').AddressInfo;
    this.host = host;
    this.port = addr.port;
    this.hosts = allowedHosts(host, addr.port);
    if (!isLoopback(host)) this.log(`warning: listening on ${host}, not loopback: anyone who can reach it and has the token controls these VMs`);
    // The first poll is not waited for: a VMM busy booting (or hung) must not hold up the page.
    void this.pollAll();
    this.timer = setInterval(() => { void this.pollAll(); }, this.opts.pollMs ?? 1000);
    return `${this.baseUrl()}/#token=${this.token}`;
  }

  baseUrl(): string {
    return `http://${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`;
  }

  private addSocket(path: string): VmLink {
    const have = this.bySocket.get(path);
    if (have) return have;
    const l = new VmLink(`vm${this.nextId++}`, path, this.opts.pollTimeoutMs);
    this.links.set(l.id, l);
    this.bySocket.set(path, l);
    return l;
  }

  private scanDir(): void {
    const dir = this.opts.dir;
    if (!dir) return;
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch (e) {
      this.log(`--dir ${dir}: ${(e as Error).message}`);
      return;
    }
    for (const n of names.sort()) {
      if (!n.endsWith('.sock')) continue;
      const p = join(dir, n);
      try {
        if (lstatSync(p).isSocket()) this.addSocket(p);
      } catch { /* gone */ }
    }
  }

  private async pollAll(): Promise<void> {
    this.scanDir();
    await Promise.all([...this.links.values()].map((l) => l.poll()));
  }

  /** The VMs as the page sees them. */
  vms(): ReturnType<VmLink['view']>[] {
    return [...this.links.values()].map((l) => l.view());
  }

  private authorized(req: http.IncomingMessage): boolean {
    return tokenMatches(this.token, presentedToken(req));
  }

  private hostOk(req: http.IncomingMessage): boolean {
    const h = req.headers.host?.toLowerCase();
    return h !== undefined && this.hosts.has(h);
  }

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('Referrer-Policy', 'no-referrer');
    res.setHeader('X-Frame-Options', 'DENY');
    res.setHeader('Cache-Control', 'no-store');
    try {
      if (!this.hostOk(req)) throw new HttpError(403, `unexpected Host header ${JSON.stringify(req.headers.host ?? '')}: use ${this.baseUrl()}`);
      const url = new URL(req.url ?? '/', 'http://x');
      const method = req.method ?? 'GET';
      if (method !== 'GET' && method !== 'HEAD' && !originAllowed(req.headers.origin, this.hosts)) {
        throw new HttpError(403, `requests from origin ${req.headers.origin} are refused`);
      }
      if (method === 'POST' && url.pathname === '/login') return await this.login(req, res);
      if (url.pathname === '/favicon.ico') { res.writeHead(204); res.end(); return; }
      if (!this.authorized(req)) {
        if (method === 'GET' && (url.pathname === '/' || url.pathname === '/index.html')) {
          res.writeHead(401, {
            'Content-Type': 'text/html; charset=utf-8',
            'Content-Security-Policy': `default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-${LOGIN_SCRIPT_HASH}'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'`,
          });
          res.end(LOGIN_PAGE);
          return;
        }
        throw new HttpError(401, 'the console token is required (log in at /)');
      }
      if (method === 'GET') return this.get(url.pathname, res);
      if (method === 'POST') return await this.post(url.pathname, req, res);
      throw new HttpError(405, `method ${method} not allowed`);
    } catch (e) {
      const status = e instanceof HttpError ? e.status : 500;
      if (!(e instanceof HttpError)) this.log(`request ${req.method} ${req.url}: ${(e as Error).stack ?? String(e)}`);
      if (!res.headersSent) res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ error: (e as Error).message }));
    }
  }

  private async readBody(req: http.IncomingMessage): Promise<unknown> {
    const type = req.headers['content-type'] ?? '';
    // A JSON content type cannot be sent cross-site without a CORS preflight (which we never allow).
    if (!/^application\/json\b/i.test(type)) throw new HttpError(415, 'the body must be application/json');
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of req) {
      n += (c as Buffer).length;
      if (n > MAX_BODY) throw new HttpError(413, `body larger than ${MAX_BODY} bytes`);
      chunks.push(c as Buffer);
    }
    try {
      return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    } catch {
      throw new HttpError(400, 'the body is not valid JSON');
    }
  }

  private async login(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const body = await this.readBody(req);
    const token = typeof body === 'object' && body !== null ? (body as { token?: unknown }).token : undefined;
    if (typeof token !== 'string' || !tokenMatches(this.token, token)) throw new HttpError(401, 'wrong token');
    res.writeHead(204, { 'Set-Cookie': sessionCookie(this.token) });
    res.end();
  }

  private get(path: string, res: http.ServerResponse): void {
    const assets: Record<string, [string, string]> = {
      '/': ['index.html', 'text/html; charset=utf-8'],
      '/index.html': ['index.html', 'text/html; charset=utf-8'],
      '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
      '/app.css': ['app.css', 'text/css; charset=utf-8'],
    };
    const a = assets[path];
    if (a) {
      const file = join(WEB_DIR, a[0]);
      if (!existsSync(file)) throw new HttpError(500, `the page is not built (${file} is missing): run npm run build`);
      res.writeHead(200, {
        'Content-Type': a[1],
        'Content-Security-Policy': "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
      });
      res.end(readFileSync(file));
      return;
    }
    if (path === '/api/vms') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ vms: this.vms(), now: Date.now() }));
      return;
    }
    throw new HttpError(404, `no such page: ${path}`);
  }

  private link(id: string | undefined): VmLink {
    const l = id === undefined ? undefined : this.links.get(id);
    if (!l) throw new HttpError(404, `no VM ${JSON.stringify(id)} in this console`);
    return l;
  }

  private async post(path: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const m = /^\/api\/vms\/([^/]+)\/([a-z-]+)$/.exec(path);
    if (!m) throw new HttpError(404, `no such action: ${path}`);
    const link = this.link(m[1]);
    const action = m[2]!;
    const body = await this.readBody(req);
    let answer;
    if (LIFECYCLE.has(action)) {
      answer = await this.apiCall(link, action);
    } else if (action === 'boot') {
      answer = await this.boot(link, parseBootRequest(body));
    } else {
      throw new HttpError(404, `no such action: ${action}`);
    }
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(answer));
  }

  private async apiCall(link: VmLink, action: string, body?: string): Promise<{ action: string; status: number; text: string }> {
    try {
      const r = await link.action(action, body);
      return { action, status: r.status, text: r.text };
    } catch (e) {
      return { action, status: 0, text: (e as Error).message };
    }
  }

  /** vm.create then vm.boot on a VMM that has no VM yet, with a serial socket for the page. */
  private async boot(link: VmLink, b: BootRequest): Promise<{ action: string; status: number; text: string }> {
    await link.poll();
    if (link.state !== 'NotCreated') throw new HttpError(409, `${link.name} already has a VM (state ${link.state}); a VM is booted only on a VMM that waits for vm.create`);
    const config = {
      payload: { kernel: b.kernel, ...(b.initramfs ? { initramfs: b.initramfs } : {}), ...(b.cmdline ? { cmdline: b.cmdline } : {}) },
      cpus: { boot_vcpus: b.vcpus, max_vcpus: b.vcpus },
      memory: { size: b.memoryMiB * 1024 * 1024 },
      ...(b.disks && b.disks.length > 0 ? { disks: b.disks.map((path) => ({ path })) } : {}),
      serial: { mode: 'Socket', socket: `${link.socket.replace(/\.sock$/, '')}.serial` },
      console: { mode: 'Off' },
    };
    const c = await this.apiCall(link, 'create', JSON.stringify(config));
    if (c.status < 200 || c.status >= 300) return c;
    const r = await this.apiCall(link, 'boot');
    return { action: 'create+boot', status: r.status, text: r.text };
  }

  private onUpgrade(req: http.IncomingMessage, sock: import('node:net').Socket, head: Buffer): void {
    const refuse = (status: number, why: string) => {
      sock.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(why)}\r\n\r\n${why}`);
    };
    sock.on('error', () => {});
    if (!this.hostOk(req)) return refuse(403, 'unexpected Host header');
    if (!originAllowed(req.headers.origin, this.hosts)) return refuse(403, `WebSocket from origin ${req.headers.origin} refused`);
    if (!this.authorized(req)) return refuse(401, 'the console token is required');
    const m = /^\/ws\/serial\/([^/?]+)$/.exec(new URL(req.url ?? '/', 'http://x').pathname);
    const link = m ? this.links.get(m[1]!) : undefined;
    if (!link) return refuse(404, 'no such VM');
    this.wss.handleUpgrade(req, sock, head, (ws) => this.serveViewer(link, ws));
  }

  private serveViewer(link: VmLink, ws: WebSocket): void {
    let lagging = false;
    const status = (state: string, message: string) => {
      if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ type: 'status', state, message }));
    };
    const viewer: Viewer = {
      sendOutput: (b) => {
        if (ws.readyState !== ws.OPEN) return;
        // A viewer that does not keep up loses output (like a terminal on a serial line) rather
        // than growing the console's memory; it is told once per stall.
        if (ws.bufferedAmount > VIEWER_BACKLOG_LIMIT) {
          if (!lagging) { lagging = true; status('lagging', 'this viewer is not keeping up: output dropped'); }
          return;
        }
        lagging = false;
        ws.send(b);
      },
      sendStatus: status,
    };
    let held = false;
    const holdWhileBacklogged = (): void => {
      const wait = held ? null : link.inputBacklog();
      if (!wait) return;
      held = true;
      ws.pause();
      status('input', 'the guest is not reading its serial port as fast as you type: keystrokes wait');
      void wait.then(() => { held = false; if (ws.readyState === ws.OPEN) ws.resume(); });
    };
    link.attach(viewer);
    ws.on('message', (data: RawData, isBinary: boolean) => {
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      if (isBinary) {
        const why = link.input(buf);
        if (why) status('input', why);
        holdWhileBacklogged();
        return;
      }
      let msg: { type?: unknown; cols?: unknown; rows?: unknown; data?: unknown };
      try {
        msg = JSON.parse(buf.toString('utf8')) as typeof msg;
      } catch {
        status('input', 'a text message that is not JSON was ignored');
        return;
      }
      if (msg.type === 'resize') {
        // The 16550 has no window size to report: the size is kept per viewer (shown in the
        // page); the guest learns it from `stty` if the user sets it.
        const cols = Number(msg.cols), rows = Number(msg.rows);
        if (Number.isInteger(cols) && Number.isInteger(rows) && cols > 0 && rows > 0 && cols <= 1000 && rows <= 1000) {
          status('size', `${cols}x${rows}`);
        }
      } else if (msg.type === 'input' && typeof msg.data === 'string') {
        const why = link.input(Buffer.from(msg.data, 'utf8'));
        if (why) status('input', why);
        holdWhileBacklogged();
      }
    });
    ws.on('error', () => {});
    ws.on('close', () => link.detach(viewer));
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const c of this.wss.clients) c.terminate();
    this.wss.close();
    for (const l of this.links.values()) l.close();
    this.http.closeAllConnections();
    await new Promise<void>((r) => this.http.close(() => r()));
  }
}

/** Check the page's boot form; throws 400 naming the field. */
export function parseBootRequest(body: unknown): BootRequest {
  const bad = (f: string, why: string): never => { throw new HttpError(400, `${f}: ${why}`); };
  if (typeof body !== 'object' || body === null) bad('body', 'must be an object');
  const b = body as Record<string, unknown>;
  const str = (f: string, required: boolean): string | undefined => {
    const v = b[f];
    if (v === undefined || v === '') return required ? bad(f, 'is required') : undefined;
    if (typeof v !== 'string' || v.length > 4096) return bad(f, 'must be a string of at most 4096 characters');
    return v;
  };
  const int = (f: string, min: number, max: number): number => {
    const v = Number(b[f]);
    if (!Number.isInteger(v) || v < min || v > max) bad(f, `must be an integer from ${min} to ${max}`);
    return v;
  };
  const r: BootRequest = { kernel: str('kernel', true)!, vcpus: int('vcpus', 1, 254), memoryMiB: int('memoryMiB', 16, 1 << 20) };
  const initramfs = str('initramfs', false);
  if (initramfs) r.initramfs = initramfs;
  const cmdline = str('cmdline', false);
  if (cmdline) r.cmdline = cmdline;
  if (b.disks !== undefined) {
    if (!Array.isArray(b.disks) || b.disks.length > 16 || b.disks.some((d) => typeof d !== 'string' || d.length === 0 || d.length > 4096)) {
      bad('disks', 'must be a list of at most 16 paths');
    }
    r.disks = b.disks as string[];
  }
  return r;
}
