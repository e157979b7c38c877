// Clean teardown: booting and powering off a guest in-process leaves no file descriptors,
// threads or guest-memory mappings behind. The first cycle warms up what a process loads once
// (koffi, libuv's thread pool); the second must end exactly where the first ended.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { guestImages } from './lib/guest.js';
import { Stratovisor, type VmExitInfo } from '../../src/index.js';

const img = guestImages();
const MEM = 256 * 1024 * 1024;

interface Snapshot { fds: string[]; threads: number; guestMappings: number }

function snapshot(): Snapshot {
  const fds = readdirSync('/proc/self/fd').map((fd) => {
    try { return `${fd}->${readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').split('\n')[0]}`; } catch { return fd; }
  }).sort();
  const threads = Number(/^Threads:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]);
  // Guest RAM is one shared anonymous mapping of exactly the guest's size.
  const guestMappings = readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(l);
    return m !== null && parseInt(m[2]!, 16) - parseInt(m[1]!, 16) === MEM && /\/dev\/zero|^$/.test(m[3]!);
  }).length;
  return { fds, threads, guestMappings };
}

async function bootAndPowerOff(): Promise<void> {
  const vmm = new Stratovisor();
  const exited = new Promise<VmExitInfo>((r) => vmm.once('exit', r));
  try {
    await vmm.create({
      payload: { kernel: img.bzImage, initramfs: img.initramfs, cmdline: 'console=ttyS0 quiet stv.scenario=boot' },
      cpus: { boot_vcpus: 2, max_vcpus: 2 }, memory: { size: MEM }, serial: { mode: 'Null' }, console: { mode: 'Off' },
    });
    await vmm.boot();
    const during = snapshot();
    assert.equal(during.guestMappings >= 1, true, 'guest RAM is mapped while the guest runs');
    assert.equal((await exited).reason, 'poweroff');
  } finally {
    await vmm.close();
  }
}

test('boot + guest poweroff + close, twice: no fd, thread or guest mapping is left behind', { timeout: 300_000 }, async () => {
  await bootAndPowerOff();
  await new Promise((r) => setTimeout(r, 500)); // let worker threads finish exiting
  const after1 = snapshot();
  await bootAndPowerOff();
  await new Promise((r) => setTimeout(r, 500));
  const after2 = snapshot();
  assert.equal(after2.guestMappings, 0, 'guest RAM unmapped');
  assert.deepEqual(after2.fds, after1.fds, 'same open fds after the second cycle as after the first');
  assert.equal(after2.threads, after1.threads, 'same thread count');
});
