// Test helpers: an ApiServer with the in-memory controller on a socket in os.tmpdir(),
// and a raw HTTP client over the socket.

import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VmmController } from './controller.js';
import { MemoryController } from './memory_controller.fixture.js';
import { ApiServer, type ApiServerOptions } from './server.js';

export interface TestServer {
  server: ApiServer;
  controller: MemoryController;
  socketPath: string;
  dir: string;
  close(): Promise<void>;
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'stratovisor-api-test-'));
}

export async function startTestServer(
  opts: Partial<ApiServerOptions> & { wrap?: (c: MemoryController) => VmmController } = {},
): Promise<TestServer> {
  const dir = tempDir();
  const socketPath = join(dir, 'api.sock');
  const controller = new MemoryController();
  const { wrap, ...rest } = opts;
  const server = await ApiServer.listen({
    socket: { path: socketPath },
    ...rest,
    controller: wrap ? wrap(controller) : controller,
  });
  return {
    server,
    controller,
    socketPath,
    dir,
    async close() {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  /** Parsed JSON body, or undefined. */
  json: unknown;
}

/** One request; `path` is relative to /api/v1 unless it starts with "//". */
export function request(socketPath: string, method: string, path: string, body?: string | Buffer, headers: Record<string, string | number> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string | number> = { ...headers };
    if (body !== undefined && h['Content-Length'] === undefined && h['Transfer-Encoding'] === undefined) h['Content-Length'] = Buffer.byteLength(body);
    const fullPath = path.startsWith('//') ? path.slice(1) : `/api/v1/${path}`;
    const req = http.request({ socketPath, method, path: fullPath, headers: h, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = text === '' ? undefined : JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

export const MINIMAL_VM = { payload: { kernel: '/boot/vmlinuz' } };

export const FULL_VM = {
  payload: { kernel: '/boot/vmlinuz', cmdline: 'console=ttyS0', initramfs: '/boot/initrd' },
  cpus: { boot_vcpus: 2, max_vcpus: 2 },
  memory: { size: 256 * 1024 * 1024, shared: true },
  disks: [{ path: '/tmp/disk.raw', readonly: true, id: 'disk0' }],
  net: [{ tap: 'tap0', mac: '12:34:56:78:9a:bc' }],
  rng: { src: '/dev/urandom' },
  serial: { mode: 'Tty' },
  console: { mode: 'Off' },
};
