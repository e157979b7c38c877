// One VM the console watches, through the API socket it was given: its state and config
// (vm.info), its counters as rates (vm.counters), its lifecycle actions, and its serial console
// (the VMM's `--serial socket=`, found in vm.info's config.serial.socket), kept connected while
// no viewer is attached so the scroll-back stays complete.
import net from 'node:net';
import { basename } from 'node:path';
import { apiRequest, ApiConnectionError } from '../cli/remote.js';

/** Serial output kept for viewers that attach later. */
export const SCROLLBACK_BYTES = 256 * 1024;
/** Counter samples kept for the charts (one per poll). */
export const HISTORY_SAMPLES = 120;
/** Counter samples closer together than this are not taken (rates over tiny intervals are noise). */
const MIN_SAMPLE_MS = 500;
/**
 * A state poll (vm.info, vm.counters) the VMM has not answered in this time marks the VM
 * Unreachable (a hung VMM must not freeze its card); lifecycle actions (a boot loads the kernel)
 * get longer.
 */
export const POLL_TIMEOUT_MS = 20_000;
export const ACTION_TIMEOUT_MS = 120_000;
/** Most keystroke bytes queued towards a guest that does not read before more are refused. */
export const INPUT_BACKLOG_LIMIT = 256 * 1024;

export type LinkState = 'Unknown' | 'Unreachable' | 'NotCreated' | 'Created' | 'Running' | 'Paused' | 'Shutdown' | 'BreakPoint';

export interface ConfigSummary {
  vcpus: number;
  memoryBytes: number;
  kernel?: string;
  cmdline?: string;
  disks: string[];
  nets: string[];
  serial: string;
  console: string;
}

export interface CounterSample {
  /** ms since the epoch */
  t: number;
  /** device id -> counter name -> per second */
  rates: Record<string, Record<string, number>>;
}

export interface VmView {
  id: string;
  name: string;
  socket: string;
  state: LinkState;
  error: string | null;
  config: ConfigSummary | null;
  /** ms since the epoch when the console saw it start running; null when not running. */
  runningSince: number | null;
  /** false when the VM was already running when the console first saw it (uptime is then at least). */
  uptimeExact: boolean;
  counters: Record<string, Record<string, number>>;
  history: CounterSample[];
  /** `scrollback`: bytes of serial output kept for viewers that attach later. */
  serial: { state: 'none' | 'connected' | 'disconnected'; message: string; viewers: number; scrollback: number };
}

/** What a viewer (a WebSocket) needs; kept abstract so the link does not depend on `ws`. */
export interface Viewer {
  sendOutput(bytes: Buffer): void;
  sendStatus(state: string, message: string): void;
}

interface RawVmInfo {
  state?: string;
  config?: {
    cpus?: { boot_vcpus?: number };
    memory?: { size?: number };
    payload?: { kernel?: string; cmdline?: string };
    disks?: Array<{ path?: string; id?: string; readonly?: boolean }>;
    net?: Array<{ tap?: string; id?: string; mac?: string }>;
    serial?: { mode?: string; socket?: string; file?: string };
    console?: { mode?: string };
  };
}

function summarize(c: NonNullable<RawVmInfo['config']>): ConfigSummary {
  const s: ConfigSummary = {
    vcpus: c.cpus?.boot_vcpus ?? 0,
    memoryBytes: c.memory?.size ?? 0,
    disks: (c.disks ?? []).map((d) => `${d.id ?? 'disk'}: ${d.path ?? '?'}${d.readonly ? ' (ro)' : ''}`),
    nets: (c.net ?? []).map((n) => `${n.id ?? 'net'}: tap ${n.tap ?? '?'}${n.mac ? ` ${n.mac}` : ''}`),
    serial: c.serial?.mode === 'Socket' ? `socket ${c.serial.socket ?? ''}` : (c.serial?.mode ?? 'Null'),
    console: c.console?.mode ?? 'Off',
  };
  if (c.payload?.kernel) s.kernel = c.payload.kernel;
  if (c.payload?.cmdline) s.cmdline = c.payload.cmdline;
  return s;
}

export interface ApiAnswer {
  status: number;
  text: string;
}

