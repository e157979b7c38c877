// The web console's page itself, in Debian's headless Chromium (playwright-core; never a
// downloaded browser), against the real ConsoleServer in front of a real API server (the
// in-memory VMM core) and a real serial socket: the counter charts are drawn by uPlot and follow
// the VM's counters, and the page says what happened when a paste outruns a guest that does not
// read (and the paste still arrives whole), when the serial socket closes while viewed,
// when the VMM's API socket goes away (Unreachable, with the reason) and when the console
// server itself goes. Runs on any host with /usr/bin/chromium (no KVM needed).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { ConsoleServer, WEB_DIR } from './server.js';
import { startTestServer } from '../api/test_server.fixture.js';
import { SerialSocketSink } from '../vmm/serial_socket.js';
import { OutputSink } from '../vmm/sink.js';
import { createVmConfig } from '../vmm/config.js';

const CHROMIUM = '/usr/bin/chromium';
/** Generous: each wait is for a condition, never a fixed time. */
const WAIT_MS = 20_000;

interface Setup {
  page: Page;
  sink: SerialSocketSink;
  closeConsole: () => Promise<void>;
  closeApi: () => Promise<void>;
  /** The disk's cumulative counters as vm.counters reports them; the test moves them. */
  disk: { read_bytes: number; write_bytes: number; read_ops: number; write_ops: number };
  /** Whether the "guest" takes serial input now, and how much it took. */
  reading: { on: boolean };
  typed: { bytes: number };
  /** The page's console messages and uncaught errors. */
  problems: string[];
}

