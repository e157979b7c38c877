// `stratovisor remote`: a client of the HTTP API over the Unix socket, like Cloud
// Hypervisor's ch-remote (cloud-hypervisor/src/bin/ch-remote.rs).
//
//   stratovisor remote --api-socket PATH ping|info|create FILE|boot|pause|resume|shutdown|
//                      reboot|power-button|counters|delete|shutdown-vmm|snapshot URL|
//                      restore source_url=URL[,prefault=on][,resume=on]|
//                      send-migration unix:PATH|tcp:HOST:PORT|receive-migration URL [--json]
//
// Output is human-readable by default; --json prints the response body as sent.
// Errors (no socket, nothing listening, an error answer) go to stderr, exit status 1.

import { readFile } from 'node:fs/promises';
import http from 'node:http';
import { CliError, parseArgs, parseDisk, parseFs, parseNet, parseOptionList, parsePmem, parseSize, parseVsock, type RemoteCommand } from './args.js';

/** A response of the API. */
export interface ApiResponse {
  status: number;
  /** Raw body text ('' for 204). */
  text: string;
}

/** Transport failure (no socket, refused, reset); `code` is the errno name. */
export class ApiConnectionError extends Error {
  override name = 'ApiConnectionError';
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

/**
 * Send one request to the API socket: e.g. `apiRequest(sock, 'PUT', 'vm.boot')`. With
 * `timeoutMs`, a VMM that accepts but does not answer in time is an ApiConnectionError (ETIMEDOUT).
 */
export function apiRequest(socketPath: string, method: string, endpoint: string, body?: string, timeoutMs?: number): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { Accept: 'application/json' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = Buffer.byteLength(body);
    }
    const req = http.request({ socketPath, method, path: `/api/v1/${endpoint}`, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (e) => reject(connectionError(socketPath, e)));
    });
    req.on('error', (e) => reject(e instanceof ApiConnectionError ? e : connectionError(socketPath, e)));
    if (timeoutMs !== undefined) {
      req.setTimeout(timeoutMs, () => {
        req.destroy(new ApiConnectionError(`API socket ${socketPath}: no answer to ${method} ${endpoint} within ${timeoutMs / 1000} s`, 'ETIMEDOUT'));
      });
    }
    req.end(body);
  });
}

function connectionError(socketPath: string, e: Error): ApiConnectionError {
  const code = (e as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOENT':
      return new ApiConnectionError(`API socket ${socketPath} does not exist (is stratovisor running with --api-socket ${socketPath}?)`, code);
    case 'ECONNREFUSED':
      return new ApiConnectionError(`nothing is listening on API socket ${socketPath} (stale socket?)`, code);
    case 'EACCES':
    case 'EPERM':
      return new ApiConnectionError(`permission denied on API socket ${socketPath}`, code);
    case 'ENOTSOCK':
      return new ApiConnectionError(`${socketPath} is not a socket`, code);
    default:
      return new ApiConnectionError(`API socket ${socketPath}: ${e.message}`, code);
  }
}

interface CommandSpec {
  method: 'GET' | 'PUT';
  endpoint: string;
  /** Positional arguments the command takes. */
  args: string[];
  /** Human-readable text for a successful answer. */
  render: (body: unknown) => string;
  /** The request body made from the positional arguments (CliError for a bad one). */
  body?: (args: string[]) => string;
  /** Takes options rather than a fixed list of arguments (`body` checks them). */
  options?: boolean;
}

/** ch-remote restore: `source_url=file:///dir[,prefault=on][,resume=on]` (or the bare URL). */
function restoreBody(args: string[]): string {
  const a = args[0]!;
  const opts = a.includes('=') ? parseOptionList('restore', a, ['source_url', 'prefault', 'resume']) : new Map([['source_url', a]]);
  const url = opts.get('source_url');
  if (url === undefined) throw new CliError('restore: source_url= is required (source_url=file:///path/to/snapshot-dir)');
  const body: Record<string, string | boolean> = { source_url: url };
  for (const k of ['prefault', 'resume']) {
    const v = opts.get(k);
    if (v === undefined) continue;
    if (!/^(on|off|true|false)$/i.test(v)) throw new CliError(`restore: ${k}=${v}: expected on or off`);
    body[k] = /^(on|true)$/i.test(v);
  }
  return JSON.stringify(body);
}

