// `stratovisor console --listen HOST:PORT [--api-socket PATH]… [--dir DIR]`: the web console
// (src/console/server.ts). Prints the URL with the access token in its fragment, serves until
// SIGINT/SIGTERM.
import { ConsoleServer, type ConsoleServerOptions } from '../console/server.js';
import { CliError } from './args.js';

export const CONSOLE_USAGE = [
  'Usage: stratovisor console [--listen HOST:PORT] [--api-socket PATH]... [--dir DIR]',
  '',
  'A web page over the VMs behind the given API sockets (and the *.sock API sockets in DIR):',
  'state, config, counters, lifecycle buttons, booting a VM on an idle VMM, serial consoles',
  '(VMMs started with --serial socket=PATH). Listens on 127.0.0.1:7480 by default; prints the',
  'URL with a random access token in its fragment.',
  '',
].join('\n');

export interface ConsoleArgs {
  host: string;
  port: number;
  apiSockets: string[];
  dir?: string;
}

export function parseConsoleArgs(argv: string[]): ConsoleArgs | 'help' {
  const out: ConsoleArgs = { host: '127.0.0.1', port: 7480, apiSockets: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    const flag = a.startsWith('--') && eq > 0 ? a.slice(0, eq) : a;
    const value = (): string => {
      const v = a.startsWith('--') && eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined || v === '') throw new CliError(`console: ${flag} requires a value`, flag);
      return v;
    };
    switch (flag) {
      case '-h': case '--help': return 'help';
      case '--listen': {
        const v = value();
        const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]+)):(\d{1,5})$/.exec(v);
        const port = m ? Number(m[3]) : NaN;
        if (!m || port > 65535) throw new CliError(`console: --listen must be HOST:PORT (e.g. 127.0.0.1:7480), got "${v}"`, flag);
        out.host = (m[1] ?? m[2])!;
        out.port = port;
        break;
      }
      case '--api-socket': {
        const v = value();
        out.apiSockets.push(v.startsWith('path=') ? v.slice(5) : v);
        break;
      }
      case '--dir': out.dir = value(); break;
      default: throw new CliError(`console: unknown argument "${a}"`, a);
    }
  }
  if (out.apiSockets.length === 0 && out.dir === undefined) throw new CliError('console: give at least one --api-socket PATH or --dir DIR', '--api-socket');
  return out;
}

export async function runConsole(argv: string[]): Promise<number> {
  const a = parseConsoleArgs(argv);
  if (a === 'help') {
    process.stdout.write(CONSOLE_USAGE);
    return 0;
  }
  const opts: ConsoleServerOptions = {
    host: a.host, port: a.port, apiSockets: a.apiSockets,
    log: (m) => process.stderr.write(`stratovisor console: ${m}\n`),
  };
  if (a.dir !== undefined) opts.dir = a.dir;
  const server = new ConsoleServer(opts);
  let url: string;
  try {
    url = await server.listen();
  } catch (e) {
    throw new Error(`console: cannot listen on ${a.host}:${a.port}: ${(e as Error).message}`);
  }
  process.stdout.write(`stratovisor console: open ${url}\n`);
  await new Promise<void>((resolve) => {
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(s, () => resolve());
  });
  await server.close();
  return 0;
}
