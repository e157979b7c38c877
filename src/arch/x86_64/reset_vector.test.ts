// The reset-vector stub really asks for a reset: run it in real mode from F000:FFF0 on this
// host's KVM (a tiny guest) and see the i8042 pulse-reset command on port 0x64.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../memory/guest_memory.js';
import { RESET_VECTOR, RESET_VECTOR_STUB, writeResetVectorStub } from './reset_vector.js';
import { createTinyGuest, kvmUnavailable } from '../../hypervisor/kvm/testguest.js';
import { VmExitKind } from '../../hypervisor/hypervisor.js';

test('the stub is written at 0xffff0', () => {
  const mem = GuestMemory.fromBuffers([{ gpa: 0, buffer: new ArrayBuffer(2 << 20) }]);
  writeResetVectorStub(mem);
  assert.deepEqual(Array.from(mem.slice(RESET_VECTOR, RESET_VECTOR_STUB.length)), RESET_VECTOR_STUB);
});

test('executed from F000:FFF0 in real mode, it writes 0xfe to port 0x64', (t) => {
  const why = kvmUnavailable();
  if (why) return t.skip(why);
  const g = createTinyGuest(2 << 20);
  try {
    g.mem.set(RESET_VECTOR_STUB, RESET_VECTOR);
    const s = g.vcpu.getSregs();
    for (const seg of [s.ds, s.es, s.fs, s.gs, s.ss]) { seg.base = 0n; seg.selector = 0; }
    s.cs.base = 0xf0000n; s.cs.selector = 0xf000;
    g.vcpu.setSregs(s);
    const r = g.vcpu.getRegs();
    r.rip = 0xfff0n; r.rflags = 2n;
    g.vcpu.setRegs(r);
    const kind = g.vcpu.run();
    assert.equal(kind, VmExitKind.IoOut);
    assert.equal(g.vcpu.exit.port, 0x64);
    assert.equal(g.vcpu.exit.size, 1);
    assert.equal(g.vcpu.exit.data[0], 0xfe);
  } finally {
    g.close();
  }
});
