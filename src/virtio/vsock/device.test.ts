// virtio-vsock (virtio 1.2, 5.10) and its hybrid Unix-socket backend, driven by the test driver
// with real Unix sockets on the host side.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as libc from '../../sys/libc.js';
import { VirtioDeviceType } from '../device.js';
import { VirtqueueError } from '../queue.js';
import { DEFAULT_BUF_ALLOC, VsockDevice, parseConnectLine } from './device.js';
import { Op, VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE, VIRTIO_VSOCK_SHUTDOWN_F_SEND, VMADDR_CID_HOST } from './packet.js';
import { GUEST_CID, VsockRig, readNow, writeSome, type Packet } from './harness.fixture.js';

const GUEST_BUF = 256 * 1024;

/** Host client speaks CONNECT; the guest accepts. Returns the client fd and the connection's ports. */
function hostConnect(r: VsockRig, guestPort: number): { fd: number; local: number } {
  const fd = r.client();
  writeSome(fd, Buffer.from(`CONNECT ${guestPort}\n`));
  r.postRx(8);
  r.pump();
  const req = r.received();
  assert.equal(req.length, 1, 'one OP_REQUEST');
  const p = req[0]!;
  assert.equal(p.op, Op.REQUEST);
  assert.equal(p.srcCid, BigInt(VMADDR_CID_HOST));
  assert.equal(p.dstCid, BigInt(GUEST_CID));
  assert.equal(p.dstPort, guestPort);
  assert.ok(p.srcPort >= 1 << 30, 'an ephemeral host port');
  assert.equal(p.bufAlloc, DEFAULT_BUF_ALLOC);
  r.send({ op: Op.RESPONSE, srcPort: guestPort, dstPort: p.srcPort, bufAlloc: GUEST_BUF });
  r.pump();
  const ok = readNow(fd);
  assert.equal(ok.data.toString(), `OK ${p.srcPort}\n`);
  return { fd, local: p.srcPort };
}

/** Deliver everything readable from the host as RW packets (posting buffers as needed). */
function drainToGuest(r: VsockRig, rounds = 50): Packet[] {
  const all: Packet[] = [];
  for (let i = 0; i < rounds; i++) {
    r.postRx(16);
    r.pump();
    const got = r.received();
    if (got.length === 0) break;
    all.push(...got);
  }
  return all;
}

test('device identity and configuration (5.10.1, 5.10.4)', () => {
  const r = new VsockRig();
  try {
    assert.equal(r.dev.deviceType, VirtioDeviceType.Vsock);
    assert.equal(r.dev.numQueues, 3);
    const cfg = new Uint8Array(8);
    r.dev.readConfig(0, cfg);
    assert.equal(new DataView(cfg.buffer).getBigUint64(0, true), BigInt(GUEST_CID));
    const hi = new Uint8Array(4).fill(0xff);
    r.dev.readConfig(4, hi);
    assert.deepEqual([...hi], [0, 0, 0, 0]);
  } finally {
    r.close();
  }
  assert.throws(() => new VsockDevice({ cid: 2, listenFd: -1, socketPath: '/x' }), /cid 2/);
});

test('host-initiated: CONNECT, OK <port>, data both ways, half-close and close', () => {
  const r = new VsockRig();
  try {
    const { fd, local } = hostConnect(r, 1234);
    // host -> guest
    const up = randomBytes(100_000);
    assert.equal(writeSome(fd, up), up.length);
    const pk = drainToGuest(r);
    assert.ok(pk.every((p) => p.op === Op.RW && p.srcPort === local && p.dstPort === 1234));
    assert.deepEqual(Buffer.concat(pk.map((p) => p.payload)), up);
    // guest -> host
    const down = randomBytes(60_000);
    for (let o = 0; o < down.length; o += 4096) r.send({ op: Op.RW, srcPort: 1234, dstPort: local, payload: down.subarray(o, o + 4096), bufAlloc: GUEST_BUF, fwdCnt: up.length });
    r.pump();
    assert.deepEqual(readNow(fd).data, down);
    // Host half-close: SHUTDOWN(SEND) to the guest; the guest can still send.
    libc.shutdownRaw(fd, libc.SHUT_WR);
    const sh = drainToGuest(r);
    assert.equal(sh.length, 1);
    assert.equal(sh[0]!.op, Op.SHUTDOWN);
    assert.equal(sh[0]!.flags, VIRTIO_VSOCK_SHUTDOWN_F_SEND);
    r.send({ op: Op.RW, srcPort: 1234, dstPort: local, payload: Buffer.from('after'), bufAlloc: GUEST_BUF, fwdCnt: up.length });
    r.pump();
    assert.equal(readNow(fd).data.toString(), 'after');
    // Guest close: SHUTDOWN of both directions -> RST, the host socket sees EOF.
    r.send({ op: Op.SHUTDOWN, srcPort: 1234, dstPort: local, flags: VIRTIO_VSOCK_SHUTDOWN_F_SEND | VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE, bufAlloc: GUEST_BUF });
    const rst = drainToGuest(r);
    assert.deepEqual(rst.map((p) => p.op), [Op.RST]);
    assert.equal(readNow(fd).eof, true);
    assert.equal(r.dev.connectionCount, 0);
  } finally {
    r.close();
  }
});

