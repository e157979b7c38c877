// The web console (`stratovisor console`) driving a real guest (Debian's kernel, the `shell`
// scenario) in Debian's headless Chromium through Playwright:
//   a VMM started with --api-socket and --serial socket=… and a raw disk; the console started
//   with its API socket; the page opened with the token from the URL fragment lists the VM as
//   Running; `echo hello-$RANDOM` typed into its xterm.js console is answered by the guest;
//   Pause stops the guest answering (the state says Paused), Resume brings the answer; a `dd` of
//   the disk typed into the console moves the disk's read counters in the page's charts.
// Screenshots: .cache/e2e-logs/console-*.png; the VMM's and the console's logs beside them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync, openSync, ftruncateSync, closeSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { guestImages, LOG_DIR } from './lib/guest.js';
import { STRATOVISOR } from './lib/stratovisor.js';

const CHROMIUM = '/usr/bin/chromium';
const img = guestImages();

class Proc {
  out = '';
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  constructor(readonly name: string, args: string[]) {
    this.child = spawn(process.execPath, [STRATOVISOR, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const add = (b: Buffer) => { this.out += b.toString('latin1'); };
    this.child.stdout!.on('data', add);
    this.child.stderr!.on('data', add);
    this.exited = new Promise((r) => this.child.on('close', (code) => r(code)));
  }
  save(): void {
    writeFileSync(join(LOG_DIR, `console-${this.name}.log`), this.out);
  }
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(t);
    this.save();
  }
}

/** A progress line as the test goes (the sandbox kills a run that prints nothing for minutes). */
function step(m: string): void {
  process.stderr.write(`# e2e console: ${m}\n`);
}

async function until<T>(what: string, f: () => T | undefined | Promise<T | undefined>, ms: number, explain: () => string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms / 1000} s waiting for ${what}\n${explain()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** What terminalText last read (shown when a wait times out). */
let lastTerminal = '';

/** The text xterm.js shows in a VM's card (its DOM renderer's rows, scroll-back excluded). */
async function terminalText(page: Page): Promise<string> {
  lastTerminal = (await page.locator('[data-vm="vm1"] .xterm-rows').innerText()).replace(/\u00a0/g, ' ');
  return lastTerminal;
}

test('the web console shows a running guest, types into its serial console, pauses and resumes it, charts its disk', { timeout: 900_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) { t.skip(`${CHROMIUM} is missing (Debian package chromium; npm test installs it)`); return; }
  mkdirSync(LOG_DIR, { recursive: true });
  // The sandbox starts with its loopback interface down: Chromium then calls every load, even of
  // 127.0.0.1, ERR_INTERNET_DISCONNECTED. Bring it up (a no-op where it is up already).
  const lo = spawnSync('ip', ['link', 'set', 'lo', 'up'], { encoding: 'utf8' });
  if (lo.status !== 0) t.diagnostic(`ip link set lo up: ${lo.stderr.trim()}`);
  const dir = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'stv-console-'));
  const apiSock = join(dir, 'vm.sock');
  const serialSock = join(dir, 'vm.serial');
  const disk = join(dir, 'disk.img');
  const fd = openSync(disk, 'w');
  ftruncateSync(fd, 64 << 20);
  closeSync(fd);

