#!/usr/bin/env node
// stratovisor: the command line, with Cloud Hypervisor's syntax (see args.ts).
import { readFileSync } from 'node:fs';
import { parseArgs, CliError, type RunArgs } from './args.js';
import { VirtualMachine } from '../vmm/vm.js';

export const VERSION: string = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

function errorExit(msg: string, code = 1): never {
  process.stderr.write(`stratovisor: error: ${msg}\n`);
  process.exit(code);
}

async function runVm(args: RunArgs): Promise<number> {
  const cfg = args.config;
  if (!cfg) errorExit('no VM to run: give --kernel (waiting for vm.create on --api-socket is not supported yet)');
  const log = (m: string) => { if (args.verbosity > 0) process.stderr.write(`stratovisor: ${m}\n`); };
  if (cfg.console.mode === 'Tty' || cfg.console.mode === 'File') {
    log('virtio-console is not implemented yet: --console is ignored (use --serial tty)');
  }
  const vm = new VirtualMachine(cfg, { log });
  const tty = cfg.serial.mode === 'Tty';
  const stdin = process.stdin;
  const restore = () => { if (tty && stdin.isTTY) stdin.setRawMode(false); };
  try {
    await vm.boot();
  } catch (e) {
    vm.close();
    throw e;
  }
  if (tty) {
    if (stdin.isTTY) stdin.setRawMode(true);
    stdin.on('data', (b: Buffer) => {
      // Bytes the ring cannot take now are dropped, as a UART with a full FIFO would drop them.
      vm.sendInput(b);
    });
    stdin.on('error', () => {});
  }
  const onSignal = () => { void vm.shutdown(); };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', onSignal);
  const info = await vm.exited;
  restore();
  vm.close();
  if (info.reason === 'error') {
    process.stderr.write(`stratovisor: error: ${info.message ?? 'the VM failed'}\n`);
    return 1;
  }
  log(`VM stopped (${info.reason})`);
  return 0;
}

async function main(argv: string[]): Promise<number> {
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
    case 'run':
      return runVm(parsed);
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
