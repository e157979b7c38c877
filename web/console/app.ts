// The Stratovisor console page (bundled by esbuild, scripts/build-console.mjs): polls
// /api/vms, draws one card per VM (state, config, uptime, counter charts in uPlot, lifecycle buttons, a
// boot form for an idle VMM) and a serial console per VM in xterm.js over /ws/serial/ID.
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import uPlot from 'uplot';
import '@xterm/xterm/css/xterm.css';
import 'uplot/dist/uPlot.min.css';
import './style.css';

interface ConfigSummary {
  vcpus: number; memoryBytes: number; kernel?: string; cmdline?: string;
  disks: string[]; nets: string[]; serial: string; console: string;
}
interface CounterSample { t: number; rates: Record<string, Record<string, number>> }
interface VmView {
  id: string; name: string; socket: string; state: string; error: string | null;
  config: ConfigSummary | null; runningSince: number | null; uptimeExact: boolean;
  counters: Record<string, Record<string, number>>; history: CounterSample[];
  serial: { state: string; message: string; viewers: number };
}

const POLL_MS = 1000;
/** Keystrokes and pastes go out in pieces the server accepts (its limit is 64 KiB a message). */
const INPUT_CHUNK = 16 * 1024;
const CHART_WIDTH = 400, CHART_HEIGHT = 140;
/** Tick steps of the bytes/s axis in whole KiB, MiB, GiB... (1, 2, 5, 10, ... 500 of each). */
const BYTE_INCRS = [0, 1, 2, 3, 4].flatMap((e) => [1, 2, 5, 10, 20, 50, 100, 200, 500].map((m) => m * 1024 ** e));
const COLORS = ['#4fc3f7', '#ffb74d', '#81c784', '#e57373', '#ba68c8', '#fff176', '#4db6ac', '#f06292'];

const $ = <T extends HTMLElement>(root: ParentNode, sel: string): T => root.querySelector(sel) as T;
function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${u[i]}`;
}
function fmtRate(n: number, bytes: boolean): string {
  return bytes ? `${fmtBytes(n)}/s` : `${n.toFixed(n < 10 ? 1 : 0)}/s`;
}
function fmtDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h ${m}m ${s % 60}s` : m > 0 ? `${m}m ${s % 60}s` : `${s}s`;
}

/** One serial console: xterm.js, its WebSocket (reconnected while the card lives), fit on resize. */
class SerialView {
  readonly term: Terminal;
  private readonly fit = new FitAddon();
  private ws: WebSocket | null = null;
  private retry = 0;
  private closed = false;
  private readonly enc = new TextEncoder();

  constructor(private readonly id: string, host: HTMLElement, private readonly status: HTMLElement) {
    this.term = new Terminal({ convertEol: false, scrollback: 5000, fontSize: 13, cursorBlink: true });
    this.term.loadAddon(this.fit);
    this.term.open(host);
    this.fit.fit();
    this.term.onData((d) => this.send(d));
    this.term.onResize(({ cols, rows }) => this.control({ type: 'resize', cols, rows }));
    new ResizeObserver(() => { try { this.fit.fit(); } catch { /* hidden */ } }).observe(host);
    this.connect();
  }

  private setStatus(text: string, bad: boolean): void {
    this.status.textContent = text;
    this.status.classList.toggle('bad', bad);
  }