test('host-initiated: a CONNECT line in pieces; the bytes after its newline reach the guest as data', () => {
  const r = new VsockRig();
  try {
    const fd = r.client();
    writeSome(fd, Buffer.from('CONN'));
    r.postRx(8);
    r.pump();
    assert.equal(r.received().length, 0, 'no request before the newline');
    assert.equal(r.dev.pendingClientCount, 1);
    writeSome(fd, Buffer.from('ECT 77'));
    r.pump();
    writeSome(fd, Buffer.from('\nearly bytes'));
    r.pump();
    const req = r.received();
    assert.deepEqual(req.map((p) => [p.op, p.dstPort]), [[Op.REQUEST, 77]]);
    r.send({ op: Op.RESPONSE, srcPort: 77, dstPort: req[0]!.srcPort, bufAlloc: GUEST_BUF });
    r.pump();
    assert.equal(readNow(fd).data.toString(), `OK ${req[0]!.srcPort}\n`);
    const data = drainToGuest(r).filter((p) => p.op === Op.RW);
    assert.equal(Buffer.concat(data.map((p) => p.payload)).toString(), 'early bytes');
  } finally {
    r.close();
  }
});

test('CONNECT line parser: keyword in any case, optional CR, a u32 port of 1..10 digits', () => {
  const p = (s: string) => { const b = Buffer.from(s, 'latin1'); return parseConnectLine(b, b.length); };
  assert.equal(p('CONNECT 1234'), 1234);
  assert.equal(p('connect 0'), 0);
  assert.equal(p('CoNnEcT 4294967295\r'), 0xffffffff);
  for (const bad of ['CONNECT 4294967296', 'CONNECT ', 'CONNECT', 'CONNECT 12a', 'CONNECT  12', 'CONNECT\t12', 'CONNECT 12345678901', 'KONNECT 1', 'CONNECT -1', 'C0NNECT 1', 'CONNECT 1\r\r', '']) {
    assert.equal(p(bad), -1, JSON.stringify(bad));
  }
});

test('host-initiated: RST from the guest (nobody listens) closes the client; bad clients leave others alone', () => {
  const r = new VsockRig();
  try {
    const early = r.client(); // closes before its CONNECT line
    const garbage = r.client();
    const long = r.client();
    writeSome(garbage, Buffer.from('HELLO 12\n'));
    writeSome(long, Buffer.from('CONNECT ' + '1'.repeat(60)));
    libc.close(early);
    const c = r.client();
    writeSome(c, Buffer.from('connect 4321\r\n'));
    r.postRx(4);
    r.pump();
    const req = r.received();
    assert.deepEqual(req.map((p) => [p.op, p.dstPort]), [[Op.REQUEST, 4321]]);
    for (const fd of [garbage, long]) {
      const g = readNow(fd);
      assert.ok(g.eof || g.errno === libc.ECONNRESET, 'the VMM closed the bad client');
      assert.equal(g.data.length, 0);
    }
    assert.equal(r.dev.pendingClientCount, 0);
    r.send({ op: Op.RST, srcPort: 4321, dstPort: req[0]!.srcPort });
    r.pump();
    const x = readNow(c);
    assert.equal(x.eof, true, 'RST closes the client');
    assert.equal(x.data.length, 0, 'no OK line');
    // A client that closes right after its CONNECT line: the guest's accept gets an RST.
    const quick = r.client();
    writeSome(quick, Buffer.from('CONNECT 1234\n'));
    r.pump();
    libc.close(quick);
    const q = r.received();
    assert.equal(q[0]!.op, Op.REQUEST);
    r.send({ op: Op.RESPONSE, srcPort: 1234, dstPort: q[0]!.srcPort, bufAlloc: GUEST_BUF });
    r.pump();
    const after = drainToGuest(r);
    assert.ok(after.some((p) => p.op === Op.RST || p.op === Op.SHUTDOWN), 'the guest hears the client went away');
    // And a later client still works.
    const { fd } = hostConnect(r, 1234);
    writeSome(fd, Buffer.from('still fine'));
    assert.equal(Buffer.concat(drainToGuest(r).map((p) => p.payload)).toString(), 'still fine');
  } finally {
    r.close();
  }
});

