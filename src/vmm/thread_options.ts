// Options every VMM worker thread is started with.
//
// Young generation: V8's default lets a worker's new space grow to several MiB of semi-spaces
// (16 MiB per semi-space on 64-bit), and the pages stay resident after a burst of start-up
// allocation. VMM threads allocate little once running (preallocated buffers and views on the
// hot paths), so a 2 MiB young generation costs a few more scavenges at start and saves several
// MiB of resident memory per allocating thread (measured in the boot benchmark, README).
// Worker `execArgv` V8 flags such as --max-semi-space-size are refused by Node for workers;
// `resourceLimits.maxYoungGenerationSizeMb` is the per-isolate knob.
// STV_WORKER_YOUNG_MB overrides the size (0: V8's default), for measuring.
import type { WorkerOptions } from 'node:worker_threads';

export const DEFAULT_YOUNG_GENERATION_MB = 2;

export function threadOptions(env: NodeJS.ProcessEnv = process.env): WorkerOptions {
  const v = env.STV_WORKER_YOUNG_MB;
  const mb = v === undefined || v === '' ? DEFAULT_YOUNG_GENERATION_MB : Number(v);
  if (!Number.isFinite(mb) || mb < 0) throw new Error(`STV_WORKER_YOUNG_MB must be a number of MiB (0: V8's default), not '${v}'`);
  return mb === 0 ? {} : { resourceLimits: { maxYoungGenerationSizeMb: mb } };
}

/** Computed once per process: every thread gets the same limits. */
export const THREAD_OPTIONS: WorkerOptions = threadOptions();