  private connect(): void {
    if (this.closed) return;
    const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/serial/${encodeURIComponent(this.id)}`);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => {
      this.retry = 0;
      this.term.reset();
      this.control({ type: 'resize', cols: this.term.cols, rows: this.term.rows });
    };
    ws.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
      if (typeof ev.data !== 'string') { this.term.write(new Uint8Array(ev.data)); return; }
      let m: { type?: string; state?: string; message?: string };
      try { m = JSON.parse(ev.data) as typeof m; } catch { return; }
      if (m.type !== 'status') return;
      if (m.state === 'size') return;
      const bad = m.state !== 'connected';
      this.setStatus(`serial: ${m.state}: ${m.message ?? ''}`, bad);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.closed) return;
      const delay = Math.min(10_000, 500 * 2 ** this.retry++);
      this.setStatus(`console connection closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''}); retrying in ${(delay / 1000).toFixed(1)} s`, true);
      setTimeout(() => this.connect(), delay);
    };
  }

  private control(m: object): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(m));
  }

  private send(d: string): void {
    const ws = this.ws;
    if (ws?.readyState !== WebSocket.OPEN) { this.setStatus('not connected: keystrokes are not sent', true); return; }
    const bytes = this.enc.encode(d);
    for (let off = 0; off < bytes.length; off += INPUT_CHUNK) ws.send(bytes.subarray(off, off + INPUT_CHUNK));
  }

  close(): void {
    this.closed = true;
    this.ws?.close();
    this.term.dispose();
  }
}

/**
 * One live counter chart (uPlot): the last samples of a VM's counters as lines, time on x. The
 * plot is made again only when the set of series changes (a device appears); otherwise each poll
 * hands it the new samples (setData). The chart's box carries what it last drew
 * (data-samples, data-series, data-max) so the page's test can follow it.
 */
class CounterChart {
  private plot: uPlot | null = null;
  private keys = '';

  constructor(private readonly box: HTMLElement, private readonly bytes: boolean) {}

  update(times: number[], series: Array<{ name: string; values: number[] }>): void {
    const keys = series.map((s) => s.name).join('\n');
    if (this.plot && keys !== this.keys) { this.plot.destroy(); this.plot = null; }
    this.keys = keys;
    // uPlot's x is in seconds; every series has a value for every sample.
    const data: uPlot.AlignedData = [times.map((t) => t / 1000), ...series.map((s) => s.values)];
    if (!this.plot) {
      const bytes = this.bytes;
      const axis = { stroke: '#8a919c', grid: { stroke: '#2b2f36', width: 1 }, ticks: { stroke: '#2b2f36', width: 1 }, font: '10px sans-serif' };
      this.plot = new uPlot({
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
        legend: { show: false },
        cursor: { show: false },
        scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max) * 1.05] } },
        axes: [
          // Wall-clock seconds (HH:MM:SS), at least 10 s apart.
          { ...axis, size: 24, space: 70, incrs: [10, 15, 30, 60, 120, 300, 600], values: (_u, vals) => vals.map((v) => new Date(v * 1000).toLocaleTimeString([], { hour12: false })) },
          { ...axis, size: 78, ...(bytes ? { incrs: BYTE_INCRS } : {}), values: (_u, vals) => vals.map((v) => fmtRate(v, bytes)) },
        ],
        series: [{}, ...series.map((s, i) => ({ label: s.name, stroke: COLORS[i % COLORS.length]!, width: 1.5, points: { show: false } }))],
        hooks: {
          draw: [(u: uPlot) => {
            const ys = u.data.slice(1) as number[][];
            this.box.dataset.samples = String(u.data[0].length);
            this.box.dataset.series = String(ys.length);
            this.box.dataset.max = String(Math.max(0, ...ys.flatMap((y) => y)));
          }],
        },
      }, data, this.box);
    } else {
      this.plot.setData(data);
    }
  }

  close(): void {
    this.plot?.destroy();
    this.plot = null;
  }
}

class VmCard {
  readonly root: HTMLElement;
  private serial: SerialView | null = null;
  private view: VmView | null = null;
  private readonly charts: Record<'bytes' | 'ops', CounterChart>;

  constructor(private readonly id: string) {
    this.root = el('section', { class: 'vm', 'data-vm': id });
    this.root.innerHTML = `
      <h2><span class="name"></span><span class="state"></span><span class="sock"></span></h2>
      <div class="error"></div>
      <div class="summary"></div>
      <div class="buttons">
        <button data-action="pause">Pause</button><button data-action="resume">Resume</button>
        <button data-action="reboot">Reboot</button><button data-action="power-button">Power button</button>
        <button data-action="shutdown">Shut down</button><span class="answer"></span>
      </div>
      <form class="boot" hidden>
        <label>kernel</label><input name="kernel" required>
        <label>initramfs</label><input name="initramfs">
        <label>cmdline</label><input name="cmdline" value="console=ttyS0">
        <label>vCPUs</label><input name="vcpus" type="number" min="1" value="1">
        <label>memory (MiB)</label><input name="memoryMiB" type="number" min="16" value="512">
        <label>disks</label><input name="disks" placeholder="paths, comma-separated">
        <button type="submit">Boot</button>
      </form>
      <div class="row" hidden>
        <div class="term-box"><div class="term"></div><div class="term-status"></div></div>
        <div class="charts">
          <h3>bytes per second</h3><div class="chart bytes"></div><div class="legend bytes-legend"></div>
          <h3>operations per second</h3><div class="chart ops"></div><div class="legend ops-legend"></div>
        </div>
      </div>`;
    for (const b of this.root.querySelectorAll<HTMLButtonElement>('button[data-action]')) {
      b.addEventListener('click', () => void this.act(b.dataset.action!));
    }
    this.charts = { bytes: new CounterChart($(this.root, '.chart.bytes'), true), ops: new CounterChart($(this.root, '.chart.ops'), false) };
    const form = $<HTMLFormElement>(this.root, 'form.boot');
    form.addEventListener('submit', (e) => { e.preventDefault(); void this.boot(form); });
  }

  private answer(text: string): void {
    $(this.root, '.answer').textContent = text;
  }

  private async post(path: string, body: object): Promise<void> {
    try {
      const r = await fetch(`/api/vms/${encodeURIComponent(this.id)}/${path}`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      const j = (await r.json()) as { action?: string; status?: number; text?: string; error?: string };
      if (!r.ok) { this.answer(`${path}: refused (${r.status}): ${j.error ?? ''}`); return; }
      const text = (j.text ?? '').trim();
      this.answer(j.status === 0
        ? `${j.action}: ${text}`
        : `${j.action}: HTTP ${j.status}${text ? ` ${text.slice(0, 300)}` : ''}`);
    } catch (e) {
      this.answer(`${path}: the console server did not answer (${(e as Error).message})`);
    }
    void refresh();
  }

  private act(action: string): Promise<void> {
    this.answer(`${action}…`);
    return this.post(action, {});
  }

  private boot(form: HTMLFormElement): Promise<void> {
    const f = new FormData(form);
    const s = (k: string) => String(f.get(k) ?? '').trim();
    const disks = s('disks').split(',').map((d) => d.trim()).filter((d) => d.length > 0);
    this.answer('create+boot…');
    return this.post('boot', { kernel: s('kernel'), initramfs: s('initramfs'), cmdline: s('cmdline'), vcpus: Number(s('vcpus')), memoryMiB: Number(s('memoryMiB')), disks });
  }

  update(v: VmView, now: number): void {
    this.view = v;
    $(this.root, '.name').textContent = v.name;
    const st = $(this.root, '.state');
    st.textContent = v.state;
    st.className = `state ${v.state}`;
    $(this.root, '.sock').textContent = v.socket;
    $(this.root, '.error').textContent = v.error ?? (v.state === 'Shutdown' ? 'the VM has shut down' : '');
    const sum = $(this.root, '.summary');
    sum.replaceChildren();
    const c = v.config;
    if (c) {
      const up = v.runningSince !== null ? `${v.uptimeExact ? '' : '≥ '}${fmtDuration(now - v.runningSince)}` : '—';
      for (const t of [`${c.vcpus} vCPU${c.vcpus === 1 ? '' : 's'}`, `memory ${fmtBytes(c.memoryBytes)}`, `uptime ${up}`,
        `disks: ${c.disks.length ? c.disks.join(', ') : 'none'}`, `net: ${c.nets.length ? c.nets.join(', ') : 'none'}`, `serial ${c.serial}`]) {
        sum.append(el('span', {}, t));
      }
      if (c.kernel) sum.append(el('span', { class: 'kernel' }, `kernel ${c.kernel}${c.cmdline ? ` "${c.cmdline}"` : ''}`));
    } else if (v.state === 'NotCreated') {
      sum.append(el('span', {}, 'this VMM has no VM yet: boot one below'));
    }
    const can: Record<string, boolean> = {
      pause: v.state === 'Running', resume: v.state === 'Paused', reboot: v.state === 'Running' || v.state === 'Paused',
      'power-button': v.state === 'Running', shutdown: v.state === 'Running' || v.state === 'Paused',
    };
    for (const b of this.root.querySelectorAll<HTMLButtonElement>('button[data-action]')) b.disabled = !can[b.dataset.action!];
    $<HTMLFormElement>(this.root, 'form.boot').hidden = v.state !== 'NotCreated';
    // The console and charts stay once shown (a VM that died keeps its last output on screen).
    if (v.config || this.serial) $(this.root, '.row').hidden = false;
    if (v.serial.state !== 'none' && !this.serial) {
      this.serial = new SerialView(v.id, $(this.root, '.term'), $(this.root, '.term-status'));
    }
    if (!this.serial) $(this.root, '.term-status').textContent = `serial: ${v.serial.message}`;
    this.drawCharts();
  }

  private drawCharts(): void {
    const v = this.view;
    if (!v) return;
    const names = new Set<string>();
    for (const s of v.history) for (const [dev, r] of Object.entries(s.rates)) for (const k of Object.keys(r)) if (k !== 'malformed_requests') names.add(`${dev}.${k}`);
    const all = [...names].sort();
    for (const [kind, bytes] of [['bytes', true], ['ops', false]] as const) {
      const keys = all.filter((n) => n.endsWith('_bytes') === bytes);
      const series = keys.map((key) => {
        const dot = key.indexOf('.');
        const dev = key.slice(0, dot), k = key.slice(dot + 1);
        return { name: key, values: v.history.map((s) => s.rates[dev]?.[k] ?? 0) };
      });
      // Drawn once the row shows (a VM with no config yet has no devices to chart).
      if (!$(this.root, '.row').hidden) this.charts[kind].update(v.history.map((s) => s.t), series);
      const legend = $(this.root, `.${kind}-legend`);
      legend.replaceChildren(...series.map((s, i) => {
        const last = s.values[s.values.length - 1] ?? 0;
        const row = el('span', { class: 'rate', 'data-counter': s.name, 'data-value': String(last) });
        const sw = el('i');
        sw.style.background = COLORS[i % COLORS.length]!;
        row.append(sw, `${s.name}: ${fmtRate(last, bytes)}`);
        return row;
      }));
      if (series.length === 0) legend.textContent = v.state === 'Running' || v.state === 'Paused' ? 'no virtio counters yet' : '';
    }
  }

  close(): void {
    this.serial?.close();
    this.charts.bytes.close();
    this.charts.ops.close();
    this.root.remove();
  }
}

const cards = new Map<string, VmCard>();

async function refresh(): Promise<void> {
  const conn = document.getElementById('conn')!;
  let data: { vms: VmView[]; now: number };
  try {
    const r = await fetch('/api/vms');
    if (r.status === 401) { conn.textContent = 'not logged in (the console restarted?): reload the page and give the token'; conn.classList.add('bad'); return; }
    data = (await r.json()) as typeof data;
  } catch {
    conn.textContent = 'the console server does not answer';
    conn.classList.add('bad');
    return;
  }
  conn.textContent = `${data.vms.length} VM${data.vms.length === 1 ? '' : 's'} · updated ${new Date(data.now).toLocaleTimeString()}`;
  conn.classList.remove('bad');
  const main = document.getElementById('vms')!;
  for (const v of data.vms) {
    let c = cards.get(v.id);
    if (!c) { c = new VmCard(v.id); cards.set(v.id, c); main.append(c.root); }
    c.update(v, data.now);
  }
}

void refresh();
setInterval(() => void refresh(), POLL_MS);