export class VmLink {
  readonly id: string;
  readonly socket: string;
  readonly name: string;
  state: LinkState = 'Unknown';
  error: string | null = null;
  config: ConfigSummary | null = null;
  private serialPath: string | null = null;
  private runningSince: number | null = null;
  private uptimeExact = false;
  private seen = false;
  private counters: Record<string, Record<string, number>> = {};
  private last: { t: number; c: Record<string, Record<string, number>> } | null = null;
  private readonly history: CounterSample[] = [];
  private serial: net.Socket | null = null;
  private serialConnected = false;
  private serialMessage = 'the VM has no serial socket (start it with --serial socket=PATH)';
  private readonly scrollback: Buffer[] = [];
  private scrollbackLen = 0;
  readonly viewers = new Set<Viewer>();
  private polling: Promise<void> | null = null;
  private closed = false;

  private readonly pollTimeoutMs: number;

  constructor(id: string, socket: string, pollTimeoutMs = POLL_TIMEOUT_MS) {
    this.id = id;
    this.socket = socket;
    this.pollTimeoutMs = pollTimeoutMs;
    this.name = basename(socket);
  }

  /** Ask the VMM for vm.info and vm.counters; connect the serial console when there is one. */
  poll(): Promise<void> {
    this.polling ??= this.doPoll().finally(() => { this.polling = null; });
    return this.polling;
  }

  private async doPoll(): Promise<void> {
    let info: ApiAnswer;
    try {
      info = await apiRequest(this.socket, 'GET', 'vm.info', undefined, this.pollTimeoutMs);
    } catch (e) {
      this.setState('Unreachable', e instanceof ApiConnectionError ? e.message : `API socket ${this.socket}: ${(e as Error).message}`);
      this.dropSerial('the VMM is gone: its API socket does not answer');
      return;
    }
    if (info.status !== 200) {
      // CH answers vm.info without a VM with an error; the VMM is up and waits for vm.create.
      this.setState('NotCreated', null);
      this.config = null;
      this.serialPath = null;
      return;
    }
    let raw: RawVmInfo;
    try {
      raw = JSON.parse(info.text) as RawVmInfo;
    } catch {
      this.setState('Unknown', `vm.info answered something that is not JSON: ${info.text.slice(0, 80)}`);
      return;
    }
    const st = (raw.state ?? 'Unknown') as LinkState;
    this.setState(st, null);
    this.config = raw.config ? summarize(raw.config) : null;
    const sp = raw.config?.serial?.mode === 'Socket' ? raw.config.serial.socket ?? null : null;
    if (sp !== this.serialPath) {
      this.dropSerial('the serial socket changed');
      this.serialPath = sp;
    }
    if (st === 'Running' || st === 'Paused') {
      await this.pollCounters();
      if (this.serialPath && !this.serial) this.connectSerial(this.serialPath);
    } else {
      this.last = null;
    }
  }

  private setState(st: LinkState, error: string | null): void {
    const running = st === 'Running' || st === 'Paused';
    if (running && this.runningSince === null) {
      this.runningSince = Date.now();
      this.uptimeExact = this.seen;
    } else if (!running) {
      this.runningSince = null;
    }
    this.seen = true;
    this.state = st;
    this.error = error;
  }

  private async pollCounters(): Promise<void> {
    // An extra poll (after an action) right after the regular one would make a noisy rate.
    if (this.last && Date.now() - this.last.t < MIN_SAMPLE_MS) return;
    let r: ApiAnswer;
    try {
      r = await apiRequest(this.socket, 'GET', 'vm.counters', undefined, this.pollTimeoutMs);
    } catch {
      return;
    }
    if (r.status !== 200) return;
    let c: Record<string, Record<string, number>>;
    try {
      c = JSON.parse(r.text) as Record<string, Record<string, number>>;
    } catch {
      return;
    }
    const now = Date.now();
    if (this.last && now > this.last.t) {
      const dt = (now - this.last.t) / 1000;
      const rates: Record<string, Record<string, number>> = {};
      for (const [dev, vals] of Object.entries(c)) {
        const prev = this.last.c[dev] ?? {};
        const out: Record<string, number> = {};
        for (const [k, v] of Object.entries(vals)) {
          const p = prev[k];
          // A counter that went down (guest reset rebuilt the device) starts again from 0.
          out[k] = typeof v === 'number' && typeof p === 'number' && v >= p ? (v - p) / dt : 0;
        }
        rates[dev] = out;
      }
      this.history.push({ t: now, rates });
      if (this.history.length > HISTORY_SAMPLES) this.history.shift();
    }
    this.last = { t: now, c };
    this.counters = c;
  }