  const vmm = new Proc('vmm', [
    '--api-socket', `path=${apiSock}`,
    '--kernel', img.bzImage, '--initramfs', img.initramfs, '--cmdline', 'console=ttyS0 quiet stv.scenario=shell',
    '--cpus', 'boot=1', '--memory', 'size=512M', '--serial', `socket=${serialSock}`, '--console', 'off',
    '--disk', `path=${disk},id=disk0`,
  ]);
  let con: Proc | null = null;
  let browser: Browser | null = null;
  let page: Page | null = null;
  const shot = async (name: string) => { if (page) await page.screenshot({ path: join(LOG_DIR, `console-${name}.png`), fullPage: true }); };
  const explain = () => `--- vmm ---\n${vmm.out.slice(-2000)}\n--- console ---\n${con?.out.slice(-2000) ?? ''}\n--- terminal in the page ---\n${lastTerminal.slice(-1500)}`;
  t.after(async () => {
    if (page) {
      try { writeFileSync(join(LOG_DIR, 'console-terminal.log'), await terminalText(page)); } catch (e) { step(`terminal text not saved: ${(e as Error).message}`); }
      try { await shot('last'); } catch { /* page gone */ }
    }
    step('stopping Chromium, the console and the VMM');
    // Closing Chromium in the slow nested sandbox can take long; do not let it hold the rest up.
    await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 60_000).unref())]);
    await con?.stop();
    await vmm.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  await until('the API socket', () => (existsSync(apiSock) ? true : undefined), 60_000, explain);
  step('VMM API socket up; starting the console');
  con = new Proc('server', ['console', '--listen', '127.0.0.1:0', '--api-socket', apiSock]);
  const url = await until('the console URL', () => /open (http:\/\/\S+)/.exec(con!.out)?.[1], 90_000, explain);
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/#token=[\w-]+$/, 'loopback, the token only in the fragment');

  step(`console at ${url.replace(/#.*/, '#token=…')}; starting Chromium`);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  // A context of our own (not browser.newPage's page-owned one): the Origin check below opens a
  // second page in it, with its cookie.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  // Chromium under the nested TCG sandbox takes tens of seconds to a page (the default is 30 s).
  context.setDefaultNavigationTimeout(150_000);
  context.setDefaultTimeout(90_000);
  page = await context.newPage();
  const consoleMessages: string[] = [];
  page.on('console', (m) => consoleMessages.push(m.text()));
  await page.goto(url);
  step('page loaded');
  const card = page.locator('[data-vm="vm1"]');
  const state = card.locator('.state');
  await state.filter({ hasText: /^Running$/ }).waitFor({ timeout: 60_000 });
  assert.equal(new URL(page.url()).hash, '', 'the token left the address bar');
  const summary = await card.locator('.summary').innerText();
  assert.match(summary, /1 vCPU/);
  assert.match(summary, /memory 512\.0 MiB/);
  assert.match(summary, /disk0: /);

  const term = card.locator('.xterm');
  // The guest's shell prompt arrives through the serial socket (the scenario sets PS1).
  // (Should the console have connected after the prompt was printed, an Enter brings a new one.)
  let lastEnter = Date.now();
  await until('the guest shell prompt', async () => {
    if ((await terminalText(page!)).includes('stv# ')) return true;
    if (Date.now() - lastEnter > 30_000) { lastEnter = Date.now(); await term.click(); await page!.keyboard.press('Enter'); }
    return undefined;
  }, 240_000, explain);
  await shot('running');
  step('the guest prompt is in the page');

  const type = async (line: string) => {
    await term.click();
    await page!.keyboard.type(line);
    await page!.keyboard.press('Enter');
  };
  await type('echo hello-$RANDOM');
  step('typed echo hello-$RANDOM');
  const hello = await until('the guest answering echo', async () => /^hello-(\d+)\s*$/m.exec(await terminalText(page!))?.[1], 60_000, explain);
  assert.ok(Number(hello) >= 0 && Number(hello) <= 32767, `$RANDOM expanded by the guest: ${hello}`);

  step(`the guest answered hello-${hello}`);
  // Pause: the API's answer is shown, the state follows, the guest stops answering.
  await card.locator('button[data-action="pause"]').click();
  await state.filter({ hasText: /^Paused$/ }).waitFor({ timeout: 30_000 });
  assert.match(await card.locator('.answer').innerText(), /pause: HTTP 204/);
  await type('echo paused-$((6*7))');
  // A paused guest echoes nothing, not even the keystrokes; give a running one ample time to have answered.
  await new Promise((r) => setTimeout(r, 4000));
  assert.doesNotMatch(await terminalText(page), /^paused-42\s*$/m, 'no answer while paused');
  await shot('paused');
  step('paused: no answer');
  await card.locator('button[data-action="resume"]').click();
  await state.filter({ hasText: /^Running$/ }).waitFor({ timeout: 30_000 });
  await until('the answer after resume', async () => (/^paused-42\s*$/m.test(await terminalText(page!)) ? true : undefined), 60_000, explain);

  step('resumed: answered');
  // The disk's read counters move while the guest reads it.
  await type('dd if=/dev/vda of=/dev/null bs=1M; echo dd-done');
  const rate = card.locator('.rate[data-counter="disk0.read_bytes"]');
  await until('disk0 read bytes per second above 0 in the chart', async () => {
    if ((await rate.count()) === 0) return undefined;
    return Number(await rate.getAttribute('data-value')) > 0 ? true : undefined;
  }, 90_000, explain);
  await shot('counters');
  step('disk read counters moved');
  await until('dd to finish', async () => (/^dd-done\s*$/m.test(await terminalText(page!)) ? true : undefined), 90_000, explain);
  assert.match(await terminalText(page), /64\+0 records in/, 'the guest read the whole 64 MiB disk');
  assert.ok(!consoleMessages.some((m) => /Content Security Policy/.test(m)), `no CSP violations: ${consoleMessages.join('\n')}`);

  // In the browser, without the token: a fresh context (no cookie) gets the login page with 401,
  // the API 401, and a WebSocket to the console that never opens. From another Origin (a data:
  // page, Origin null) the WebSocket is refused too, while the logged-in page's own one opens.
  const base = url.replace(/\/#.*$/, '');
  const wsUrl = `${base.replace(/^http/, 'ws')}/ws/serial/vm1`;
  const tryWs = (u: string) => new Promise<string>((resolve) => {
    const ws = new WebSocket(u);
    ws.onopen = () => { ws.close(); resolve('open'); };
    ws.onerror = () => resolve('refused');
  });
  const anon = await browser.newContext();
  anon.setDefaultNavigationTimeout(150_000);
  anon.setDefaultTimeout(90_000);
  const anonPage = await anon.newPage();
  const login = await anonPage.goto(`${base}/`);
  assert.equal(login?.status(), 401, 'no token: 401');
  await anonPage.locator('form#f input[name="token"]').waitFor();
  assert.equal((await anonPage.request.get(`${base}/api/vms`)).status(), 401);
  assert.equal(await anonPage.evaluate(tryWs, wsUrl), 'refused', 'no token: no WebSocket');
  await anon.close();
  assert.equal(await page.evaluate(tryWs, wsUrl), 'open', 'the logged-in page opens one');
  const foreign = await page.context().newPage(); // the context that holds the cookie
  await foreign.goto('data:text/html,<title>elsewhere</title>');
  assert.equal(await foreign.evaluate(tryWs, wsUrl), 'refused', 'another Origin: no WebSocket');
  await foreign.close();
  step('no token and another Origin: refused in the browser');
});
