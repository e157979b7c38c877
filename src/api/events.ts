// Lifecycle event monitor, after Cloud Hypervisor's event_monitor crate and its
// `--event-monitor path=<file>|fd=<fd>` option.
//
// Each event is one JSON object per line (JSON Lines):
//   {"timestamp":{"secs":0,"nanos":1234},"source":"vm","event":"booted","properties":null}
// `timestamp` is the time since the monitor started, serialized as serde serializes a
// Rust `Duration` (what Cloud Hypervisor writes); `properties` is null or an object of
// strings. (Cloud Hypervisor pretty-prints each object; a JSON stream parser reads both.)
//
// Library users subscribe with `monitor.on('event', fn)` or `monitor.subscribe(fn)`.

import { EventEmitter } from 'node:events';
import { createWriteStream, type WriteStream } from 'node:fs';
import { nextVmState, type ReceiveMigrationData, type RestoreConfig, type SendMigrationData, type VmAction, type VmmController, type VmResize, type VmState } from './controller.js';
import type { VsockConfig } from '../vmm/config.js';

/** One event as written to the monitor file. */
export interface LifecycleEvent {
  timestamp: { secs: number; nanos: number };
  source: string;
  event: string;
  properties: Record<string, string> | null;
}

/** Events Stratovisor emits (source "vmm" or "vm"), as Cloud Hypervisor names them. */
export type VmmEventName = 'starting' | 'shutdown';
export type VmEventName =
  | 'created'
  | 'booting'
  | 'booted'
  | 'pausing'
  | 'paused'
  | 'resuming'
  | 'resumed'
  | 'shutdown'
  | 'deleted'
  | 'rebooting'
  | 'rebooted'
  | 'power-button';

/** `--event-monitor` target: a file to create/truncate or an inherited file descriptor. */
export type EventMonitorTarget = { path: string } | { fd: number };

export interface EventMonitorEvents {
  event: [LifecycleEvent];
  /** A write to the monitor file failed; further writes are dropped. */
  'write-error': [Error];
}

/**
 * Emits lifecycle events to subscribers and (optionally) to a JSON-lines file.
 * Writing never throws and never blocks the event loop: a failing or closed file
 * only stops the file output (reported once as 'write-error').
 */
export class EventMonitor extends EventEmitter<EventMonitorEvents> {
  private readonly start = process.hrtime.bigint();
  private stream: WriteStream | undefined;
  private failed = false;

  /** @param target where to write; omitted: subscribers only. */
  constructor(target?: EventMonitorTarget) {
    super();
    if (target !== undefined) {
      // CH opens path= with create+truncate (cloud-hypervisor/src/main.rs).
      const stream =
        'path' in target
          ? createWriteStream(target.path, { flags: 'w', mode: 0o600 })
          : createWriteStream('', { fd: target.fd, autoClose: true });
      stream.on('error', (err: Error) => this.fail(err));
      this.stream = stream;
    }
  }

  /** Resolves once the file is open (rejects if it cannot be); immediate without a file. */
  ready(): Promise<void> {
    const s = this.stream;
    if (s === undefined || !s.pending) return this.failed ? Promise.reject(new Error('event monitor file failed')) : Promise.resolve();
    return new Promise((resolve, reject) => {
      const onReady = () => {
        s.off('error', onError);
        resolve();
      };
      const onError = (err: Error) => {
        s.off('ready', onReady);
        reject(err);
      };
      s.once('ready', onReady);
      s.once('error', onError);
    });
  }

  /** Record an event: write it (if a file is set) and notify subscribers. */
  emitEvent(source: string, event: string, properties?: Record<string, string>): LifecycleEvent {
    const ns = process.hrtime.bigint() - this.start;
    const ev: LifecycleEvent = {
      timestamp: { secs: Number(ns / 1_000_000_000n), nanos: Number(ns % 1_000_000_000n) },
      source,
      event,
      properties: properties === undefined ? null : { ...properties },
    };
    if (this.stream !== undefined && !this.failed && this.stream.writable) {
      this.stream.write(`${JSON.stringify(ev)}\n`);
    }
    // A throwing listener must not break the VMM.
    for (const listener of this.listeners('event')) {
      try {
        (listener as (e: LifecycleEvent) => void)(ev);
      } catch {
        // ignored: subscribers own their errors
      }
    }
    return ev;
  }

  /** Subscribe to events; returns the unsubscribe function. */
  subscribe(listener: (ev: LifecycleEvent) => void): () => void {
    this.on('event', listener);
    return () => this.off('event', listener);
  }