async function setup(t: TestContext, browser: Browser): Promise<Setup> {
  const api = await startTestServer();
  const serialPath = join(api.dir, 'serial');
  const reading = { on: true };
  const typed = { bytes: 0 };
  const sink = new SerialSocketSink({ path: serialPath, input: (b) => { if (!reading.on) return 0; typed.bytes += b.length; return b.length; } });
  await sink.listening;
  // vm.counters of the in-memory core, with a disk whose counters this test moves (the VMM side
  // is a stand-in; the page and the console server are under test).
  const disk = { read_bytes: 0, write_bytes: 0, read_ops: 0, write_ops: 0 };
  const counters = api.controller.counters.bind(api.controller);
  api.controller.counters = () => { counters(); return { disk0: { ...disk } }; };
  await api.controller.createVm(createVmConfig({
    payload: { kernel: '/k', cmdline: 'console=ttyS0' }, memory: { size: 256 << 20 },
    disks: [{ path: '/d.img' }], serial: { mode: 'Socket', socket: serialPath },
  }));
  await api.controller.bootVm();
  const con = new ConsoleServer({ apiSockets: [api.socketPath], pollMs: 100 });
  const url = await con.listen();
  let conClosed = false;
  const closeConsole = async () => { if (!conClosed) { conClosed = true; await con.close(); } };
  let apiClosed = false;
  const closeApi = async () => { if (!apiClosed) { apiClosed = true; await api.close(); } };
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  t.after(async () => { await context.close(); await closeConsole(); sink.close(); await closeApi(); });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const problems: string[] = [];
  page.on('console', (m) => { if (m.type() === 'error' || /Content Security Policy/.test(m.text())) problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(`uncaught: ${e.message}`));
  await page.goto(url);
  return { page, sink, closeConsole, closeApi, disk, reading, typed, problems };
}

const CARD = '[data-vm="vm1"]';

/** A number from a data- attribute of an element of the card, as the page set it (NaN if none). */
async function attr(page: Page, sel: string, name: string): Promise<number> {
  return Number(await page.locator(`${CARD} ${sel}`).getAttribute(name, { timeout: WAIT_MS }));
}

/** Wait until that attribute passes `min` (a condition polled, not a time). */
async function attrAbove(page: Page, sel: string, name: string, min: number): Promise<void> {
  const end = Date.now() + WAIT_MS;
  for (let v = await attr(page, sel, name); !(v > min); v = await attr(page, sel, name)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${sel} ${name} > ${min} (it is ${v})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Wait until a locator's text matches (polled); the timeout names the text last seen. */
async function waitText(loc: Locator, re: RegExp): Promise<string> {
  const end = Date.now() + WAIT_MS;
  let last = '';
  for (;;) {
    last = (await loc.count()) > 0 ? await loc.first().innerText() : '(not on the page)';
    if (re.test(last)) return last;
    if (Date.now() > end) throw new Error(`timed out waiting for ${re} (the page shows ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The few DOM members the in-page functions below use (this file is built without the DOM library). */
interface CanvasLike {
  width: number; height: number; toDataURL(): string;
  getContext(kind: '2d'): { getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray } };
}

/** Pixels of a chart's uPlot canvas close to an RGB colour (the colour of one series' line). */
function pixelsOf(page: Page, chart: string, rgb: [number, number, number]): Promise<number> {
  return page.locator(`${CARD} ${chart} .uplot canvas`).evaluate((el, [r, g, b]) => {
    const c = el as unknown as CanvasLike;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i]! - r) < 32 && Math.abs(d[i + 1]! - g) < 32 && Math.abs(d[i + 2]! - b) < 32) n++;
    return n;
  }, rgb);
}

function canvasImage(page: Page, chart: string): Promise<string> {
  return page.locator(`${CARD} ${chart} .uplot canvas`).evaluate((el) => (el as unknown as CanvasLike).toDataURL());
}

test('the page: uPlot counter charts that follow vm.counters; a serial socket that closes, a VMM that goes away and a console that stops are shown', async (t) => {
  if (!existsSync(CHROMIUM)) { t.skip(`${CHROMIUM} is missing (Debian package chromium, which npm test installs when it runs as root)`); return; }
  assert.ok(existsSync(join(WEB_DIR, 'app.js')), `the page is not built (${WEB_DIR}/app.js): run npm run build`);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  t.after(() => browser.close());
  const s = await setup(t, browser);
  const { page } = s;
  const card = page.locator('[data-vm="vm1"]');
  await card.locator('.state', { hasText: /^Running$/ }).waitFor();

  // The charts are uPlot's: its root element and canvas in each chart box, fed the samples.
  const bytesChart = card.locator('.chart.bytes');
  await bytesChart.locator('.uplot canvas').waitFor();
  await card.locator('.chart.ops .uplot canvas').waitFor();
  await attrAbove(page, '.chart.bytes', 'data-samples', 1);
  assert.equal(await attr(page, '.chart.bytes', 'data-series'), 2, 'disk0.read_bytes and disk0.write_bytes');
  assert.equal(await attr(page, '.chart.ops', 'data-series'), 2, 'disk0.read_ops and disk0.write_ops');
  assert.equal(await attr(page, '.chart.bytes', 'data-max'), 0, 'an idle disk: every rate 0');
  const idle = await canvasImage(page, '.chart.bytes');

  // The guest reads its disk: the counters grow at each vm.counters, the chart's samples follow.
  const grow = setInterval(() => { s.disk.read_bytes += 1 << 20; s.disk.read_ops += 8; }, 50);
  t.after(() => clearInterval(grow));
  await attrAbove(page, '.chart.bytes', 'data-max', 100_000);
  await attrAbove(page, '.chart.ops', 'data-max', 0);
  await attrAbove(page, '.rate[data-counter="disk0.read_bytes"]', 'data-value', 0);
  assert.match(await card.locator('.rate[data-counter="disk0.read_bytes"]').innerText(), /disk0\.read_bytes: [\d.]+ (B|KiB|MiB|GiB)\/s/);
  // uPlot drew it: the canvas changed, and the read line (the first colour) is on it, off the baseline.
  assert.notEqual(await canvasImage(page, '.chart.bytes'), idle, 'the chart was drawn again');
  assert.ok(await pixelsOf(page, '.chart.bytes', [0x4f, 0xc3, 0xf7]) > 20, 'the read bytes/s line is drawn');
  await page.screenshot({ path: join(tmpdir(), 'stv-console-page-chart.png') });
  assert.ok((await bytesChart.locator('.u-axis').count()) >= 2, 'uPlot drew its axes');
  clearInterval(grow);

  // The serial console while viewed: output arrives, then the VMM closes the serial socket.
  await card.locator('.term-status', { hasText: /^serial: connected/ }).waitFor();
  const out = new OutputSink(s.sink.fd);
  out.write(Buffer.from('guest says hi\r\n'));
  out.flush();
  out.close();
  await card.locator('.xterm-rows', { hasText: 'guest says hi' }).waitFor();
  // A guest that does not read while a big paste comes in: the page says keystrokes wait, and the
  // paste arrives whole once the guest reads.
  s.reading.on = false;
  const PASTE = 2 << 20;
  await card.locator('.xterm-helper-textarea').evaluate((el, n) => {
    const g = globalThis as unknown as { DataTransfer: new () => { setData(k: string, v: string): void }; ClipboardEvent: new (t: string, i: object) => object };
    const dt = new g.DataTransfer();
    dt.setData('text/plain', 'x'.repeat(n));
    (el as unknown as { dispatchEvent(e: object): void }).dispatchEvent(new g.ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
  }, PASTE);
  await waitText(card.locator('.term-status'), /^serial: input: the guest is not reading its serial port .*keystrokes wait/);
  s.reading.on = true;
  const end = Date.now() + WAIT_MS;
  while (s.typed.bytes < PASTE) {
    if (Date.now() > end) throw new Error(`the paste did not arrive whole: ${s.typed.bytes} of ${PASTE} bytes`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(s.typed.bytes, PASTE, 'nothing lost, nothing doubled');
  s.sink.close();
  const serialStatus = card.locator('.term-status');
  // (The console then tries again at each poll; the message keeps saying what happened first.)
  await waitText(serialStatus, /^serial: disconnected: the VMM closed the serial socket \/\S+( \(reconnecting: connect ENOENT .*\))?$/);
  assert.match(await serialStatus.getAttribute('class') ?? '', /\bbad\b/, 'shown as a problem');
  await card.locator('.xterm-rows', { hasText: 'guest says hi' }).waitFor(); // the last output stays on screen

  // The VMM goes away: its API socket is gone. The card says Unreachable and why; the buttons are off.
  await s.closeApi();
  await waitText(card.locator('.state'), /^Unreachable$/);
  await waitText(card.locator('.error'), /API socket .* (does not exist|nothing is listening)/);
  for (const b of await card.locator('button[data-action]').all()) assert.equal(await b.isDisabled(), true, `${await b.innerText()} disabled`);
  assert.ok(await bytesChart.locator('.uplot canvas').isVisible(), 'the charts stay with their last samples');

  // The console server itself stops: the header says so, the serial view says it is retrying.
  await s.closeConsole();
  await waitText(page.locator('#conn.bad'), /^the console server does not answer$/);
  await waitText(serialStatus, /^console connection closed \(\d+.*\); retrying in/);
  assert.deepEqual(s.problems.filter((p) => /Content Security Policy|uncaught/.test(p)), [], 'no CSP violation, no uncaught error');
});
