// The API e2e files' shared parts (api.test.ts, api_pause.test.ts): a Stratovisor process with
// its API socket and log, Kata's VmConfig, and small API helpers.
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestImages, parseMarkers, REPO, guestResetLines, type Marker } from './guest.js';
import { STRATOVISOR } from './stratovisor.js';
import type { components } from './cloud-hypervisor-api.js';
import { apiRequest } from '../../../src/cli/remote.js';
import { waitForPing as waitForVmmPing } from '../../../src/api/testing/spawn_vmm.js';

export const img = guestImages();
export const LOG_DIR = join(REPO, '.cache', 'e2e-logs');
export const GUEST_TIMEOUT_MS = 240_000;

export type VmConfig = components['schemas']['VmConfig'];

/** A VmConfig as Kata Containers' clh.go builds it (minus the devices Stratovisor lacks). */
export function kataLikeConfig(scenario: string): VmConfig {
  return {
    payload: { kernel: img.bzImage, initramfs: img.initramfs, cmdline: `console=ttyS0 quiet stv.scenario=${scenario}` },
    cpus: { boot_vcpus: 2, max_vcpus: 2 },
    memory: { size: 512 * 1024 * 1024, shared: true },
    rng: { src: '/dev/urandom' },
    serial: { mode: 'Tty' },
    console: { mode: 'Off' },
    iommu: false,
  };
}

/** A stratovisor process: its console (stdout), markers, and exit. */
export class VmmProcess {
  stdout = '';
  stderr = '';
  readonly markers: Marker[] = [];
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly t0 = performance.now();
  private scanFrom = 0;
  private waiters: Array<() => void> = [];
  private exited = false;
  readonly child;
  readonly logFile: string;

  constructor(name: string, args: string[]) {
    mkdirSync(LOG_DIR, { recursive: true });
    this.logFile = join(LOG_DIR, `${name}.log`);
    this.child = spawn(process.execPath, [STRATOVISOR, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdin.on('error', () => {});
    this.child.stdout.on('data', (b: Buffer) => {
      this.stdout += b.toString('latin1');
      const lastNl = this.stdout.lastIndexOf('\n');
      if (lastNl >= this.scanFrom) {
        const chunk = this.stdout.slice(this.scanFrom, lastNl + 1);
        this.scanFrom = lastNl + 1;
        for (const m of parseMarkers(chunk)) this.markers.push({ ...m, atMs: performance.now() - this.t0 });
      }
      this.wake();
    });
    this.child.stderr.on('data', (b: Buffer) => { this.stderr += b.toString('latin1'); });
    this.exit = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        this.exited = true;
        writeFileSync(this.logFile, `$ stratovisor ${args.join(' ')}\n${this.stdout}\n--- stderr ---\n${this.stderr}\n[exit ${code ?? signal}]\n`);
        this.wake();
        resolve({ code, signal });
      });
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves at the next change (output or exit). */
  private changed(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  count(event: string, data?: string): number {
    return this.markers.filter((m) => m.event === event && (data === undefined || m.data === data)).length;
  }

  /** Wait until `count` markers `event` (with `data`, if given) have been seen. */
  async waitMarker(event: string, count = 1, data?: string): Promise<void> {
    while (this.count(event, data) < count) {
      if (this.exited) throw new Error(`VMM exited before marker ${event}${data ? `:${data}` : ''} #${count}\n${this.explain()}`);
      await this.changed();
    }
  }

  send(s: string): void {
    this.child.stdin.write(s);
  }

  explain(lines = 25): string {
    return `${guestResetLines(this.stderr + this.stdout)}log: ${this.logFile}\n--- last ${lines} console lines ---\n${this.stdout.split('\n').slice(-lines).join('\n')}\n--- stderr ---\n${this.stderr.slice(-3000)}`;
  }

  kill(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

export function sockDir(): string {
  // $TMPDIR is a tmpfs inside the sandbox.
  return mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), 'stv-api-'));
}

/** The shared helper (src/api/testing/spawn_vmm.ts), with this VMM's console for errors. */
export async function waitForPing(sock: string, vmm: VmmProcess): Promise<void> {
  await waitForVmmPing(sock, vmm.child, { explain: () => vmm.explain() });
}

export async function state(sock: string): Promise<string> {
  const r = await apiRequest(sock, 'GET', 'vm.info');
  assert.equal(r.status, 200, r.text);
  return (JSON.parse(r.text) as { state: string }).state;
}

export async function put(sock: string, endpoint: string, body?: unknown): Promise<void> {
  const r = await apiRequest(sock, 'PUT', endpoint, body === undefined ? undefined : JSON.stringify(body));
  assert.equal(r.status, 204, `${endpoint}: ${r.status} ${r.text}`);
}

export function startVmm(t: TestContext, name: string, args: string[]): VmmProcess {
  const vmm = new VmmProcess(name, args);
  t.after(() => vmm.kill());
  return vmm;
}