test('guest-initiated: <socket>_<port> accepted -> RESPONSE, data both ways; missing listener -> RST', () => {
  const r = new VsockRig();
  try {
    const lfd = r.listenPort(5678);
    r.postRx(8);
    r.send({ op: Op.REQUEST, srcPort: 40000, dstPort: 5678, bufAlloc: GUEST_BUF });
    const resp = r.received();
    assert.equal(resp.length, 1);
    assert.equal(resp[0]!.op, Op.RESPONSE);
    assert.equal(resp[0]!.srcPort, 5678);
    assert.equal(resp[0]!.dstPort, 40000);
    const peer = r.accept(lfd);
    r.send({ op: Op.RW, srcPort: 40000, dstPort: 5678, payload: Buffer.from('hello host'), bufAlloc: GUEST_BUF });
    assert.equal(readNow(peer).data.toString(), 'hello host');
    writeSome(peer, Buffer.from('hello guest'));
    assert.equal(Buffer.concat(drainToGuest(r).map((p) => p.payload)).toString(), 'hello guest');
    // Nobody on <socket>_9999.
    r.postRx(2);
    r.send({ op: Op.REQUEST, srcPort: 40001, dstPort: 9999, bufAlloc: GUEST_BUF });
    const rst = r.received();
    assert.deepEqual(rst.map((p) => [p.op, p.srcPort, p.dstPort]), [[Op.RST, 9999, 40001]]);
    // Packets for no connection get RST (5.10.6.2); an RST for none gets nothing.
    r.send({ op: Op.RW, srcPort: 1, dstPort: 2, payload: Buffer.from('x') });
    r.send({ op: Op.RST, srcPort: 3, dstPort: 4 });
    assert.deepEqual(r.received().map((p) => [p.op, p.srcPort, p.dstPort]), [[Op.RST, 2, 1]]);
    // CREDIT_REQUEST -> CREDIT_UPDATE with the device's buf_alloc and fwd_cnt.
    r.send({ op: Op.CREDIT_REQUEST, srcPort: 40000, dstPort: 5678, bufAlloc: GUEST_BUF });
    const cu = r.received();
    assert.equal(cu[0]!.op, Op.CREDIT_UPDATE);
    assert.equal(cu[0]!.bufAlloc, DEFAULT_BUF_ALLOC);
    assert.equal(cu[0]!.fwdCnt, 'hello host'.length);
  } finally {
    r.close();
  }
});

