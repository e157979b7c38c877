// Host tap devices for virtio-net (kernel Documentation/networking/tuntap.rst).
//
// A tap is opened once per queue on /dev/net/tun and bound to an interface with TUNSETIFF; with
// IFF_VNET_HDR every frame read or written is preceded by a struct virtio_net_hdr of the size set
// with TUNSETVNETHDRSZ (12 here: virtio 1.x always uses the 12-byte virtio_net_hdr_v1, 5.1.6).
// The host side of the link is configured through ioctls on an ordinary AF_INET socket, the way
// `ip addr add` / `ip link set up` (and Cloud Hypervisor's `--net tap=,ip=,mask=`) do.

import * as libc from '../sys/libc.js';
import { SysError } from '../sys/libc.js';

// ---------------------------------------------------------------------------------------------
// ABI (include/uapi/linux/if_tun.h, if.h, sockios.h; x86-64)

/** `_IOW('T', nr, int)`: dir write (1 << 30), size 4, type 'T' (0x54). */
const tunIow = (nr: number): number => (0x40000000 | (4 << 16) | (0x54 << 8) | nr) >>> 0;

/** if_tun.h ioctls. */
export const TUNSETIFF = tunIow(202);
export const TUNSETOFFLOAD = tunIow(208);
export const TUNSETVNETHDRSZ = tunIow(216);
export const TUNSETQUEUE = tunIow(217);
/** `_IOR('T', 210, unsigned int)`: the interface name and flags of a tun/tap fd. */
export const TUNGETIFF = (0x80000000 | (4 << 16) | (0x54 << 8) | 210) >>> 0;

/** if_tun.h TUNSETIFF / TUNSETQUEUE ifr_flags. */
export const IFF_TUN = 0x0001;
export const IFF_TAP = 0x0002;
export const IFF_MULTI_QUEUE = 0x0100;
export const IFF_ATTACH_QUEUE = 0x0200;
export const IFF_DETACH_QUEUE = 0x0400;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;

/** if_tun.h TUNSETOFFLOAD flags: what the reader of the tap (the guest) can take. */
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const TUN_F_UFO = 0x10;

/** sockios.h interface ioctls (on any socket). */
export const SIOCGIFFLAGS = 0x8913;
export const SIOCSIFFLAGS = 0x8914;
export const SIOCSIFADDR = 0x8916;
export const SIOCSIFNETMASK = 0x891c;
export const SIOCSIFMTU = 0x8922;
export const SIOCSIFHWADDR = 0x8924;

/** if.h net_device_flags. */
export const IFF_UP = 0x1;
export const IFF_RUNNING = 0x40;

/** if_arp.h: sa_family of a hardware address (SIOCSIFHWADDR). */
const ARPHRD_ETHER = 1;

/** if.h IFNAMSIZ: interface names are at most 15 bytes plus NUL. */
export const IFNAMSIZ = 16;
/** sizeof(struct ifreq) on x86-64: char ifr_name[16] + a 24-byte union (struct ifmap is largest). */
export const IFREQ_SIZE = 40;
/** Offsets inside struct ifreq of the union members used here. */
const IFR_FLAGS = 16; // short ifr_flags
const IFR_MTU = 16; // int ifr_mtu
const IFR_ADDR = 16; // struct sockaddr ifr_addr / ifr_netmask / ifr_hwaddr
// struct sockaddr_in inside the union: sin_family (u16, host order), sin_port (be16), sin_addr (be32).
const SIN_FAMILY = IFR_ADDR;
const SIN_ADDR = IFR_ADDR + 4;
// struct sockaddr for a hardware address: sa_family (u16), sa_data[14] (the MAC in its first 6).
const SA_DATA = IFR_ADDR + 2;

/** Size of the virtio_net_hdr that precedes every frame on our taps (virtio 1.x, 5.1.6). */
export const VNET_HDR_SIZE = 12;

const TUN_PATH = '/dev/net/tun';

// ---------------------------------------------------------------------------------------------

export interface TapOpenOptions {
  /** Interface name (an existing tap, or a new one with that name); empty/absent: the kernel picks tapN. */
  name?: string;
  /** Number of queues (fds); more than 1 opens a multi-queue tap (IFF_MULTI_QUEUE). Default 1. */
  queues?: number;
  /** Frames carry a 12-byte virtio_net_hdr (IFF_VNET_HDR). Required. */
  vnetHdr: true;
}

