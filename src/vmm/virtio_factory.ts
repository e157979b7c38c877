// Build a device model from its structured-cloneable spec, inside the device's I/O worker.
import * as libc from '../sys/libc.js';
import type { VirtioDevice } from '../virtio/device.js';
import type { GuestMemory } from '../memory/guest_memory.js';
import { RateLimiter } from '../virtio/rate_limiter.js';
import type { VirtioDeviceSpec } from './virtio_protocol.js';
import { OutputSink } from './sink.js';

/**
 * Each I/O thread loads only its own device's module (a thread's start-up is mostly module
 * loading, and it overlaps the guest's boot). `groups` holds the thread's rate_limit_group
 * limiters: the disks of a group share one (config validation puts them on one thread). `mem`
 * is the thread's guest memory (virtio-mem gives the host pages of unplugged blocks back there).
 */
export async function createDeviceModel(spec: VirtioDeviceSpec, id: string, log: (m: string, warn?: boolean) => void = () => {}, groups: Map<string, RateLimiter> = new Map(), mem?: GuestMemory): Promise<VirtioDevice> {
  switch (spec.kind) {
    case 'block': {
      const { BlockDevice } = await import('../virtio/block/device.js');
      let rateLimiter: RateLimiter | undefined;
      const rl = spec.rateLimit;
      if (rl !== undefined) {
        rateLimiter = rl.group !== undefined ? groups.get(rl.group) : undefined;
        if (rateLimiter === undefined) {
          rateLimiter = new RateLimiter(rl.config);
          if (rl.group !== undefined) groups.set(rl.group, rateLimiter);
        }
      }
      return new BlockDevice({
        fd: spec.fd, size: spec.size, readonly: spec.readonly, numQueues: spec.numQueues, queueSize: spec.queueSize, serial: spec.serial,
        ...(rateLimiter !== undefined ? { rateLimiter } : {}),
      });
    }
    case 'rng': {
      const { RngDevice } = await import('../virtio/rng/device.js');
      return new RngDevice({ fd: spec.fd });
    }
    case 'console': {
      const { ConsoleDevice } = await import('../virtio/console/device.js');
      // Bounded, non-blocking output (sink.ts): a full sink is written to when poll(2) says it
      // is writable again; what does not fit meanwhile is dropped and counted.
      const out = new OutputSink(spec.outFd);
      return new ConsoleDevice({
        sink: (bytes) => { out.write(bytes); out.flush(); },
        output: { waitFd: () => out.waitFd, flush: () => out.flush(), counters: out.counters },
        input: spec.inFd >= 0 ? { fd: spec.inFd } : null,
        cols: spec.cols, rows: spec.rows,
      });
    }
    case 'fs': {
      const { FsDevice } = await import('../virtio/fs/device.js');
      return new FsDevice({
        socketFd: spec.socketFd, socketPath: spec.socketPath, tag: spec.tag, numRequestQueues: spec.numRequestQueues,
        queueSize: spec.queueSize, connection: spec.connection, log,
      });
    }
    case 'net': {
      const { NetDevice } = await import('../virtio/net/device.js');
      const { TUNSETOFFLOAD } = await import('../net/tap.js');
      return new NetDevice({
        tapFds: spec.tapFds, mac: Uint8Array.from(spec.mac), queuePairs: spec.queuePairs, queueSize: spec.queueSize,
        ...(spec.mtu !== undefined ? { mtu: spec.mtu } : {}),
        // RX and TX are throttled independently, each by the whole configured rate (as CH).
        ...(spec.rateLimiter !== undefined ? { rxRateLimiter: new RateLimiter(spec.rateLimiter), txRateLimiter: new RateLimiter(spec.rateLimiter) } : {}),
        setOffload: (flags) => { for (const fd of spec.tapFds) libc.ioctl(fd, TUNSETOFFLOAD, flags, `TUNSETOFFLOAD(${id})`); },
      });
    }
    case 'pmem': {
      const { PmemDevice } = await import('../virtio/pmem/device.js');
      return new PmemDevice({ fd: spec.fd, start: spec.start, size: spec.size, discardWrites: spec.discardWrites });
    }
    case 'balloon': {
      const { BalloonDevice } = await import('../virtio/balloon/device.js');
      return new BalloonDevice({ numPages: spec.numPages, deflateOnOom: spec.deflateOnOom, freePageReporting: spec.freePageReporting });
    }
    case 'mem': {
      const { MemDevice } = await import('../virtio/mem/device.js');
      if (mem === undefined) throw new Error(`${id}: virtio-mem needs the guest memory its region is part of`);
      const m = mem;
      return new MemDevice({
        addr: spec.addr, regionSize: spec.regionSize, blockSize: spec.blockSize, requestedSize: spec.requestedSize,
        // Unplugged blocks: their host pages go back (MADV_DONTNEED, or a hole punched in the
        // memfd of shared memory); the guest reads zeroes there (5.15: nothing else is promised).
        discard: (gpa, len) => m.discard(gpa, len),
      });
    }
    case 'vsock': {
      const { VsockDevice } = await import('../virtio/vsock/device.js');
      return new VsockDevice({ cid: spec.cid, listenFd: spec.listenFd, socketPath: spec.socketPath });
    }
  }
}
