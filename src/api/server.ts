// Cloud Hypervisor-compatible HTTP API server on a Unix domain socket
// (after Cloud Hypervisor's vmm/src/api/http/mod.rs and http_endpoint.rs).
//
// Routes are the paths of the OpenAPI document under /api/v1; the ones Stratovisor
// implements call the `VmmController`, the others answer 500 "not implemented yet in
// Stratovisor" (after their body is validated). Unknown paths answer 404, a method the
// document does not define for the path 405 (with Allow).
//
// Error bodies are what Cloud Hypervisor sends: a JSON array of messages, most general
// first (CH: the error chain), e.g. ["vm.create: invalid request body", "cpus.boot_vcpus:
// must be integer, got string"].
//
// As Cloud Hypervisor's clients speak it (Kata Containers' Go and Rust runtimes): bodies
// are read as CH's serde structs read them (unknown fields ignored and logged, `null` for an
// optional field = absent; see validate.ts normalize), with or without a Content-Type; a
// connection stays open across requests for as long as the client wants (no keep-alive
// timeout: Kata's Rust runtime keeps one for the VM's life); a 204 has no body. Requests may
// carry file descriptors (SCM_RIGHTS on the same stream, fd_stream.ts): vm.add-net takes them
// as its tap fds (one per queue pair) and vm.create as the taps of the `net` entries that list
// `fds` placeholders, in order; any fd a request does not use is closed.
//
// Robustness: bodies are capped (413), headers and whole requests time out, the
// number of connections is bounded, malformed HTTP gets 400 from the parser, and every
// handler error becomes a response; nothing a client sends can throw out of here.

import { EventEmitter } from 'node:events';
import { chmod, lstat, mkdtemp, rename, rmdir, stat, unlink } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { isMainThread } from 'node:worker_threads';
import { ApiError, NotImplementedError, type ReceiveMigrationData, type RestoreConfig, type SendMigrationData, type VmmController, type VmResize } from './controller.js';
import { closeFds, FdPoller, FdSocketStream, socketFd } from './fd_stream.js';
import { formatIssues, getValidator, type ApiOperation, type SchemaValidator } from './validate.js';
import { validateVmConfig, VmConfigError, defaultFsConfig, type DeepPartial, type FsConfig, type VmConfig, type VsockConfig } from '../vmm/config.js';
import { deviceConfigFromBody, netConfigFromBody, vmConfigFromBody } from './vm_config_body.js';

/** The document's server URL path. */
export const API_ROOT = '/api/v1';

/** `--api-socket` target: a socket path to create, or an inherited listening fd. */
export type ApiSocketTarget = { path: string } | { fd: number };

/** Parse `--api-socket` value "path=<path>" | "fd=<n>" | "<path>" (as Cloud Hypervisor). */
export function parseApiSocketArg(value: string): ApiSocketTarget {
  if (value.startsWith('fd=')) {
    const s = value.slice(3);
    if (!/^\d+$/.test(s)) throw new Error(`--api-socket: fd must be a non-negative integer, got "${s}"`);
    return { fd: Number(s) };
  }
  const path = value.startsWith('path=') ? value.slice(5) : value;
  if (path === '') throw new Error('--api-socket: path or fd required');
  return { path };
}

export interface ApiServerOptions {
  controller: VmmController;
  socket: ApiSocketTarget;
  /** Largest request body accepted (413 above). Default 1 MiB. */
  maxBodyBytes?: number;
  /** Time to receive the request headers (Node `headersTimeout`). Default 10 s. */
  headersTimeoutMs?: number;
  /** Time to receive a whole request (Node `requestTimeout`). Default 30 s. */
  requestTimeoutMs?: number;
  /** Concurrent connections; more are refused. Default 128. */
  maxConnections?: number;
  /** Defaults to the validator of the shipped document. */
  validator?: SchemaValidator;
  /** Diagnostic lines (one per error response). */
  log?: (line: string) => void;
  /** Where the cause of every 500 goes (the error with its stack); defaults to `log`. */
  errorLog?: (line: string) => void;
}

