// `npm run bench` port-I/O row: exits/s of a tiny real-mode guest through the TypeScript KVM
// backend against the C reference (bench/c/pio_loop.c), alternating STV_BENCH_RUNS times. Runs on
// the host's /dev/kvm when it has one, else inside scripts/kvm-sandbox — then it measures the
// sandbox's KVM (kvm-amd on QEMU/TCG's emulated SVM), ~100x slower than hardware, and only the
// TS/C ratio means anything.
import { pioExitsPerSecond, cPioExitsPerSecond } from './pio-exits.js';
import { median, fmt, table } from './stats.js';

const runs = Number(process.env.STV_BENCH_RUNS ?? 5);
const exits = Number(process.env.STV_BENCH_PIO_EXITS ?? (process.env.STV_IN_SANDBOX ? 20_000 : 200_000));
const where = process.env.STV_IN_SANDBOX ? "the sandbox's KVM: nested SVM under QEMU/TCG, not hardware" : 'host KVM';
const ts: number[] = [];
const c: number[] = [];
for (let i = 0; i < runs; i++) {
  c.push(cPioExitsPerSecond(exits) ?? NaN);
  ts.push(await pioExitsPerSecond(exits));
}
const mt = median(ts);
const mc = median(c);
console.log('\n' + table([`port-I/O exits (${where}, tiny guest)`, 'exits/s', 'vs C'], [
  ['C reference (bench/c/pio_loop.c)', fmt(mc), '1.00x'],
  ['stratovisor (TypeScript KVM backend)', fmt(mt), Number.isFinite(mc) ? `${(mt / mc).toFixed(2)}x` : 'n/a'],
]) + `\n(medians of ${runs} alternating runs of ${exits} exits)`);
