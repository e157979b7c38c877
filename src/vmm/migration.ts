// Migration of a VM to another Stratovisor over a Unix or TCP socket, in Cloud Hypervisor's
// framing (src/migration/protocol.ts). Stop-and-copy: the source is paused (vCPUs and devices
// quiesced) once the destination has accepted the configuration, then guest RAM (only touched,
// non-zero pages), the VM's state (the snapshot document) and Complete are sent; the destination
// builds the VM through the restore path (guest RAM received into a memfd, mapped copy-on-write)
// and resumes it on Complete. Nothing is sent while the guest runs: no pre-copy rounds yet, so the
// downtime is the whole transfer.
// The source stays whole until the destination answered Complete: any failure before that
// (connect, refused config, a peer that hangs up or answers Error) sends Abandon where it can and
// resumes the source if it was running.
import net from 'node:net';
import { existsSync, writeSync } from 'node:fs';
import * as libc from '../sys/libc.js';
import {
  Command, CommandName, PROTOCOL_VERSION, Status, MigrationChannel, MigrationError, encodeHeader, encodeRangeTable, decodeRangeTable,
  type MigrationAddress, type MemoryRangeEntry,
} from '../migration/protocol.js';
import { dataRuns, type MemoryRange } from '../memory/snapshot.js';
import { guestMemoryRegions } from '../arch/x86_64/layout.js';
import { parseJsonText, StateFormatError } from '../snapshot/codec.js';
import { parseSnapshotState, snapshotStateOf, snapshotStateToJson, type SnapshotState } from './snapshot.js';
import { hotplugRegionSize, validateVmConfig, type VmConfig } from './config.js';
import type { VirtualMachine } from './vm.js';

const CONFIG_FORMAT = 'stratovisor-migration-config';
const CONFIG_VERSION = 1;
/** Upper bounds on what a peer may make the receiver read into memory at once. */
const MAX_CONFIG_BYTES = 16 << 20;
const MAX_STATE_BYTES = 64 << 20;
const MAX_RANGES = 1 << 20;
/** Guest RAM moves in chunks of this size (a view over guest RAM on the way out, a buffer in). */
const CHUNK = 4 << 20;

function describe(a: MigrationAddress): string {
  return a.kind === 'unix' ? `unix:${a.path}` : `tcp:${a.host}:${a.port}`;
}

function connect(a: MigrationAddress, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = a.kind === 'unix' ? net.connect(a.path) : net.connect(a.port, a.host);
    const timer = setTimeout(() => { s.destroy(); reject(new MigrationError(`cannot connect to ${describe(a)}: no answer within ${timeoutMs / 1000} s`)); }, timeoutMs);
    s.once('connect', () => { clearTimeout(timer); s.setNoDelay(true); resolve(s); });
    s.once('error', (e) => { clearTimeout(timer); reject(new MigrationError(`cannot connect to ${describe(a)}: ${e.message}`)); });
  });
}

/** Send a request and wait for its response: Ok, or a MigrationError with the receiver's reason. */
async function request(ch: MigrationChannel, command: number, payload: Uint8Array | null, arg = 0): Promise<void> {
  await ch.write(encodeHeader(command, payload?.length ?? 0, arg));
  if (payload && payload.length) await ch.write(payload);
  await response(ch, CommandName[command] ?? String(command));
}

async function response(ch: MigrationChannel, what: string): Promise<void> {
  const h = await ch.readHeader();
  if (h.length > MAX_CONFIG_BYTES) throw new MigrationError(`${ch.peer}: the answer to ${what} says ${h.length} bytes follow`);
  const body = await ch.read(h.length);
  if (h.code === Status.Ok) return;
  const why = body.length ? body.toString('utf8') : 'no reason given';
  throw new MigrationError(h.code === Status.Error ? `the destination refused ${what}: ${why}` : `${ch.peer}: answer ${h.code} to ${what} is not a status`);
}

export interface SendResult {
  memoryBytes: number;
  stateBytes: number;
  /** ms from the pause to the destination's answer to Complete. */
  downtimeMs: number;
  totalMs: number;
}

/**
 * Migrate `vm` (Running or Paused) to the receiver at `to`. Resolves once the destination has
 * the VM (the caller then stops the source); rejects with the source as it was.
 */
