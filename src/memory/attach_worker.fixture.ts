// Worker side of guest_memory.test.ts: attach to a described GuestMemory and poke it.
import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory, type GuestMemoryDescriptor } from './guest_memory.js';

interface Job { desc: GuestMemoryDescriptor; readAt: number; writeAt: number; bad: number }
const job = workerData as Job;
const mem = GuestMemory.attach(job.desc);
const value = mem.readU64(job.readAt);
mem.writeU32(job.writeAt, 0xdeadbeef);
let error = '';
try { mem.readU8(job.bad); } catch (e) { error = (e as Error).name; }
mem.free();
parentPort!.postMessage({ value, error });