test('credit (5.10.6.3): a host peer that does not read stalls the guest at buf_alloc; data beyond the credit is reset', () => {
  const bufAlloc = 64 * 1024;
  const r = new VsockRig({ bufAlloc });
  try {
    const lfd = r.listenPort(7000);
    r.postRx(64);
    r.send({ op: Op.REQUEST, srcPort: 50000, dstPort: 7000, bufAlloc: GUEST_BUF });
    let credit = { bufAlloc: 0, fwdCnt: 0 };
    const take = (ps: Packet[]) => { for (const p of ps) if (p.srcPort === 7000) credit = { bufAlloc: p.bufAlloc, fwdCnt: p.fwdCnt }; };
    take(r.received());
    assert.equal(credit.bufAlloc, bufAlloc);
    const peer = r.accept(lfd);
    // A well-behaved guest: sends while buf_alloc - (tx_cnt - fwd_cnt) allows.
    let txCnt = 0;
    let sent = 0;
    for (let i = 0; i < 5000; i++) {
      const room = credit.bufAlloc - (txCnt - credit.fwdCnt);
      if (room <= 0) break;
      const n = Math.min(room, 4096);
      r.send({ op: Op.RW, srcPort: 50000, dstPort: 7000, payload: new Uint8Array(n).fill(i & 0xff), bufAlloc: GUEST_BUF });
      txCnt += n;
      sent++;
      r.pump();
      take(r.received());
      r.postRx(4);
      assert.ok(r.dev.bufferedBytes <= bufAlloc, `buffered ${r.dev.bufferedBytes} > cap ${bufAlloc}`);
    }
    const room = credit.bufAlloc - (txCnt - credit.fwdCnt);
    assert.equal(room, 0, 'the guest ran out of credit (its TX stalls)');
    assert.ok(r.dev.bufferedBytes > 0 && r.dev.bufferedBytes <= bufAlloc);
    assert.ok(sent < 5000);
    // One byte over the credit: the connection is reset, nothing more buffered.
    r.send({ op: Op.RW, srcPort: 50000, dstPort: 7000, payload: new Uint8Array(1), bufAlloc: GUEST_BUF });
    assert.ok(r.received().some((p) => p.op === Op.RST));
    assert.equal(r.dev.connectionCount, 0);
    assert.equal(r.dev.bufferedBytes, 0);
    void peer;
  } finally {
    r.close();
  }
});

test('credit (5.10.6.3): a host peer that reads late gets everything, CREDIT_UPDATEs reopen the guest, the buffer stays capped', () => {
  const bufAlloc = 32 * 1024;
  const r = new VsockRig({ bufAlloc });
  try {
    const lfd = r.listenPort(7001);
    r.postRx(64);
    r.send({ op: Op.REQUEST, srcPort: 50001, dstPort: 7001, bufAlloc: GUEST_BUF });
    r.received();
    const peer = r.accept(lfd);
    // Fill the socket's kernel buffer first, so the device has to buffer.
    const all: Buffer[] = [];
    let txCnt = 0;
    let fwd = 0;
    let got = Buffer.alloc(0);
    for (let round = 0; round < 400 && got.length < 2 << 20; round++) {
      while (bufAlloc - (txCnt - fwd) > 0) {
        const n = Math.min(bufAlloc - (txCnt - fwd), 4096);
        const b = randomBytes(n);
        all.push(b);
        r.send({ op: Op.RW, srcPort: 50001, dstPort: 7001, payload: b, bufAlloc: GUEST_BUF });
        txCnt += n;
        for (const p of r.received()) fwd = p.fwdCnt;
        r.postRx(2);
      }
      if (round % 8 === 7) got = Buffer.concat([got, readNow(peer).data]); // a slow reader
      r.pump();
      for (const p of r.received()) fwd = p.fwdCnt;
      r.postRx(2);
      assert.ok(r.dev.bufferedBytes <= bufAlloc);
    }
    r.pump();
    got = Buffer.concat([got, readNow(peer).data]);
    r.pump();
    got = Buffer.concat([got, readNow(peer).data]);
    const want = Buffer.concat(all);
    assert.ok(got.length >= 2 << 20, `only ${got.length} bytes arrived`);
    assert.deepEqual(got, want.subarray(0, got.length));
  } finally {
    r.close();
  }
});

test('credit (5.10.6.3): never more than the guest\'s buf_alloc towards the guest', () => {
  const r = new VsockRig();
  try {
    const { fd, local } = hostConnect(r, 1234);
    // The guest shrinks its buffer to 1000 bytes, 0 forwarded.
    r.send({ op: Op.CREDIT_UPDATE, srcPort: 1234, dstPort: local, bufAlloc: 1000, fwdCnt: 0 });
    const data = randomBytes(10_000);
    writeSome(fd, data);
    let got = Buffer.concat(drainToGuest(r).map((p) => p.payload));
    assert.equal(got.length, 1000, 'exactly the guest\'s buf_alloc');
    // The guest consumed 1000: 1000 more.
    r.send({ op: Op.CREDIT_UPDATE, srcPort: 1234, dstPort: local, bufAlloc: 1000, fwdCnt: 1000 });
    got = Buffer.concat([got, ...drainToGuest(r).map((p) => p.payload)]);
    assert.equal(got.length, 2000);
    r.send({ op: Op.CREDIT_UPDATE, srcPort: 1234, dstPort: local, bufAlloc: 1 << 20, fwdCnt: 2000 });
    got = Buffer.concat([got, ...drainToGuest(r).map((p) => p.payload)]);
    assert.deepEqual(got, data);
  } finally {
    r.close();
  }
});

