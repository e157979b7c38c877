import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as libc from './libc.js';

test('SysError names the call, the code and errno', () => {
  assert.throws(
    () => libc.ioctl(-1, 0xae01, 0, 'KVM_CREATE_VM'),
    (e: unknown) => e instanceof libc.SysError && e.call === 'ioctl(KVM_CREATE_VM)' && e.errno === libc.EBADF &&
      e.code === 'EBADF' && e.message === 'ioctl(KVM_CREATE_VM) failed: EBADF (9)',
  );
  assert.throws(() => libc.open('/nonexistent/x', libc.O_RDONLY), /open\(\/nonexistent\/x\) failed: ENOENT \(2\)/);
});

test('eventfd read/write and poll', () => {
  const fd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  try {
    const fds = libc.pollFds(1);
    libc.pollFdSet(fds, 0, fd, libc.POLLIN);
    assert.equal(libc.poll(fds, 0), 0);
    const buf = new Uint8Array(8);
    assert.throws(() => libc.read(fd, buf), (e: unknown) => e instanceof libc.SysError && e.errno === libc.EAGAIN);
    new DataView(buf.buffer).setBigUint64(0, 3n, true);
    assert.equal(libc.write(fd, buf), 8);
    assert.equal(libc.poll(fds, 0), 1);
    assert.equal(libc.pollRevents(fds, 0) & libc.POLLIN, libc.POLLIN);
    buf.fill(0);
    assert.equal(libc.read(fd, buf), 8);
    assert.equal(new DataView(buf.buffer).getBigUint64(0, true), 3n);
  } finally {
    libc.close(fd);
  }
});

test('mmap anonymous memory, view it, madvise, munmap', () => {
  const len = 2 * 4096;
  const addr = libc.mmap(len, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0);
  assert.equal(typeof addr, 'bigint');
  assert.equal(addr % 4096n, 0n);
  const u8 = new Uint8Array(libc.view(addr, len));
  u8[4097] = 42;
  assert.equal(new Uint8Array(libc.view(addr + 4096n, 4))[1], 42);
  libc.madvise(addr, len, libc.MADV_DONTNEED);
  assert.equal(new Uint8Array(libc.view(addr, len))[4097], 0);
  libc.munmap(addr, len);
  assert.throws(() => libc.mmap(4096, libc.PROT_READ, libc.MAP_SHARED, -1, 0), /mmap failed: EBADF/);
});

test('memory mapped by a worker thread is visible through view() here', async () => {
  const url = new URL('./libc.js', import.meta.url).href;
  const code = `
    const { parentPort } = require('node:worker_threads');
    import(${JSON.stringify(url)}).then((libc) => {
      const addr = libc.mmap(4096, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_ANONYMOUS, -1, 0);
      new Uint8Array(libc.view(addr, 4096))[7] = 99;
      parentPort.postMessage({ addr, tid: libc.gettid() });
    });`;
  const w = new Worker(code, { eval: true });
  const msg = await new Promise<{ addr: bigint; tid: number }>((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
  await w.terminate();
  assert.equal(new Uint8Array(libc.view(msg.addr, 4096))[7], 99);
  assert.notEqual(msg.tid, libc.gettid());
  libc.munmap(msg.addr, 4096);
});

test('sigset helpers and sigtimedwait with nothing pending', () => {
  const set = libc.sigsetEmpty();
  libc.sigsetAdd(set, libc.SIGRTMIN + 6);
  assert.ok(libc.sigsetHas(set, libc.SIGRTMIN + 6));
  libc.pthreadSigmask(libc.SIG_BLOCK, set, null);
  assert.equal(libc.sigtimedwaitNow(set), 0);
  libc.tgkill(libc.getpid(), libc.gettid(), libc.SIGRTMIN + 6);
  assert.equal(libc.sigtimedwaitNow(set), libc.SIGRTMIN + 6);
  libc.pthreadSigmask(libc.SIG_UNBLOCK, set, null);
  libc.sigsetDel(set, libc.SIGRTMIN + 6);
  assert.ok(!libc.sigsetHas(set, libc.SIGRTMIN + 6));
});