  private connectSerial(path: string): void {
    if (this.closed) return; // a poll that was under way when the console closed
    const s = net.connect(path);
    this.serial = s;
    s.on('connect', () => {
      this.serialConnected = true;
      this.serialMessage = `connected to ${path}`;
      this.broadcastStatus();
    });
    s.on('data', (b: Buffer) => this.output(b));
    // After the VMM closed the socket, the reconnects (one per poll) keep saying so first: the
    // page then reads "the VMM closed ... (reconnecting: connect ENOENT ...)", not a bare ENOENT.
    let failed = false;
    const closed = `the VMM closed the serial socket ${path}`;
    s.on('error', (e) => {
      failed = true;
      this.serialMessage = this.serialMessage.startsWith(closed) ? `${closed} (reconnecting: ${e.message})` : `serial socket ${path}: ${e.message}`;
    });
    s.on('close', () => {
      if (this.serial !== s) return;
      this.serial = null;
      this.serialConnected = false;
      if (!failed) this.serialMessage = closed;
      this.broadcastStatus();
    });
  }

  private dropSerial(why: string): void {
    if (!this.serial) return;
    const s = this.serial;
    this.serial = null;
    this.serialConnected = false;
    this.serialMessage = why;
    s.destroy();
    this.broadcastStatus();
  }

  private output(b: Buffer): void {
    this.scrollback.push(b);
    this.scrollbackLen += b.length;
    while (this.scrollbackLen > SCROLLBACK_BYTES && this.scrollback.length > 1) {
      this.scrollbackLen -= this.scrollback.shift()!.length;
    }
    for (const v of this.viewers) v.sendOutput(b);
  }

  private serialState(): 'none' | 'connected' | 'disconnected' {
    return this.serialConnected ? 'connected' : this.serialPath ? 'disconnected' : 'none';
  }

  private broadcastStatus(): void {
    for (const v of this.viewers) v.sendStatus(this.serialState(), this.serialMessage);
  }

  /** A viewer attaches: it gets the scroll-back, then live output. */
  attach(v: Viewer): void {
    this.viewers.add(v);
    v.sendStatus(this.serialState(), this.serialMessage);
    if (this.scrollbackLen > 0) v.sendOutput(Buffer.concat(this.scrollback, this.scrollbackLen));
  }

  detach(v: Viewer): void {
    this.viewers.delete(v);
  }

  /**
   * Keystrokes from a viewer. Returns null when sent, else why not (no serial connection, or
   * the guest is not reading and the backlog is full: the bytes are dropped, not queued).
   */
  input(bytes: Buffer): string | null {
    const s = this.serial;
    if (!s || !this.serialConnected) return `not sent: ${this.serialMessage}`;
    if (s.writableLength + bytes.length > INPUT_BACKLOG_LIMIT) {
      return `input dropped: the guest is not reading its serial port (${s.writableLength} bytes waiting)`;
    }
    s.write(bytes);
    return null;
  }

  /**
   * When keystrokes wait towards a guest that is not reading, a promise that resolves once they
   * went out (or the serial connection ended); null when input flows. Viewers stop reading their
   * WebSocket meanwhile, so a paste waits in the browser instead of here.
   */
  inputBacklog(): Promise<void> | null {
    const s = this.serial;
    if (!s || s.writableLength < INPUT_BACKLOG_LIMIT / 4) return null;
    return new Promise((resolve) => {
      const done = () => { s.off('drain', done); s.off('close', done); resolve(); };
      s.on('drain', done);
      s.on('close', done);
    });
  }

  /** PUT vm.<action> (pause, resume, reboot, power-button, shutdown, boot, create, delete). */
  async action(action: string, body?: string): Promise<ApiAnswer> {
    try {
      const r = await apiRequest(this.socket, 'PUT', `vm.${action}`, body, ACTION_TIMEOUT_MS);
      return r;
    } finally {
      void this.poll();
    }
  }

  view(): VmView {
    return {
      id: this.id,
      name: this.name,
      socket: this.socket,
      state: this.state,
      error: this.error,
      config: this.config,
      runningSince: this.runningSince,
      uptimeExact: this.uptimeExact,
      counters: this.counters,
      history: this.history,
      serial: { state: this.serialState(), message: this.serialMessage, viewers: this.viewers.size, scrollback: this.scrollbackLen },
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.dropSerial('the console is closing');
  }
}