export interface TapConfig {
  /** Host-side IPv4 address, dotted quad. */
  ip?: string;
  /** IPv4 netmask, dotted quad (needs `ip`, or an address already on the interface). */
  mask?: string;
  /** Host-side MAC address, "aa:bb:cc:dd:ee:ff". */
  mac?: string;
  /** Interface MTU (68..65535). */
  mtu?: number;
}

function ifreq(name: string): Uint8Array {
  const r = new Uint8Array(IFREQ_SIZE);
  r.set(Buffer.from(name, 'ascii'), 0);
  return r;
}

function ifreqName(r: Uint8Array): string {
  let end = 0;
  while (end < IFNAMSIZ && r[end] !== 0) end++;
  return Buffer.from(r.subarray(0, end)).toString('ascii');
}

function validName(name: string): void {
  if (name.length >= IFNAMSIZ || !/^[A-Za-z0-9_.%-]*$/.test(name) || name === '.' || name === '..') {
    throw new Error(`invalid tap name "${name}": at most ${IFNAMSIZ - 1} characters of A-Z a-z 0-9 _ . - (and %d)`);
  }
}

/** Parse a dotted-quad IPv4 address into its 4 bytes (network order). */
export function parseIpv4(s: string, what = 'IPv4 address'): Uint8Array {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  const b = m === null ? [] : m.slice(1).map(Number);
  if (b.length !== 4 || b.some((x) => x > 255)) throw new Error(`invalid ${what} "${s}"`);
  return Uint8Array.from(b);
}

/** Parse "aa:bb:cc:dd:ee:ff" into 6 bytes. */
export function parseMac(s: string): Uint8Array {
  const m = /^([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})$/.exec(s);
  if (m === null) throw new Error(`invalid MAC address "${s}"`);
  return Uint8Array.from(m.slice(1).map((h) => parseInt(h, 16)));
}

/** A SysError whose message names the tap and explains the usual causes. */
function tapError(call: string, tapName: string, err: number): SysError {
  const e = new SysError(`${call} on tap "${tapName === '' ? '(new)' : tapName}"`, err);
  let hint = '';
  if (err === libc.EPERM || err === libc.EACCES) hint = 'creating or configuring a tap needs CAP_NET_ADMIN (run as root or grant the capability)';
  else if (err === libc.EBUSY) hint = 'the tap is already in use by another process (single-queue taps take one opener)';
  else if (err === libc.EINVAL && call.includes('TUNSETIFF')) hint = 'an existing interface of that name is not a tap with the same flags (vnet_hdr, multi-queue)';
  else if (err === libc.ENOENT && call.includes(TUN_PATH)) hint = 'no /dev/net/tun (load the tun module: modprobe tun)';
  if (hint !== '') e.message += `: ${hint}`;
  return e;
}

function ioctlOrThrow(fd: number, req: number, arg: number | Uint8Array, name: string, tapName: string): void {
  const r = libc.ioctlRaw(fd, req, arg);
  if (r < 0) throw tapError(`ioctl(${name})`, tapName, -r);
}

/**
 * An open tap interface: one non-blocking fd per queue, each reading/writing whole Ethernet
 * frames preceded by a 12-byte virtio_net_hdr.
 */
export class Tap {
  /** The interface name (as chosen by the kernel when none was given). */
  readonly name: string;
  /** One fd per queue. */
  readonly fds: readonly number[];
  private owned: boolean;
  private closed = false;
  /** Whether each queue is attached (TUNSETQUEUE); all are after open(). */
  private readonly attached: boolean[];

  private constructor(name: string, fds: number[]) {
    this.name = name;
    this.fds = fds;
    this.owned = true;
    this.attached = fds.map(() => true);
  }