test('malformed packets: short header, wrong CIDs, bad type, oversized len get dropped or RST; receive buffers below a header are a VirtqueueError', () => {
  const r = new VsockRig();
  try {
    r.postRx(8);
    r.tx.addChain([new Uint8Array(20)], []);
    r.dev.processQueue(1);
    r.send({ op: Op.REQUEST, srcCid: 7n, srcPort: 1, dstPort: 2 });
    r.send({ op: Op.REQUEST, dstCid: 9n, srcPort: 1, dstPort: 2 });
    assert.equal(r.received().length, 0, 'dropped');
    r.send({ op: Op.REQUEST, type: 2, srcPort: 1, dstPort: 2 });
    r.send({ op: Op.RW, len: 5000, payload: new Uint8Array(10), srcPort: 3, dstPort: 4 });
    assert.deepEqual(r.received().map((p) => p.op), [Op.RST, Op.RST]);
    assert.ok(r.dev.counters.malformedPackets >= 5);
    const tiny = new VsockRig();
    try {
      tiny.postRx(1, 16);
      assert.throws(() => tiny.send({ op: Op.REQUEST, srcPort: 1, dstPort: 9999 }), VirtqueueError);
    } finally {
      tiny.close();
    }
  } finally {
    r.close();
  }
});

test('connection table and pending clients are bounded', () => {
  const r = new VsockRig({ maxConnections: 2, maxPendingClients: 2 });
  try {
    const lfd = r.listenPort(8000);
    r.postRx(16);
    for (let i = 0; i < 4; i++) r.send({ op: Op.REQUEST, srcPort: 100 + i, dstPort: 8000, bufAlloc: GUEST_BUF });
    assert.deepEqual(r.received().map((p) => p.op), [Op.RESPONSE, Op.RESPONSE, Op.RST, Op.RST]);
    assert.equal(r.dev.connectionCount, 2);
    void lfd;
    const cs = [r.client(), r.client(), r.client()];
    r.pump();
    assert.ok(r.dev.pendingClientCount <= 2);
    writeSome(cs[0]!, Buffer.from('CONNECT 1\n'));
    r.pump();
    const x = readNow(cs[0]!);
    assert.ok(x.eof || x.errno === libc.ECONNRESET, 'no room: the client is closed');
  } finally {
    r.close();
  }
});

test('reset closes every connection and client', () => {
  const r = new VsockRig();
  const { fd } = hostConnect(r, 1234);
  const pending = r.client();
  r.pump();
  r.dev.reset();
  assert.equal(r.dev.connectionCount, 0);
  assert.equal(readNow(fd).eof, true);
  assert.equal(readNow(pending).eof, true);
  assert.deepEqual(r.dev.pollFds(), []);
  r.close();
});

test('receive buffers with room for a header only carry CREDIT_UPDATEs, not a busy loop', () => {
  const r = new VsockRig();
  try {
    const lfd = r.listenPort(5678);
    r.postRx(1);
    r.send({ op: Op.REQUEST, srcPort: 40000, dstPort: 5678, bufAlloc: GUEST_BUF });
    assert.deepEqual(r.received().map((p) => p.op), [Op.RESPONSE]);
    const fd = r.accept(lfd);
    writeSome(fd, Buffer.from('data waiting'));
    r.postRx(3, 44);
    r.pump();
    const got = r.received();
    assert.ok(got.length > 0 && got.every((p) => p.op === Op.CREDIT_UPDATE && p.len === 0));
    assert.equal(Buffer.concat(drainToGuest(r).map((p) => p.payload)).toString(), 'data waiting');
  } finally {
    r.close();
  }
});
