// API benchmark (host, no guest needed): time from `stratovisor --api-socket` process start to
// the API answering vmm.ping, and vmm.ping round-trip latency with concurrent clients.
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { apiRequest } from '../src/cli/remote.js';
import { median } from './stats.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

async function startVmm(): Promise<{ socket: string; readyMs: number; stop: () => Promise<void> }> {
  const socket = join(mkdtempSync(join(tmpdir(), 'stv-bench-api-')), 'api.sock');
  const t0 = performance.now();
  const child = spawn(process.execPath, [MAIN, '--api-socket', `path=${socket}`], { stdio: 'ignore' });
  const exited = new Promise<void>((r) => child.on('close', () => r()));
  for (;;) {
    try {
      if ((await apiRequest(socket, 'GET', 'vmm.ping')).status === 200) break;
    } catch {
      if (child.exitCode !== null) throw new Error('stratovisor --api-socket exited before answering');
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  const readyMs = performance.now() - t0;
  return { socket, readyMs, stop: async () => { await apiRequest(socket, 'PUT', 'vmm.shutdown'); await exited; } };
}

export interface ApiBench { startToPingMs: number; p50Us: number; p99Us: number; requestsPerSec: number; clients: number }

export async function apiBench(runs = 5, clients = 16, perClient = 500): Promise<ApiBench> {
  const starts: number[] = [];
  for (let i = 0; i < runs; i++) {
    const v = await startVmm();
    starts.push(v.readyMs);
    await v.stop();
  }
  const v = await startVmm();
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, async () => {
    for (let i = 0; i < perClient; i++) {
      const s = performance.now();
      const r = await apiRequest(v.socket, 'GET', 'vmm.ping');
      if (r.status !== 200) throw new Error(`vmm.ping answered ${r.status}`);
      lat.push((performance.now() - s) * 1000);
    }
  }));
  const total = (performance.now() - t0) / 1000;
  await v.stop();
  lat.sort((a, b) => a - b);
  return {
    startToPingMs: median(starts), p50Us: lat[Math.floor(lat.length * 0.5)]!, p99Us: lat[Math.floor(lat.length * 0.99)]!,
    requestsPerSec: lat.length / total, clients,
  };
}