/**
 * ch-remote resize: `--balloon <size>` (desired_balloon; K/M/G suffixes), `--memory <size>`
 * (desired_ram), `--cpus <n>` (desired_vcpus); also `--flag=value`.
 */
function resizeBody(args: string[]): string {
  const body: Record<string, number> = {};
  for (let i = 0; i < args.length; i++) {
    let flag = args[i]!;
    let v: string | undefined;
    const eq = flag.indexOf('=');
    if (flag.startsWith('--') && eq > 0) {
      v = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    } else {
      v = args[++i];
    }
    const key = flag === '--balloon' ? 'desired_balloon' : flag === '--memory' ? 'desired_ram' : flag === '--cpus' ? 'desired_vcpus' : undefined;
    if (key === undefined) throw new CliError(`resize: unknown option ${JSON.stringify(flag)} (use --balloon <size>, --memory <size> or --cpus <n>)`);
    if (v === undefined) throw new CliError(`resize: ${flag} needs a value`);
    const n = key === 'desired_vcpus' ? (/^\d+$/.test(v) ? Number(v) : undefined) : parseSize(v);
    if (n === undefined) throw new CliError(`resize: bad value ${JSON.stringify(v)} for ${flag} (${key === 'desired_vcpus' ? 'a number' : 'bytes or a K/M/G/T suffix'})`);
    body[key] = n;
  }
  if (Object.keys(body).length === 0) throw new CliError('resize: give --balloon <size> (or --memory <size>, --cpus <n>)');
  return JSON.stringify(body);
}

const done = (what: string) => () => `${what}\n`;

const COMMANDS: Partial<Record<RemoteCommand, CommandSpec>> = {
  ping: { method: 'GET', endpoint: 'vmm.ping', args: [], render: renderPing },
  info: { method: 'GET', endpoint: 'vm.info', args: [], render: renderInfo },
  counters: { method: 'GET', endpoint: 'vm.counters', args: [], render: renderCounters },
  create: { method: 'PUT', endpoint: 'vm.create', args: ['FILE'], render: done('VM created') },
  boot: { method: 'PUT', endpoint: 'vm.boot', args: [], render: done('VM booted') },
  pause: { method: 'PUT', endpoint: 'vm.pause', args: [], render: done('VM paused') },
  resume: { method: 'PUT', endpoint: 'vm.resume', args: [], render: done('VM resumed') },
  shutdown: { method: 'PUT', endpoint: 'vm.shutdown', args: [], render: done('VM shut down') },
  reboot: { method: 'PUT', endpoint: 'vm.reboot', args: [], render: done('VM rebooted') },
  'power-button': { method: 'PUT', endpoint: 'vm.power-button', args: [], render: done('power button pressed') },
  delete: { method: 'PUT', endpoint: 'vm.delete', args: [], render: done('VM deleted') },
  'shutdown-vmm': { method: 'PUT', endpoint: 'vmm.shutdown', args: [], render: done('VMM shut down') },
  snapshot: {
    method: 'PUT', endpoint: 'vm.snapshot', args: ['DESTINATION_URL'], render: done('VM snapshot written'),
    body: (a) => JSON.stringify({ destination_url: a[0] }),
  },
  'send-migration': {
    method: 'PUT', endpoint: 'vm.send-migration', args: ['DESTINATION_URL'], render: done('VM migrated'),
    body: (a) => JSON.stringify({ destination_url: a[0] }),
  },
  'receive-migration': {
    method: 'PUT', endpoint: 'vm.receive-migration', args: ['RECEIVER_URL'], render: done('VM received'),
    body: (a) => JSON.stringify({ receiver_url: a[0] }),
  },
  resize: { method: 'PUT', endpoint: 'vm.resize', args: ['--balloon', 'SIZE'], options: true, render: done('VM resized'), body: resizeBody },
  restore: { method: 'PUT', endpoint: 'vm.restore', args: ['SOURCE_URL|source_url=…'], render: done('VM restored'), body: restoreBody },
  // ch-remote add-disk / add-net take the --disk / --net option syntax.
  'add-disk': { method: 'PUT', endpoint: 'vm.add-disk', args: ['path=…[,readonly=on,id=…]'], render: renderDeviceInfo('disk'), body: (a) => JSON.stringify(parseDisk(a[0]!)) },
  'add-net': { method: 'PUT', endpoint: 'vm.add-net', args: ['tap=…[,mac=…,id=…]'], render: renderDeviceInfo('network device'), body: (a) => JSON.stringify(parseNet(a[0]!)) },
  'add-fs': { method: 'PUT', endpoint: 'vm.add-fs', args: ['tag=…,socket=…'], render: renderDeviceInfo('virtio-fs device'), body: (a) => JSON.stringify(parseFs(a[0]!)) },
  'add-pmem': { method: 'PUT', endpoint: 'vm.add-pmem', args: ['file=…[,discard_writes=on]'], render: renderDeviceInfo('pmem device'), body: (a) => JSON.stringify(parsePmem(a[0]!)) },
  'add-vsock': { method: 'PUT', endpoint: 'vm.add-vsock', args: ['cid=…,socket=…'], render: renderDeviceInfo('vsock device'), body: (a) => JSON.stringify(parseVsock(a[0]!)) },
  'remove-device': {
    method: 'PUT', endpoint: 'vm.remove-device', args: ['ID'], render: done('device removal requested (the guest ejects it)'),
    body: (a) => JSON.stringify({ id: a[0] }),
  },
};