  /** Flush and close the file (subscribers stay). */
  close(): Promise<void> {
    const s = this.stream;
    this.stream = undefined;
    if (s === undefined || s.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      s.end(() => resolve());
      s.once('error', () => resolve());
    });
  }

  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = true;
    // 'write-error' has no default throw (unlike 'error').
    this.emit('write-error', err);
  }
}

/** Parse `--event-monitor` value "path=<file>" | "fd=<n>" | "<file>". */
export function parseEventMonitorArg(value: string): EventMonitorTarget {
  if (value.startsWith('fd=')) {
    const s = value.slice(3);
    if (!/^\d+$/.test(s)) throw new Error(`--event-monitor: fd must be a non-negative integer, got "${s}"`);
    return { fd: Number(s) };
  }
  const path = value.startsWith('path=') ? value.slice(5) : value;
  if (path === '') throw new Error('--event-monitor: path or fd required');
  return { path };
}

/**
 * Wrap a controller so that API-initiated lifecycle actions emit events around the
 * call ("booting" before, "booted" after success), as Cloud Hypervisor's vmm does.
 * Changes the guest initiates (a guest reboot or poweroff) are not API calls: the VMM
 * core must emit those itself on the same monitor.
 */
export function withLifecycleEvents(controller: VmmController, monitor: EventMonitor): VmmController {
  const state = (): VmState | undefined => {
    try {
      return controller.info().state;
    } catch {
      return undefined;
    }
  };
  // Check the transition first so that a refused request emits nothing.
  const around =
    (action: VmAction, before: string | undefined, after: string, fn: () => Promise<void>): (() => Promise<void>) =>
    async () => {
      nextVmState(state(), action);
      if (before !== undefined) monitor.emitEvent('vm', before);
      await fn();
      monitor.emitEvent('vm', after);
    };
  return {
    ping: () => controller.ping(),
    createVm: async (config) => {
      await controller.createVm(config);
      monitor.emitEvent('vm', 'created');
    },
    bootVm: around('boot', 'booting', 'booted', () => controller.bootVm()),
    pauseVm: around('pause', 'pausing', 'paused', () => controller.pauseVm()),
    resumeVm: around('resume', 'resuming', 'resumed', () => controller.resumeVm()),
    shutdownVm: around('shutdown', undefined, 'shutdown', () => controller.shutdownVm()),
    rebootVm: around('reboot', 'rebooting', 'rebooted', () => controller.rebootVm()),
    powerButton: around('power-button', undefined, 'power-button', () => controller.powerButton()),
    ...(controller.addVsock !== undefined ? { addVsock: (v: VsockConfig) => controller.addVsock!(v) } : {}),
    ...(controller.snapshotVm !== undefined
      ? { snapshotVm: (url: string) => around('snapshot', 'snapshotting', 'snapshotted', () => controller.snapshotVm!(url))() }
      : {}),
    ...(controller.sendMigration !== undefined
      ? { sendMigration: (d: SendMigrationData) => around('send-migration', 'migrating', 'migrated', () => controller.sendMigration!(d))() }
      : {}),
    ...(controller.receiveMigration !== undefined
      ? { receiveMigration: (d: ReceiveMigrationData) => around('receive-migration', 'receiving-migration', 'migration-received', () => controller.receiveMigration!(d))() }
      : {}),
    ...(controller.restoreVm !== undefined
      ? { restoreVm: (rc: RestoreConfig) => around('restore', 'restoring', 'restored', () => controller.restoreVm!(rc))() }
      : {}),
    deleteVm: async () => {
      // CH: deleting when nothing exists succeeds silently; only report a real delete.
      const existed = state() !== undefined;
      await controller.deleteVm();
      if (existed) monitor.emitEvent('vm', 'deleted');
    },
    shutdownVmm: async () => {
      await controller.shutdownVmm();
      monitor.emitEvent('vmm', 'shutdown');
    },
    ...(controller.resizeVm !== undefined
      ? { resizeVm: async (r: VmResize) => { monitor.emitEvent('vm', 'resizing'); await controller.resizeVm!(r); monitor.emitEvent('vm', 'resized'); } }
      : {}),
    info: () => controller.info(),
    counters: () => controller.counters(),
    ...(controller.addFs ? { addFs: (fs: Parameters<NonNullable<VmmController['addFs']>>[0]) => controller.addFs!(fs) } : {}),
    addNet: (net) => controller.addNet(net),
    ...(controller.addDisk ? { addDisk: (d: Parameters<NonNullable<VmmController['addDisk']>>[0]) => controller.addDisk!(d) } : {}),
    ...(controller.addPmem ? { addPmem: (p: Parameters<NonNullable<VmmController['addPmem']>>[0]) => controller.addPmem!(p) } : {}),
    ...(controller.removeDevice ? { removeDevice: (id: string) => controller.removeDevice!(id) } : {}),
  };
}