export async function sendMigration(vm: VirtualMachine, to: MigrationAddress, log: (m: string) => void = () => {}): Promise<SendResult> {
  const t0 = performance.now();
  const ch = new MigrationChannel(await connect(to, 10_000), describe(to));
  const wasRunning = vm.state === 'Running';
  let paused = false;
  let completed = false;
  try {
    await request(ch, Command.Start, null, PROTOCOL_VERSION);
    const config = new TextEncoder().encode(JSON.stringify({ format: CONFIG_FORMAT, version: CONFIG_VERSION, config: vm.config }));
    await request(ch, Command.Config, config);
    const tPause = performance.now();
    if (wasRunning) { await vm.pause(); paused = true; }
    const parts = await vm.collectState('migrate');
    // Guest RAM: the same runs a snapshot writes, as one Memory message.
    const ranges: MemoryRangeEntry[] = [];
    const fileRanges: MemoryRange[] = [];
    const runs: Array<{ host: bigint; length: number }> = [];
    let fileOffset = 0;
    for (const r of parts.mem.regions) {
      fileRanges.push({ gpa: r.gpa, length: r.size, fileOffset });
      fileOffset += r.size;
      for (const [a, b] of dataRuns(r)) {
        ranges.push({ gpa: r.gpa + a, length: b - a });
        runs.push({ host: r.hostAddress + BigInt(a), length: b - a });
      }
    }
    const table = encodeRangeTable(ranges);
    await ch.write(encodeHeader(Command.Memory, table.length));
    await ch.write(table);
    let memoryBytes = 0;
    for (const run of runs) {
      for (let off = 0; off < run.length; off += CHUNK) {
        const n = Math.min(CHUNK, run.length - off);
        // The VM is paused: the pages do not change while the socket holds the view.
        await ch.write(new Uint8Array(libc.view(run.host + BigInt(off), n)));
        memoryBytes += n;
      }
    }
    await response(ch, 'Memory');
    const stateBytes = new TextEncoder().encode(JSON.stringify(snapshotStateToJson(snapshotStateOf(parts, fileRanges))));
    await request(ch, Command.State, stateBytes);
    await request(ch, wasRunning ? Command.Complete : Command.CompletePaused, null);
    completed = true;
    const t1 = performance.now();
    log(`migration to ${describe(to)}: ${memoryBytes} bytes of guest RAM in ${ranges.length} range(s), ${stateBytes.length} bytes of state; ${(t1 - tPause).toFixed(0)} ms paused`);
    return { memoryBytes, stateBytes: stateBytes.length, downtimeMs: t1 - tPause, totalMs: t1 - t0 };
  } catch (e) {
    if (!completed) {
      // Best effort: tell the destination, then give the source back its guest.
      try { await Promise.race([ch.write(encodeHeader(Command.Abandon, 0)), new Promise((r) => setTimeout(r, 1000))]); } catch { /* gone */ }
      if (paused && vm.state === 'Paused') {
        try { await vm.resume(); } catch (r) { log(`migration failed and the source could not be resumed: ${(r as Error).message}`); }
      }
    }
    throw e instanceof MigrationError ? e : new MigrationError(`migration to ${describe(to)} failed: ${(e as Error).message}`);
  } finally {
    ch.close();
  }
}

/** What the receiver builds the VM with (VmmCore: a VirtualMachine with its listeners). */
export interface ReceiveHooks {
  build(config: VmConfig): VirtualMachine;
  log?: (m: string) => void;
}

export interface Received {
  vm: VirtualMachine;
  config: VmConfig;
  running: boolean;
}

/** Listen at `at`, take one connection, and build the VM it brings. */
export async function receiveMigration(at: MigrationAddress, hooks: ReceiveHooks): Promise<Received> {
  if (at.kind === 'unix' && existsSync(at.path)) throw new MigrationError(`receiver_url unix:${at.path}: the path exists already`);
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new MigrationError(`cannot listen on ${describe(at)}: ${e.message}`)));
    if (at.kind === 'unix') server.listen(at.path, () => resolve());
    else server.listen(at.port, at.host, () => resolve());
  });
  hooks.log?.(`waiting for a migration on ${describe(at)}`);
  const socket = await new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  server.close();
  const ch = new MigrationChannel(socket, `the migration sender on ${describe(at)}`);
  let memfd = -1;
  try {
    return await serveReceiver(ch, hooks, (fd) => { memfd = fd; });
  } finally {
    if (memfd >= 0) libc.close(memfd);
    ch.close();
  }
}

async function answer(ch: MigrationChannel, ok: boolean, reason = ''): Promise<void> {
  const body = new TextEncoder().encode(reason);
  await ch.write(encodeHeader(ok ? Status.Ok : Status.Error, body.length));
  if (body.length) await ch.write(body);
}