/** A hotplug's answer (PciDeviceInfo), or the 204 of an add before boot. */
function renderDeviceInfo(what: string): (body: unknown) => string {
  return (body) => {
    const b = body as { id?: unknown; bdf?: unknown } | null | undefined;
    if (b && typeof b.id === 'string') return `${JSON.stringify({ id: b.id, bdf: b.bdf })}\n`;
    return `${what} added to the VM's configuration\n`;
  };
}

/** Where output goes (tests capture it). */
export interface RemoteIo {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  /** Read the `create` file ('-' = stdin). */
  readFile?: (path: string) => Promise<string>;
}

const defaultIo: RemoteIo = {
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
};

async function readInput(path: string): Promise<string> {
  if (path !== '-') return readFile(path, 'utf8');
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Run `stratovisor remote ...`. `argv` is what follows the program name, with or
 * without the leading "remote". Returns the exit status (0 ok, 1 error, 2 usage).
 */
export async function runRemote(argv: string[], io: RemoteIo = defaultIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(argv[0] === 'remote' ? argv : ['remote', ...argv]);
  } catch (e) {
    if (e instanceof CliError) {
      io.stderr(`stratovisor remote: ${e.message.replace(/^remote: /, '')}\n`);
      return 2;
    }
    throw e;
  }
  if (parsed.kind === 'help') {
    io.stdout(`${parsed.text}\n`);
    return 0;
  }
  if (parsed.kind !== 'remote') {
    io.stderr('stratovisor remote: expected a remote command\n');
    return 2;
  }
  const spec = COMMANDS[parsed.command];
  if (spec === undefined) {
    io.stderr(`stratovisor remote: "${parsed.command}" is not supported yet by stratovisor remote (supported: ${Object.keys(COMMANDS).join(', ')})\n`);
    return 2;
  }
  if (spec.options !== true && parsed.args.length !== spec.args.length) {
    const want = spec.args.length === 0 ? 'takes no arguments' : `takes ${spec.args.map((a) => `<${a}>`).join(' ')}`;
    io.stderr(`stratovisor remote: ${parsed.command} ${want}, got ${parsed.args.length === 0 ? 'none' : parsed.args.map((a) => JSON.stringify(a)).join(' ')}\n`);
    return 2;
  }

  let body: string | undefined;
  if (parsed.command === 'create') {
    const file = parsed.args[0]!;
    try {
      body = await (io.readFile ?? readInput)(file);
    } catch (e) {
      io.stderr(`stratovisor remote: cannot read VM config ${file}: ${(e as Error).message}\n`);
      return 1;
    }
  } else if (spec.body) {
    try {
      body = spec.body(parsed.args);
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      io.stderr(`stratovisor remote: ${e.message}\n`);
      return 2;
    }
  }

  let res: ApiResponse;
  try {
    res = await apiRequest(parsed.apiSocket, spec.method, spec.endpoint, body);
  } catch (e) {
    io.stderr(`stratovisor remote: ${(e as Error).message}\n`);
    return 1;
  }

  if (res.status < 200 || res.status >= 300) {
    if (parsed.json && res.text !== '') io.stdout(`${res.text}\n`);
    io.stderr(`stratovisor remote: ${spec.endpoint} failed: ${res.status} ${http.STATUS_CODES[res.status] ?? ''}${formatErrorBody(res.text)}\n`);
    return 1;
  }
  if (parsed.json) {
    if (res.text !== '') io.stdout(res.text.endsWith('\n') ? res.text : `${res.text}\n`);
    return 0;
  }
  let value: unknown;
  if (res.text !== '') {
    try {
      value = JSON.parse(res.text) as unknown;
    } catch {
      io.stdout(`${res.text}\n`);
      return 0;
    }
  }
  io.stdout(spec.render(value));
  return 0;
}