  /** Open (creating if needed) a tap with `queues` queues. Throws SysError naming the step and the tap. */
  static open(opts: TapOpenOptions): Tap {
    const queues = opts.queues ?? 1;
    if (!Number.isInteger(queues) || queues < 1 || queues > 256) throw new Error(`invalid tap queue count ${queues}`);
    if (opts.vnetHdr !== true) throw new Error('taps are always opened with vnetHdr: true');
    let name = opts.name ?? '';
    validName(name);
    const flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (queues > 1 ? IFF_MULTI_QUEUE : 0);
    const fds: number[] = [];
    const hdrSize = new Int32Array([VNET_HDR_SIZE]);
    try {
      for (let q = 0; q < queues; q++) {
        let fd: number;
        try {
          fd = libc.open(TUN_PATH, libc.O_RDWR | libc.O_NONBLOCK | libc.O_CLOEXEC);
        } catch (e) {
          throw e instanceof SysError ? tapError(`open(${TUN_PATH})`, name, e.errno) : e;
        }
        fds.push(fd);
        // The first TUNSETIFF may create the interface and pick its name; the others join it.
        const req = ifreq(name);
        new DataView(req.buffer).setUint16(IFR_FLAGS, flags, true);
        ioctlOrThrow(fd, TUNSETIFF, req, 'TUNSETIFF', name);
        name = ifreqName(req);
        ioctlOrThrow(fd, TUNSETVNETHDRSZ, new Uint8Array(hdrSize.buffer), 'TUNSETVNETHDRSZ', name);
      }
    } catch (e) {
      for (const fd of fds) libc.close(fd);
      throw e;
    }
    return new Tap(name, fds);
  }

  /**
   * Adopt tap fds opened by someone else (one per queue pair; e.g. received over the API
   * socket with SCM_RIGHTS, as Kata Containers sends them): each must be a tap (TUNGETIFF:
   * IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE when there are several) of one
   * interface. The tap is not created or configured (no TUNSETIFF, no address): its owner did
   * that. Each fd is made non-blocking and gets the 12-byte vnet header size. The Tap owns
   * the fds from here (close() closes them), also when this throws.
   */
  static fromFds(fds: readonly number[]): Tap {
    try {
      if (fds.length < 1 || fds.length > 256) throw new Error(`a tap needs 1..256 queue fds, got ${fds.length}`);
      let name: string | undefined;
      const hdrSize = new Int32Array([VNET_HDR_SIZE]);
      for (const [i, fd] of fds.entries()) {
        const req = ifreq('');
        const r = libc.ioctlRaw(fd, TUNGETIFF, req);
        if (r < 0) throw new Error(`fd ${i} (${fd}) is not a tun/tap fd (TUNGETIFF: ${new SysError('ioctl', -r).code})`);
        const flags = new DataView(req.buffer).getUint16(IFR_FLAGS, true);
        const ifname = ifreqName(req);
        if ((flags & IFF_TAP) === 0) throw new Error(`fd ${i} (${fd}) is a tun device (${ifname}), not a tap (IFF_TAP)`);
        if ((flags & IFF_NO_PI) === 0) throw new Error(`tap ${ifname} (fd ${fd}) was opened without IFF_NO_PI`);
        if ((flags & IFF_VNET_HDR) === 0) throw new Error(`tap ${ifname} (fd ${fd}) was opened without IFF_VNET_HDR (virtio-net needs the vnet header)`);
        if (fds.length > 1 && (flags & IFF_MULTI_QUEUE) === 0) throw new Error(`${fds.length} fds given but tap ${ifname} is not multi-queue (IFF_MULTI_QUEUE)`);
        if (name !== undefined && ifname !== name) throw new Error(`the fds belong to different taps (${name}, ${ifname})`);
        name = ifname;
        libc.setNonblocking(fd);
        ioctlOrThrow(fd, TUNSETVNETHDRSZ, new Uint8Array(hdrSize.buffer), 'TUNSETVNETHDRSZ', ifname);
      }
      return new Tap(name ?? '', [...fds]);
    } catch (e) {
      for (const fd of fds) {
        try { libc.close(fd); } catch { /* already closed */ }
      }
      throw e;
    }
  }

  /**
   * Tell the tap which offloads the reader (the guest) accepts: TUN_F_* flags (tuntap.rst,
   * TUNSETOFFLOAD). The setting is per interface; TSO/UFO flags need TUN_F_CSUM.
   */
  setOffload(flags: number): void {
    this.assertOpen();
    ioctlOrThrow(this.fds[0]!, TUNSETOFFLOAD, flags >>> 0, 'TUNSETOFFLOAD', this.name);
  }

