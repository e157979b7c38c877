// A VM's virtio I/O thread: builds the model of every device it serves (one thread for all of a
// VM's devices by default; a device with its own `iothread=` gets one of its own) and runs their
// poll loop (io_thread.ts). A slow disk or network stalls only the devices of its thread.
import { parentPort } from 'node:worker_threads';
import { GuestMemory } from '../memory/guest_memory.js';
import { createDeviceModel } from './virtio_factory.js';
import type { RateLimiter } from '../virtio/rate_limiter.js';
import { DeviceRunner, failReady, runIoLoop } from './io_thread.js';
import type { VirtioWorkerData, VirtioWorkerEvent } from './virtio_protocol.js';

const post = (e: VirtioWorkerEvent) => parentPort!.postMessage(e);

parentPort!.once('message', (data: VirtioWorkerData) => {
  void start(data);
});

async function start(data: VirtioWorkerData): Promise<void> {
  const mem = GuestMemory.attach(data.mem);
  const runners: DeviceRunner[] = [];
  const raised: DeviceRunner[] = [];
  const onRaise = (r: DeviceRunner) => { raised.push(r); };
  const groups = new Map<string, RateLimiter>();
  // Models are built one after another (each loads only its own module); a device that cannot
  // be built fails alone, the others are served.
  for (const d of data.devices) {
    try {
      const dev = await createDeviceModel(d.spec, d.id, (message, warn) => post({ type: 'log', id: d.id, message, ...(warn ? { warn } : {}) }), groups, mem);
      runners.push(new DeviceRunner(d, dev, mem, post, onRaise));
    } catch (e) {
      failReady(d.shared);
      post({ type: 'error', id: d.id, message: `cannot create ${d.id}: ${(e as Error).message}` });
    }
  }
  try {
    runIoLoop(data.controlFd, runners, raised);
  } catch (e) {
    for (const d of data.devices) failReady(d.shared);
    for (const r of runners) r.stop();
    post({ type: 'error', id: data.devices.map((d) => d.id).join(','), message: (e as Error).stack ?? String(e) });
  }
  mem.free();
}