export interface ApiServerEvents {
  /** vmm.shutdown was answered: the owner should close the server and exit. */
  'vmm-shutdown': [];
  /** vm.send-migration was answered 204: the VM runs elsewhere now. */
  'vm-migrated': [];
}

/** The fds received with one request; whatever the handler does not claim is closed after it. */
class ReceivedFds {
  claimed = false;
  /** vm.create: how many fds each `net` entry of the body lists (placeholders). */
  netPlaceholders: number[] = [];
  constructor(readonly list: readonly number[]) {}
  closeUnclaimed(): void {
    if (!this.claimed) closeFds(this.list);
  }
}

type Handler = (body: unknown, fds: ReceivedFds) => Promise<unknown>;

const DEFAULT_MAX_BODY = 1024 * 1024;
/** sockaddr_un.sun_path is 108 bytes including the NUL. */
const SUN_PATH_MAX = 107;

/** An HTTP API server bound to a Unix socket. Create with `ApiServer.listen`. */
export class ApiServer extends EventEmitter<ApiServerEvents> {
  /** The HTTP side: parses requests from each connection (never listens itself). */
  readonly server: http.Server;
  /** The listening socket; its connections are read with recvmsg (fd_stream.ts). */
  readonly listener: net.Server;
  private readonly poller = new FdPoller();
  /** The socket path, when listening on a path (not an fd). */
  socketPath: string | undefined;
  private socketIno: number | undefined;
  private readonly controller: VmmController;
  private readonly validator: SchemaValidator;
  private readonly maxBody: number;
  private readonly log: (line: string) => void;
  private readonly errorLog: (line: string) => void;
  /** path -> method -> operation, from the document. */
  private readonly routes = new Map<string, Map<string, ApiOperation>>();
  private readonly handlers = new Map<string, Handler>();
  /** Serializes state-changing controller calls, as CH's single VMM thread does. */
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(opts: ApiServerOptions) {
    super();
    this.controller = opts.controller;
    this.validator = opts.validator ?? getValidator();
    this.maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY;
    this.log = opts.log ?? (() => {});
    this.errorLog = opts.errorLog ?? this.log;
    for (const op of this.validator.operations) {
      let m = this.routes.get(op.path);
      if (m === undefined) this.routes.set(op.path, (m = new Map()));
      m.set(op.method, op);
    }
    this.installHandlers();
    const headersTimeout = opts.headersTimeoutMs ?? 10_000;
    const requestTimeout = opts.requestTimeoutMs ?? 30_000;
    this.server = http.createServer(
      {
        maxHeaderSize: 16 * 1024,
        headersTimeout,
        requestTimeout,
        // How often Node checks those timeouts (default 30 s, longer than the timeouts).
        connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeout / 4))),
      },
      (req, res) => this.onRequest(req, res),
    );
    // Kata's Rust runtime keeps one connection for the VM's life: no idle timeout
    // (Node's default keepAliveTimeout closes an idle connection after 5 s).
    this.server.keepAliveTimeout = 0;
    this.listener = net.createServer({ pauseOnConnect: true }, (sock) => this.onConnection(sock));
    this.listener.maxConnections = opts.maxConnections ?? 128;
    this.listener.on('error', (e) => this.log(`API listener: ${e.message}`));
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
      // Malformed HTTP, oversized headers, timeouts: answer if possible, then drop.
      if (socket.writable && !socket.writableEnded) {
        const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
        socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      }
      socket.destroy();
    });
    this.server.on('connection', (socket: net.Socket) => socket.on('error', () => {}));
  }

  /** A new connection: read it with recvmsg (fds) and hand it to the HTTP parser. */
  private onConnection(sock: net.Socket): void {
    sock.on('error', () => {});
    const fd = socketFd(sock);
    if (fd === undefined || this.closed) {
      // No fd to recvmsg on (not expected for a Unix socket): plain reads, no fds.
      sock.resume();
      this.server.emit('connection', sock);
      return;
    }
    const stream = new FdSocketStream(sock, fd, this.poller);
    stream.on('error', () => {});
    this.server.emit('connection', stream);
  }

  /** Start listening; resolves once the socket accepts connections. */
  static async listen(opts: ApiServerOptions): Promise<ApiServer> {
    const s = new ApiServer(opts);
    if ('fd' in opts.socket) {
      await listenOn(s.listener, { fd: opts.socket.fd });
    } else {
      await s.bindPath(opts.socket.path);
    }
    // The HTTP server never listens itself; 'listening' starts its connection tracking
    // (headers/request timeouts, closeIdleConnections).
    s.server.emit('listening');
    return s;
  }

  /** Stop accepting, end idle connections, and remove the socket file we created. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    // Ends idle connections, stops the timeout checks, emits the HTTP server's 'close'.
    this.server.close();
    // Connections still busy get a short grace, then are cut.
    const timer = setTimeout(() => this.server.closeAllConnections(), 1000);
    await done;
    clearTimeout(timer);
    this.poller.close();
    if (this.socketPath !== undefined) {
      try {
        const st = await lstat(this.socketPath);
        if (st.ino === this.socketIno) await unlink(this.socketPath);
      } catch {
        // already gone
      }
    }
  }

  /**
   * Bind the socket file with mode 0600 and no window where it exists with wider
   * permissions: bind inside a fresh 0700 directory next to the target, chmod, then
   * rename(2) into place (atomic). A stale socket at the path (nobody listening) is
   * removed first; a live one, or a non-socket file, is an error.
   */
  private async bindPath(path: string): Promise<void> {
    if (Buffer.byteLength(path) > SUN_PATH_MAX) {
      throw new Error(`--api-socket: path ${path} is too long for a Unix socket (max ${SUN_PATH_MAX} bytes)`);
    }
    await clearStaleSocket(path);
    const dir = dirname(path);
    const tmpDir = await mkdtemp(join(dir, '.stratovisor-api-'));
    const tmp = join(tmpDir, 's');
    try {
      if (Buffer.byteLength(tmp) <= SUN_PATH_MAX) {
        await listenOn(this.listener, { path: tmp });
        await chmod(tmp, 0o600);
        await rename(tmp, path);
      } else if (isMainThread) {
        // Temporary name too long for sun_path: bind in place under umask 0177 (the
        // bind is synchronous inside listen(), so the umask covers exactly it).
        const old = process.umask(0o177);
        try {
          this.listener.listen(path);
        } finally {
          process.umask(old);
        }
        await waitListening(this.listener);
      } else {
        throw new Error(`--api-socket: path ${path} is too long to bind safely from a worker thread (use a shorter directory)`);
      }
    } finally {
      await rmdir(tmpDir).catch(() => {});
    }
    this.socketPath = path;
    this.socketIno = (await stat(path)).ino;
  }

  private installHandlers(): void {
    const c = this.controller;
    const serial = (fn: () => Promise<void>): Handler => () => this.serialized(fn).then(() => undefined);
    this.handlers.set('GET /vmm.ping', async () => c.ping());
    this.handlers.set('PUT /vmm.shutdown', serial(() => c.shutdownVmm()));
    this.handlers.set('GET /vm.info', async () => c.info());
    this.handlers.set('GET /vm.counters', async () => c.counters());
    this.handlers.set('PUT /vm.create', (body, fds) =>
      this.serialized(async () => {
        const r = vmConfigFromBody(body, this.validator);
        if (!r.ok) throw new BodyError('vm.create: invalid VM configuration', r.issues.map((i) => (i.path === '' ? i.message : `${i.path}: ${i.message}`)));
        this.attachCreateFds(r.config, fds);
        await c.createVm(r.config);
        fds.claimed = true;
      }).then(() => undefined),
    );
    this.handlers.set('PUT /vm.add-fs', (body) =>
      this.serialized(async () => {
        if (!c.addFs) throw new NotImplementedError('vm.add-fs');
        return (await c.addFs(defaultFsConfig(body as DeepPartial<FsConfig>))) ?? undefined;
      }),
    );
    this.handlers.set('PUT /vm.add-vsock', (body) =>
      this.serialized(async () => {
        if (c.addVsock === undefined) throw new NotImplementedError('vm.add-vsock');
        const b = body as Record<string, unknown>;
        const bad = Object.keys(b).filter((k) => !['cid', 'socket', 'iommu', 'id', 'pci_segment'].includes(k) && b[k] !== null && b[k] !== undefined);
        if (bad.length > 0) throw new BodyError('vm.add-vsock: invalid VsockConfig', bad.map((k) => `${k}: not supported yet in Stratovisor`));
        const v: VsockConfig = { cid: b.cid as number, socket: b.socket as string };
        if (b.iommu !== undefined && b.iommu !== null) v.iommu = b.iommu as boolean;
        if (typeof b.id === 'string') v.id = b.id;
        if (typeof b.pci_segment === 'number') v.pci_segment = b.pci_segment;
        return (await c.addVsock(v)) ?? undefined;
      }),
    );
    /** The created VM's configuration, which an added device is checked against (404 when none). */
    const configFor = (what: string): VmConfig => {
      try {
        return c.info().config;
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) throw new ApiError(404, 'VmNotCreated', `cannot add ${what}: the VM is not created`);
        throw e;
      }
    };
    const issuesOf = (r: { issues: Array<{ path: string; message: string }> }) => r.issues.map((i) => (i.path === '' ? i.message : `${i.path}: ${i.message}`));
    this.handlers.set('PUT /vm.add-net', (body, fds) =>
      this.serialized(async () => {
        const r = netConfigFromBody(body, fds.list, configFor('a network device'), this.validator);
        if (!r.ok) throw new BodyError('vm.add-net: invalid network device configuration', issuesOf(r));
        const info = await c.addNet(r.config);
        fds.claimed = true;
        return info;
      }),
    );
    this.handlers.set('PUT /vm.add-disk', (body) =>
      this.serialized(async () => {
        if (c.addDisk === undefined) throw new NotImplementedError('vm.add-disk');
        const r = deviceConfigFromBody('disks', body, configFor('a disk'), this.validator);
        if (!r.ok) throw new BodyError('vm.add-disk: invalid disk configuration', issuesOf(r));
        return c.addDisk(r.config);
      }),
    );
    this.handlers.set('PUT /vm.add-pmem', (body) =>
      this.serialized(async () => {
        if (c.addPmem === undefined) throw new NotImplementedError('vm.add-pmem');
        const r = deviceConfigFromBody('pmem', body, configFor('a pmem device'), this.validator);
        if (!r.ok) throw new BodyError('vm.add-pmem: invalid pmem configuration', issuesOf(r));
        return c.addPmem(r.config);
      }),
    );
    this.handlers.set('PUT /vm.remove-device', (body) =>
      this.serialized(async () => {
        if (c.removeDevice === undefined) throw new NotImplementedError('vm.remove-device');
        const id = (body as { id?: unknown } | null)?.id;
        if (typeof id !== 'string' || id === '') throw new BodyError('vm.remove-device: invalid request', ['id: required (the device id, as vm.info lists it)']);
        await c.removeDevice(id);
      }).then(() => undefined),
    );
    this.handlers.set('PUT /vm.boot', serial(() => c.bootVm()));
    this.handlers.set('PUT /vm.pause', serial(() => c.pauseVm()));
    this.handlers.set('PUT /vm.snapshot', (body) =>
      this.serialized(async () => {
        if (c.snapshotVm === undefined) throw new NotImplementedError('vm.snapshot');
        const url = (body as { destination_url?: unknown } | null)?.destination_url;
        if (typeof url !== 'string' || url === '') throw new BodyError('vm.snapshot: invalid snapshot configuration', ['destination_url: required (a file:// URL of an existing directory)']);
        await c.snapshotVm(url);
      }).then(() => undefined),
    );
    // Optional operations: the body is valid against its schema here (required fields present).
    const optional = (endpoint: string, call: ((body: unknown) => Promise<void>) | undefined) =>
      this.handlers.set(`PUT /${endpoint}`, (body) =>
        this.serialized(async () => {
          if (call === undefined) throw new NotImplementedError(endpoint);
          await call(body);
        }).then(() => undefined));
    optional('vm.restore', c.restoreVm && ((b) => c.restoreVm!(b as RestoreConfig)));
    optional('vm.resize', c.resizeVm && ((b) => c.resizeVm!((b ?? {}) as VmResize)));
    optional('vm.send-migration', c.sendMigration && ((b) => c.sendMigration!(b as SendMigrationData)));
    optional('vm.receive-migration', c.receiveMigration && ((b) => c.receiveMigration!(b as ReceiveMigrationData)));
    this.handlers.set('PUT /vm.resume', serial(() => c.resumeVm()));
    this.handlers.set('PUT /vm.shutdown', serial(() => c.shutdownVm()));
    this.handlers.set('PUT /vm.reboot', serial(() => c.rebootVm()));
    this.handlers.set('PUT /vm.power-button', serial(() => c.powerButton()));
    this.handlers.set('PUT /vm.delete', serial(() => c.deleteVm()));
  }

  /**
   * vm.create with fds: the `net` entries that list `fds` (placeholders: numbers in JSON mean
   * nothing across processes) take the received fds in order, as many as each lists; the
   * count must match. Without received fds the placeholders are ignored, as Cloud Hypervisor
   * ignores fd numbers in a body (http_endpoint.rs attach_fds_to_cfg).
   */
  private attachCreateFds(config: VmConfig, fds: ReceivedFds): void {
    const wanted = fds.netPlaceholders;
    if (fds.list.length === 0) {
      if (wanted.some((n) => n > 0)) this.log('vm.create: fd numbers in the body ignored (no fds were sent with the request)');
      return;
    }
    const total = wanted.reduce((a, b) => a + b, 0);
    if (total !== fds.list.length) {
      throw new BodyError('vm.create: invalid VM configuration', [`net: ${fds.list.length} fd(s) sent with the request, but the net entries list ${total} fd placeholder(s)`]);
    }
    let next = 0;
    (config.net ?? []).forEach((n, i) => {
      const k = wanted[i] ?? 0;
      if (k > 0) n.fds = fds.list.slice(next, (next += k));
    });
    const issues = validateVmConfig(config).filter((i) => i.path.startsWith('net['));
    if (issues.length > 0) throw new BodyError('vm.create: invalid VM configuration', issues.map((i) => `${i.path}: ${i.message}`));
  }

  /** Names ("PUT /vm.boot") of the operations with a real handler. */
  implementedOperations(): string[] {
    return [...this.handlers.keys()];
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    res.on('error', () => {});
    req.on('error', () => {});
    // The fds that came with this request's bytes (fd_stream.ts: pending when 'request' fires).
    const fds = new ReceivedFds((req.socket as unknown) instanceof FdSocketStream ? (req.socket as unknown as FdSocketStream).takeFds() : []);
    this.handle(req, res, fds)
      .catch((err: unknown) => {
        this.logCause(req, err);
        this.send(res, 500, errorBody(['internal error', err instanceof Error ? err.message : String(err)]), req);
      })
      .finally(() => {
        if (!fds.claimed && fds.list.length > 0) this.log(`API ${req.method ?? '?'} ${truncate(req.url ?? '')}: closed ${fds.list.length} unused fd(s) sent with the request`);
        fds.closeUnclaimed();
      });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse, fds: ReceivedFds): Promise<void> {
    const rawUrl = req.url ?? '';
    // Origin-form only ("/api/v1/vm.boot?x"): the query string is ignored, as CH does.
    const q = rawUrl.indexOf('?');
    const pathname = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const route = pathname.startsWith(`${API_ROOT}/`) ? pathname.slice(API_ROOT.length) : undefined;
    const ops = route === undefined ? undefined : this.routes.get(route);
    if (route === undefined || ops === undefined) {
      this.drain(req);
      return this.sendError(res, 404, [`unknown endpoint ${truncate(pathname)}`], req);
    }
    const method = req.method ?? '';
    const op = ops.get(method);
    if (op === undefined) {
      this.drain(req);
      res.setHeader('Allow', [...ops.keys()].join(', '));
      return this.sendError(res, 405, [`${route.slice(1)}: method ${truncate(method)} not allowed (use ${[...ops.keys()].join(', ')})`], req);
    }
    const name = route.slice(1);

    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > this.maxBody) {
      this.drain(req);
      return this.sendError(res, 413, [`${name}: request body of ${declared} bytes exceeds the limit of ${this.maxBody}`], req, true);
    }
    const raw = await readBody(req, this.maxBody);
    if (raw === 'too-large') {
      return this.sendError(res, 413, [`${name}: request body exceeds the limit of ${this.maxBody} bytes`], req, true);
    }
    if (raw === 'aborted') return; // client went away

    let body: unknown;
    if (op.bodySchema !== undefined) {
      const text = raw.toString('utf8');
      if (text.trim() === '') {
        if (op.bodyRequired) return this.sendError(res, 400, [`${name}: request body required (${op.bodySchema} JSON)`], req);
      } else {
        try {
          body = JSON.parse(text) as unknown;
        } catch (e) {
          return this.sendError(res, 400, [`${name}: malformed JSON body`, truncate(e instanceof Error ? e.message : String(e))], req);
        }
        if (route === '/vm.create') fds.netPlaceholders = fdPlaceholders(body);
        // As CH's serde reads it: unknown fields skipped, null optional fields absent.
        const norm = this.validator.normalize(op.bodySchema, body);
        for (const f of norm.ignored) this.log(`API ${name}: ignoring unknown field ${truncate(f)}`);
        body = norm.value;
        const issues = this.validator.validate(op.bodySchema, body);
        if (issues.length > 0) {
          return this.sendError(res, 400, [`${name}: invalid ${op.bodySchema} body`, ...issues.map((i) => formatIssues([i]))], req);
        }
      }
    }

    const handler = this.handlers.get(`${method} ${route}`);
    try {
      if (handler === undefined) throw new NotImplementedError(name);
      const result = await handler(body, fds);
      if (result === undefined) {
        // 'close' also fires when the client left before reading the answer.
        res.once('close', () => {
          if (route === '/vmm.shutdown') this.emit('vmm-shutdown');
          // The VM runs elsewhere now: a VMM process of its own ends (CH's source VMM exits).
          if (route === '/vm.send-migration') this.emit('vm-migrated');
        });
        this.send(res, 204, undefined, req);
      } else {
        this.send(res, 200, JSON.stringify(result), req);
      }
    } catch (e) {
      if (e instanceof BodyError) return this.sendError(res, 400, [e.message, ...e.details], req);
      // A controller that re-checks the configuration (config.ts assertValidVmConfig).
      if (e instanceof VmConfigError) return this.sendError(res, 400, [`${name}: invalid VM configuration`, ...e.issues.map((i) => `${i.path}: ${i.message}`)], req);
      if (e instanceof ApiError) return this.sendError(res, e.status, [e.message.startsWith(name) ? e.message : `${name}: ${e.message}`], req);
      this.logCause(req, e);
      return this.sendError(res, 500, [`${name} failed`, e instanceof Error ? e.message : String(e)], req);
    }
  }

  /** Every 500 leaves its cause in the VMM's log: the error with its stack (and its cause chain). */
  private logCause(req: http.IncomingMessage, e: unknown): void {
    let text = e instanceof Error ? (e.stack ?? `${e.name}: ${e.message}`) : String(e);
    for (let c = e instanceof Error ? e.cause : undefined, depth = 0; c !== undefined && depth < 4; c = c instanceof Error ? c.cause : undefined, depth++) {
      text += `\ncaused by: ${c instanceof Error ? (c.stack ?? c.message) : String(c)}`;
    }
    this.errorLog(`API ${req.method ?? '?'} ${truncate(req.url ?? '')} -> 500 caused by: ${text}`);
  }

  /** Discard a body we will not read (bounded: a huge one gets the connection closed). */
  private drain(req: http.IncomingMessage): void {
    let n = 0;
    req.on('data', (chunk: Buffer) => {
      n += chunk.length;
      if (n > this.maxBody) req.socket.destroy();
    });
  }

  private sendError(res: http.ServerResponse, status: number, messages: string[], req: http.IncomingMessage, close = false): void {
    this.log(`API ${req.method ?? '?'} ${truncate(req.url ?? '')} -> ${status}: ${messages.join(': ')}`);
    this.send(res, status, errorBody(messages), req, close);
  }

  private send(res: http.ServerResponse, status: number, body: string | undefined, req: http.IncomingMessage, close = false): void {
    if (res.headersSent || res.destroyed) return;
    res.statusCode = status;
    res.setHeader('Server', 'Stratovisor API');
    if (close || !req.complete) res.setHeader('Connection', 'close');
    if (body === undefined) {
      res.end();
      return;
    }
    res.setHeader('Content-Type', 'application/json');
    res.setHeader('Content-Length', Buffer.byteLength(body));
    res.end(body);
  }
}

