// The ioeventfd request as both backends encode it: KVM's `struct kvm_ioeventfd` (KVM API doc,
// KVM_IOEVENTFD) and MSHV's `struct mshv_user_ioeventfd` share their fields and rules — an
// address (a port is 0..0xffff), a length of 0, 1, 2, 4 or 8 (the datamatch's when there is one),
// the eventfd and a flag word; only the flag bits and the struct sizes differ.
import type { IoEventAddress, IoEventOptions } from './hypervisor.js';

/** Byte offsets of the shared fields (from each backend's abi.ts). */
export interface IoeventfdLayout {
  readonly datamatch: number;
  readonly addr: number;
  readonly len: number;
  readonly fd: number;
  readonly flags: number;
}

/** The backend's flag values. */
export interface IoeventfdFlags {
  readonly deassign: number;
  readonly pio: number;
  readonly datamatch: number;
}

/** Fill `buf` (zeroed first) with the request; returns the length written, for messages. */
export function encodeIoeventfd(
  buf: Uint8Array, dv: DataView, o: IoeventfdLayout, f: IoeventfdFlags,
  fd: number, addr: IoEventAddress, opts: IoEventOptions | undefined, deassign: boolean,
): number {
  buf.fill(0);
  let flags = deassign ? f.deassign : 0;
  if (addr.space === 'pio') {
    if (!Number.isInteger(addr.addr) || addr.addr < 0 || addr.addr > 0xffff) throw new RangeError(`ioeventfd: port ${addr.addr} is not 0..0xffff`);
    flags |= f.pio;
  }
  let len: number = opts?.len ?? 0;
  const dm = opts?.datamatch;
  if (dm !== undefined && dm !== null) {
    flags |= f.datamatch;
    len = dm.len;
    dv.setBigUint64(o.datamatch, BigInt.asUintN(64, BigInt(dm.value)), true);
  }
  if (![0, 1, 2, 4, 8].includes(len)) throw new RangeError(`ioeventfd: length ${len} is not 0, 1, 2, 4 or 8`);
  dv.setBigUint64(o.addr, BigInt(addr.addr), true);
  dv.setUint32(o.len, len, true);
  dv.setInt32(o.fd, fd, true);
  dv.setUint32(o.flags, flags, true);
  return len;
}
