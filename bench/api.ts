// API benchmark (host, no guest needed): time from `stratovisor --api-socket` process start to
// the API answering vmm.ping, and vmm.ping round-trip latency with concurrent clients.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiRequest } from '../src/cli/remote.js';
import { median } from './stats.js';
import { spawnVmm } from '../src/api/testing/spawn_vmm.js';
import { STRATOVISOR } from '../test/e2e/lib/stratovisor.js';

async function startVmm(): Promise<{ socket: string; readyMs: number; stop: () => Promise<void> }> {
  const socket = join(mkdtempSync(join(tmpdir(), 'stv-bench-api-')), 'api.sock');
  // The VMM as it runs (the bundle); STV_BENCH_API_MAIN picks another CLI (e.g. tsc's output).
  const v = await spawnVmm(socket, { stdio: 'ignore', pollMs: 1, main: process.env.STV_BENCH_API_MAIN ?? STRATOVISOR });
  return { socket, readyMs: v.readyMs, stop: async () => { await apiRequest(socket, 'PUT', 'vmm.shutdown'); await v.exited; } };
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