/** A request body that passed the schema but not Stratovisor's checks (400). */
class BodyError extends Error {
  constructor(
    message: string,
    readonly details: string[],
  ) {
    super(message);
  }
}

/** How many fds each `net` entry of a vm.create body lists (0 for none or a non-list). */
function fdPlaceholders(body: unknown): number[] {
  const net = typeof body === 'object' && body !== null ? (body as { net?: unknown }).net : undefined;
  if (!Array.isArray(net)) return [];
  return net.map((n: unknown) => {
    const f = typeof n === 'object' && n !== null ? (n as { fds?: unknown }).fds : undefined;
    return Array.isArray(f) ? f.length : 0;
  });
}

function errorBody(messages: string[]): string {
  return JSON.stringify(messages);
}

function truncate(s: string, n = 200): string {
  return s.length > n ? `${s.slice(0, n)}...` : s;
}

/** Read a request body up to `max` bytes. */
function readBody(req: http.IncomingMessage, max: number): Promise<Buffer | 'too-large' | 'aborted'> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let n = 0;
    let done = false;
    const finish = (v: Buffer | 'too-large' | 'aborted') => {
      if (done) return;
      done = true;
      resolve(v);
    };
    req.on('data', (chunk: Buffer) => {
      if (done) return;
      n += chunk.length;
      if (n > max) {
        chunks.length = 0;
        // Stop buffering; the response carries Connection: close.
        req.pause();
        finish('too-large');
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => finish(Buffer.concat(chunks)));
    req.on('aborted', () => finish('aborted'));
    req.on('close', () => finish(req.complete ? Buffer.concat(chunks) : 'aborted'));
    req.on('error', () => finish('aborted'));
  });
}

function listenOn(server: net.Server, target: { path: string } | { fd: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(new Error(`--api-socket: cannot listen on ${'fd' in target ? `fd ${target.fd}` : target.path}: ${err.message}`));
    server.once('error', onError);
    server.listen(target, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

function waitListening(server: net.Server): Promise<void> {
  if (server.listening) return Promise.resolve();
  return new Promise((resolve, reject) => {
    server.once('listening', () => resolve());
    server.once('error', reject);
  });
}

/** Remove a socket file nobody listens on; refuse to touch a live socket or a non-socket. */
async function clearStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new Error(`--api-socket: cannot inspect ${path}: ${(e as Error).message}`);
  }
  if (!st.isSocket()) throw new Error(`--api-socket: ${path} exists and is not a socket (not replacing it)`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`--api-socket: ${path} is in use by another process`);
  await unlink(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw new Error(`--api-socket: cannot remove stale socket ${path}: ${e.message}`);
  });
}