/** CH error bodies are a JSON array of messages; show them one per line. */
function formatErrorBody(text: string): string {
  if (text.trim() === '') return '';
  try {
    const v = JSON.parse(text) as unknown;
    if (Array.isArray(v)) return v.map((m) => `\n  ${String(m)}`).join('');
    if (typeof v === 'string') return `\n  ${v}`;
  } catch {
    // not JSON: show as is
  }
  return `\n  ${text.trim()}`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function renderPing(v: unknown): string {
  if (!isRecord(v)) return `${JSON.stringify(v)}\n`;
  const lines = [`version: ${String(v.version)}`];
  if (v.build_version !== undefined) lines.push(`build_version: ${String(v.build_version)}`);
  if (v.pid !== undefined) lines.push(`pid: ${String(v.pid)}`);
  if (Array.isArray(v.features)) lines.push(`features: ${v.features.length === 0 ? '(none)' : v.features.join(', ')}`);
  return `${lines.join('\n')}\n`;
}

function size(n: unknown): string {
  if (typeof n !== 'number') return String(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let x = n;
  while (x >= 1024 && x % 1024 === 0 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return `${x} ${units[u]}`;
}

function renderInfo(v: unknown): string {
  if (!isRecord(v)) return `${JSON.stringify(v)}\n`;
  const lines = [`state: ${String(v.state)}`];
  const c = isRecord(v.config) ? v.config : {};
  const cpus = isRecord(c.cpus) ? c.cpus : undefined;
  if (cpus) lines.push(`cpus: ${String(cpus.boot_vcpus)} (max ${String(cpus.max_vcpus)})`);
  const mem = isRecord(c.memory) ? c.memory : undefined;
  if (mem) lines.push(`memory: ${size(mem.size)}${v.memory_actual_size !== undefined ? ` (actual ${size(v.memory_actual_size)})` : ''}`);
  const p = isRecord(c.payload) ? c.payload : undefined;
  if (p) {
    for (const k of ['kernel', 'firmware', 'initramfs', 'cmdline']) {
      if (p[k] !== undefined) lines.push(`${k}: ${String(p[k])}`);
    }
  }
  if (Array.isArray(c.disks)) {
    c.disks.forEach((d, i) => {
      if (isRecord(d)) lines.push(`disk ${String(d.id ?? i)}: ${String(d.path ?? d.vhost_socket)}${d.readonly === true ? ' (readonly)' : ''}`);
    });
  }
  if (Array.isArray(c.net)) {
    c.net.forEach((n, i) => {
      if (isRecord(n)) lines.push(`net ${String(n.id ?? i)}: tap=${String(n.tap ?? '-')} mac=${String(n.mac ?? '-')} ip=${String(n.ip)}/${String(n.mask)}`);
    });
  }
  for (const k of ['serial', 'console']) {
    const s = c[k];
    if (isRecord(s)) lines.push(`${k}: ${String(s.mode)}${s.file !== undefined ? ` ${String(s.file)}` : ''}${s.socket !== undefined ? ` ${String(s.socket)}` : ''}`);
  }
  return `${lines.join('\n')}\n`;
}

function renderCounters(v: unknown): string {
  if (!isRecord(v)) return `${JSON.stringify(v)}\n`;
  const lines: string[] = [];
  for (const dev of Object.keys(v).sort()) {
    lines.push(`${dev}:`);
    const cs = v[dev];
    if (isRecord(cs)) for (const k of Object.keys(cs).sort()) lines.push(`  ${k}: ${String(cs[k])}`);
  }
  return lines.length === 0 ? '(no counters)\n' : `${lines.join('\n')}\n`;
}
