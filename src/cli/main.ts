#!/usr/bin/env node
// stratovisor: the command line, with Cloud Hypervisor's syntax (see args.ts).
import { chooseHypervisor } from '../hypervisor/select.js';
import { readFileSync } from 'node:fs';
import { parseArgs, CliError, type RunArgs } from './args.js';
// The API server (ajv, YAML, the OpenAPI document) loads only when --api-socket asks for it:
// a plain command-line VM starts without it.
import type { ApiServer } from '../api/server.js';
import { VmmCore } from '../vmm/controller.js';
import { EventMonitor, withLifecycleEvents } from '../api/events.js';
import { confineVmm, selfTestForbidden } from './confine.js';

export const VERSION: string = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** -v messages on stderr, stamped with milliseconds since the process started. */
function verboseLog(verbosity: number): (m: string) => void {
  return (m) => { if (verbosity > 0) process.stderr.write(`stratovisor: [${performance.now().toFixed(0)} ms] ${m}\n`); };
}

function errorExit(msg: string, code = 1): never {
  process.stderr.write(`stratovisor: error: ${msg}\n`);
  process.exit(code);
}

/**
 * The VMM, as Cloud Hypervisor runs it (one path for the command line, the API and both):
 * - `--api-socket` without a VM: serve the API and wait for vm.create;
 * - with a VM on the command line: create and boot it (through the same controller the API
 *   uses, so the monitor sees created/booting/booted), and serve the API if asked.
 * The process ends on vmm.shutdown (0), SIGTERM/SIGINT/SIGHUP (0), or, for a VM given on the
 * command line, when its guest powers off (0) or fails (1). A VM created through the API
 * stays in Shutdown after a guest power-off until vmm.shutdown.
 */
async function runVmm(args: RunArgs): Promise<number> {
  const cfg = args.config;
  if (!cfg && !args.restore && args.apiSocket === undefined && args.confine.selfTestForbidden === undefined) errorExit('no VM to run: give --kernel (or --api-socket to wait for vm.create)');
  const log = verboseLog(args.verbosity);
  // Landlock (re-executes the VMM inside its ruleset) and seccomp, before anything listens or runs.
  for (const note of confineVmm(args)) log(note);
  if (args.confine.selfTestForbidden !== undefined) {
    await selfTestForbidden(args.confine.selfTestForbidden);
    return 0;
  }
  const monitor = new EventMonitor(args.eventMonitor);
  try {
    await monitor.ready();
  } catch (e) {
    throw new Error(`--event-monitor: cannot open ${'path' in args.eventMonitor! ? args.eventMonitor.path : `fd ${args.eventMonitor!.fd}`}: ${(e as Error).message}`);
  }
  monitor.on('write-error', (e) => process.stderr.write(`stratovisor: event monitor: ${e.message}\n`));
  monitor.emitEvent('vmm', 'starting');
  const hypervisorKind = chooseHypervisor(args.hypervisor ?? 'auto');
  const core = new VmmCore({ vm: { log, hypervisorKind }, monitor, log: (m) => process.stderr.write(`stratovisor: ${m}\n`) });
  const controller = withLifecycleEvents(core, monitor);

  // Host input goes to the guest's serial port when serial is tty (the terminal raw, as CH does);
  // otherwise to virtio-console when that is tty (its I/O thread reads fd 0 itself).
  const stdin = process.stdin;
  let stdinAttached = false;
  let rawSet = false;
  core.on('vm-booted', (vm) => {
    const serialTty = vm.config.serial.mode === 'Tty';
    if ((!serialTty && vm.config.console.mode !== 'Tty') || stdinAttached) return;
    stdinAttached = true;
    try {
      if (stdin.isTTY) {
        stdin.setRawMode(true);
        rawSet = true;
      }
    } catch (e) {
      // The guest runs whatever the terminal does: say why input stays cooked.
      process.stderr.write(`stratovisor: warning: cannot put the terminal in raw mode: ${(e as Error).message}\n`);
    }
    if (!serialTty) return;
    // Bytes the ring cannot take now are dropped, as a UART with a full FIFO would drop them.
    stdin.on('data', (b: Buffer) => { core.sendInput(b); });
    stdin.on('error', () => {});
  });

  let server: ApiServer | undefined;

  let exiting = false;
  let finished: (code: number) => void = () => {};
  const done = new Promise<number>((r) => { finished = r; });
  const exit = async (code: number, viaApi: boolean): Promise<void> => {
    if (exiting) return;
    exiting = true;
    try {
      // vmm.shutdown has already stopped the VM and reported it.
      if (!viaApi) {
        await core.shutdownVmm();
        monitor.emitEvent('vmm', 'shutdown');
      }
    } catch (e) {
      process.stderr.write(`stratovisor: error: stopping the VM: ${(e as Error).message}\n`);
      code = 1;
    }
    await server?.close();
    if (rawSet && stdin.isTTY) stdin.setRawMode(false);
    await monitor.close();
    finished(code);
  };
  // Signal handlers go in before the socket answers: a client may signal as soon as ping works.
  const onSignal = () => { void exit(0, false); };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', onSignal);
  if (args.apiSocket !== undefined) {
    const { ApiServer } = await import('../api/server.js');
    server = await ApiServer.listen({ controller, socket: args.apiSocket, log, errorLog: (m) => process.stderr.write(`stratovisor: error: ${m}\n`) });
    server.on('vmm-shutdown', () => { void exit(0, true); });
    server.on('vm-migrated', () => { log('the VM was migrated away: exiting'); void exit(0, true); });
    log(`API listening on ${'path' in args.apiSocket ? args.apiSocket.path : `fd ${args.apiSocket.fd}`}`);
  }

  if (cfg || args.restore) {
    // CH: a VM given on the command line ends the VMM when the guest stops.
    core.on('guest-exit', (info) => {
      if (info.reason === 'error') process.stderr.write(`stratovisor: error: ${info.message ?? 'the VM failed'}\n`);
      else log('VM stopped (poweroff)');
      void exit(info.reason === 'error' ? 1 : 0, false);
    });
    try {
      if (args.restore) {
        if (controller.restoreVm === undefined) throw new Error('--restore: not supported by this controller');
        await controller.restoreVm(args.restore);
        if (args.restore.resume !== true) process.stderr.write(`stratovisor: restored from ${args.restore.source_url}; the VM is paused (vm.resume, or --restore …,resume=on)\n`);
      } else {
        await controller.createVm(cfg!);
        await controller.bootVm();
      }
    } catch (e) {
      await server?.close();
      await monitor.close();
      throw e;
    }
  }
  return done;
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'console') {
    const { runConsole } = await import('./console.js');
    return runConsole(argv.slice(1));
  }
  const parsed = parseArgs(argv);
  switch (parsed.kind) {
    case 'version':
      process.stdout.write(`stratovisor v${VERSION}\n`);
      return 0;
    case 'help':
      process.stdout.write(parsed.text);
      return 0;
    case 'remote': {
      const { runRemote } = await import('./remote.js');
      return runRemote(argv.slice(argv.indexOf('remote') + 1));
    }
    case 'jail': {
      const { runJail } = await import('./jail.js');
      return runJail(parsed.argv);
    }
    case 'run':
      return runVmm(parsed);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof CliError) errorExit(e.message, 1);
    const verbose = process.argv.includes('-vv') || process.argv.filter((a) => a === '-v').length > 1;
    errorExit(e instanceof Error ? (verbose && e.stack ? e.stack : e.message) : String(e));
  },
);
