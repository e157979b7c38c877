// Port-I/O exit throughput: a real-mode guest doing `out 0x10, al; jmp $-2` forever; each
// KVM_RUN returns one KVM_EXIT_IO. Compares the TypeScript backend with the C reference in
// bench/c/pio_loop.c (same guest, same ioctls).
//
//   node dist/bench/pio-exits.js [N]

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VmExitKind } from '../src/hypervisor/hypervisor.js';
import { createTinyGuest } from '../src/hypervisor/kvm/testguest.js';

const CODE = 0x1000;
const PORT = 0x10;

/** Run `n` port-I/O exits through the TypeScript KVM backend; returns exits per second. */
export async function pioExitsPerSecond(n = 200_000): Promise<number> {
  const g = createTinyGuest();
  try {
    g.mem.set([0xe6, PORT, 0xeb, 0xfc], CODE); // out 0x10, al; jmp -4
    const s = g.vcpu.getSregs();
    s.cs.base = 0n; s.cs.selector = 0;
    s.ds.base = 0n; s.ds.selector = 0;
    g.vcpu.setSregs(s);
    const r = g.vcpu.getRegs();
    r.rip = BigInt(CODE); r.rflags = 2n; r.rax = 0x42n;
    g.vcpu.setRegs(r);

    const vcpu = g.vcpu;
    const exit = vcpu.exit;
    let sum = 0;
    let t0 = 0n;
    let t1 = 0n;
    for (let pass = 0; pass < 2; pass++) { // pass 0 warms up (JIT, page faults)
      const iters = pass === 0 ? Math.ceil(n / 10) : n;
      t0 = process.hrtime.bigint();
      for (let i = 0; i < iters; i++) {
        const k = vcpu.run();
        if (k === VmExitKind.Intr) continue;
        if (k !== VmExitKind.IoOut || exit.port !== PORT) throw new Error(`unexpected exit ${vcpu.decodeExit().kind}`);
        sum += exit.data[0]!;
      }
      t1 = process.hrtime.bigint();
    }
    if (sum === 0) throw new Error('guest wrote nothing');
    return n / (Number(t1 - t0) / 1e9);
  } finally {
    g.close();
  }
}

/** Compile bench/c/pio_loop.c with cc and run it; returns exits per second (null if no cc). */
export function cPioExitsPerSecond(n = 200_000): number | null {
  const src = fileURLToPath(new URL('../../bench/c/pio_loop.c', import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), 'pio-loop-'));
  try {
    const bin = join(dir, 'pio_loop');
    try {
      execFileSync('cc', ['-O2', '-o', bin, src], { stdio: 'pipe' });
    } catch (e) {
      console.error(`cannot compile ${src}: ${(e as Error).message}`);
      return null;
    }
    const out = execFileSync(bin, [String(n)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const m = /exits_per_sec (\d+)/.exec(out);
    if (!m) throw new Error(`unexpected output from pio_loop: ${out}`);
    return Number(m[1]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function main(argv = process.argv.slice(2)): Promise<void> {
  const n = argv[0] ? Number(argv[0]) : 200_000;
  if (!Number.isInteger(n) || n <= 0) throw new Error(`N must be a positive integer, got '${argv[0]}'`);
  const c = cPioExitsPerSecond(n);
  const ts = await pioExitsPerSecond(n);
  console.log(`TypeScript: ${Math.round(ts)} exits/s`);
  if (c !== null) {
    console.log(`C reference: ${Math.round(c)} exits/s`);
    console.log(`TS/C: ${((ts / c) * 100).toFixed(1)}%`);
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  });
}