  /**
   * Attach or detach queue `index` (TUNSETQUEUE with IFF_ATTACH_QUEUE / IFF_DETACH_QUEUE): the
   * kernel only steers received traffic to attached queues. Multi-queue taps only; a call that
   * changes nothing does nothing.
   */
  setQueueEnabled(index: number, enabled: boolean): void {
    this.assertOpen();
    const fd = this.fds[index];
    if (fd === undefined) throw new Error(`tap "${this.name}" has no queue ${index}`);
    // The kernel answers EINVAL to attaching an attached queue (or detaching a detached one).
    if (this.attached[index] === enabled) return;
    const req = ifreq('');
    new DataView(req.buffer).setUint16(IFR_FLAGS, enabled ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE, true);
    ioctlOrThrow(fd, TUNSETQUEUE, req, enabled ? 'TUNSETQUEUE(attach)' : 'TUNSETQUEUE(detach)', this.name);
    this.attached[index] = enabled;
  }

  /**
   * Configure the host side: MAC, MTU, IPv4 address and netmask, then bring the link up
   * (IFF_UP | IFF_RUNNING). Each step is an ioctl on a throwaway AF_INET datagram socket.
   */
  configure(cfg: TapConfig): void {
    this.assertOpen();
    const ip = cfg.ip !== undefined ? parseIpv4(cfg.ip) : null;
    const mask = cfg.mask !== undefined ? parseIpv4(cfg.mask, 'netmask') : null;
    const mac = cfg.mac !== undefined ? parseMac(cfg.mac) : null;
    if (cfg.mtu !== undefined && (!Number.isInteger(cfg.mtu) || cfg.mtu < 68 || cfg.mtu > 65535)) throw new Error(`invalid MTU ${cfg.mtu}`);
    let sock: number;
    try {
      sock = libc.socket(libc.AF_INET, libc.SOCK_DGRAM | libc.SOCK_CLOEXEC, 0);
    } catch (e) {
      throw e instanceof SysError ? tapError('socket(AF_INET, SOCK_DGRAM)', this.name, e.errno) : e;
    }
    try {
      if (mac !== null) {
        const r = ifreq(this.name);
        const dv = new DataView(r.buffer);
        dv.setUint16(IFR_ADDR, ARPHRD_ETHER, true);
        r.set(mac, SA_DATA);
        ioctlOrThrow(sock, SIOCSIFHWADDR, r, 'SIOCSIFHWADDR', this.name);
      }
      if (cfg.mtu !== undefined) {
        const r = ifreq(this.name);
        new DataView(r.buffer).setInt32(IFR_MTU, cfg.mtu, true);
        ioctlOrThrow(sock, SIOCSIFMTU, r, 'SIOCSIFMTU', this.name);
      }
      const inet = (bytes: Uint8Array, req: number, reqName: string): void => {
        const r = ifreq(this.name);
        new DataView(r.buffer).setUint16(SIN_FAMILY, libc.AF_INET, true);
        r.set(bytes, SIN_ADDR);
        ioctlOrThrow(sock, req, r, reqName, this.name);
      };
      // The netmask applies to an existing address, so the address goes first.
      if (ip !== null) inet(ip, SIOCSIFADDR, 'SIOCSIFADDR');
      if (mask !== null) inet(mask, SIOCSIFNETMASK, 'SIOCSIFNETMASK');
      const r = ifreq(this.name);
      ioctlOrThrow(sock, SIOCGIFFLAGS, r, 'SIOCGIFFLAGS', this.name);
      const dv = new DataView(r.buffer);
      dv.setUint16(IFR_FLAGS, dv.getUint16(IFR_FLAGS, true) | IFF_UP | IFF_RUNNING, true);
      ioctlOrThrow(sock, SIOCSIFFLAGS, r, 'SIOCSIFFLAGS', this.name);
    } finally {
      libc.close(sock);
    }
  }

  /**
   * Hand the fds over to another owner (the virtio-net device closes them in its close()).
   * setOffload()/setQueueEnabled() keep working while that owner keeps them open; close()
   * no longer closes them.
   */
  releaseFds(): number[] {
    this.assertOpen();
    this.owned = false;
    return this.fds.slice();
  }

  /** Close the queue fds (unless released). A non-persistent tap disappears with its last fd. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.owned) return;
    let first: unknown = null;
    for (const fd of this.fds) {
      try { libc.close(fd); } catch (e) { first ??= e; }
    }
    if (first !== null) throw first;
  }

  private assertOpen(): void {
    if (this.closed) throw new Error(`tap "${this.name}" is closed`);
  }
}