async function serveReceiver(ch: MigrationChannel, hooks: ReceiveHooks, ownFd: (fd: number) => void): Promise<Received> {
  type Phase = 'new' | 'started' | 'configured' | 'state';
  let phase: Phase = 'new';
  let config: VmConfig | null = null;
  let state: SnapshotState | null = null;
  let memfd = -1;
  let regions: Array<{ gpa: number; size: number; offset: number }> = [];
  const refuse = async (why: string): Promise<never> => {
    try { await answer(ch, false, why); } catch { /* the sender is gone */ }
    throw new MigrationError(why);
  };
  for (;;) {
    const h = await ch.readHeader();
    const name = CommandName[h.code] ?? `command ${h.code}`;
    const expect = (p: Phase) => (phase === p ? Promise.resolve() : refuse(`${name} is out of order (after ${phase === 'new' ? 'nothing' : phase})`));
    switch (h.code) {
      case Command.Start:
        await expect('new');
        if (h.length !== 0) await refuse('Start carries no payload');
        if (h.arg !== PROTOCOL_VERSION) await refuse(`migration protocol version ${h.arg} is not supported (this side speaks ${PROTOCOL_VERSION})`);
        phase = 'started';
        await answer(ch, true);
        break;
      case Command.Config: {
        await expect('started');
        if (h.length > MAX_CONFIG_BYTES) await refuse(`Config of ${h.length} bytes is more than ${MAX_CONFIG_BYTES}`);
        const text = (await ch.read(h.length)).toString('utf8');
        let doc: unknown;
        try { doc = parseJsonText(text, 'migration config'); } catch (e) { await refuse((e as Error).message); }
        const d = doc as { format?: unknown; version?: unknown; config?: unknown };
        if (typeof doc !== 'object' || doc === null || d.format !== CONFIG_FORMAT) await refuse(`Config is not a ${CONFIG_FORMAT} document`);
        if (d.version !== CONFIG_VERSION) await refuse(`Config version ${String(d.version)} is not supported (expected ${CONFIG_VERSION})`);
        if (typeof d.config !== 'object' || d.config === null || Array.isArray(d.config)) await refuse('Config has no VmConfig object');
        const issues = validateVmConfig(d.config as VmConfig);
        if (issues.length) await refuse(`Config: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
        config = d.config as VmConfig;
        if ((config.net ?? []).some((n) => (n.fds ?? []).length > 0)) await refuse('the VM has a NIC on tap fds of the source VMM; migrating it needs net_fds, which are not supported yet');
        // Guest RAM arrives into a memfd laid out as a snapshot's memory-ranges (region after region).
        let offset = 0;
        regions = guestMemoryRegions(config.memory.size, hotplugRegionSize(config.memory)).map((r) => { const x = { gpa: Number(r.gpa), size: r.size, offset }; offset += r.size; return x; });
        memfd = libc.memfdCreate('stratovisor-migration-ram', libc.MFD_CLOEXEC);
        ownFd(memfd);
        libc.ftruncate(memfd, offset);
        phase = 'configured';
        await answer(ch, true);
        break;
      }
      case Command.Memory: {
        await expect('configured');
        if (h.length > MAX_RANGES * 16) await refuse(`a Memory table of ${h.length} bytes is more than ${MAX_RANGES} ranges`);
        let table: MemoryRangeEntry[] = [];
        const regionOf = (gpa: number, length: number) => regions.find((r) => gpa >= r.gpa && gpa + length <= r.gpa + r.size);
        try { table = decodeRangeTable(await ch.read(h.length), (g, l) => regionOf(g, l) !== undefined); } catch (e) { await refuse((e as Error).message); }
        for (const r of table) {
          const reg = regionOf(r.gpa, r.length)!;
          for (let off = 0; off < r.length; off += CHUNK) {
            const n = Math.min(CHUNK, r.length - off);
            const data = await ch.read(n);
            writeSync(memfd, data, 0, n, reg.offset + (r.gpa - reg.gpa) + off);
          }
        }
        await answer(ch, true);
        break;
      }
      case Command.State: {
        await expect('configured');
        if (h.length > MAX_STATE_BYTES) await refuse(`State of ${h.length} bytes is more than ${MAX_STATE_BYTES}`);
        try {
          state = parseSnapshotState((await ch.read(h.length)).toString('utf8'));
        } catch (e) {
          await refuse(e instanceof StateFormatError ? e.message : `State: ${(e as Error).message}`);
        }
        phase = 'state';
        await answer(ch, true);
        break;
      }
      case Command.Complete:
      case Command.CompletePaused: {
        await expect('state');
        const vm = hooks.build(config!);
        try {
          await vm.restore({ state: state!, memoryFile: `/proc/self/fd/${memfd}`, memory: config!.memory.shared === true ? 'copy' : 'map' });
          if (h.code === Command.Complete) await vm.resume();
        } catch (e) {
          if (vm.state === 'Paused' || vm.state === 'Running') await vm.shutdown().catch(() => undefined);
          vm.close();
          await refuse(`the VM could not be restored: ${(e as Error).message}`);
        }
        await answer(ch, true);
        return { vm, config: config!, running: h.code === Command.Complete };
      }
      case Command.Abandon:
        await answer(ch, true).catch(() => undefined);
        throw new MigrationError('the sender abandoned the migration');
      default:
        await refuse(`${name} is not supported`);
    }
  }
}
