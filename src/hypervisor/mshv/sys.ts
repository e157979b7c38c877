// The system calls the MSHV backend makes, behind an interface so its ioctl sequences can be
// exercised against a recording fake (mshv.test.ts) on machines without /dev/mshv.

import * as libc from '../../sys/libc.js';

export interface MshvPage {
  /** Host virtual address (what an ioctl argument's *_ptr field carries). */
  addr: bigint;
  bytes: Uint8Array;
}

export interface MshvSys {
  open(path: string): number;
  close(fd: number): void;
  /** ioctl(2): returns the result or throws a libc.SysError naming `name`. */
  ioctl(fd: number, request: number, arg: number | Uint8Array, name: string): number;
  /** ioctl(2) without throwing: the result or -errno (MSHV_RUN_VP's hot path). */
  ioctlRaw(fd: number, request: number, arg: number | Uint8Array): number;
  /** A page-aligned, zeroed buffer whose address can be put in an ioctl argument. */
  allocPages(bytes: number): MshvPage;
  freePages(p: MshvPage): void;
}

export const realSys: MshvSys = {
  open: (path) => libc.open(path, libc.O_RDWR | libc.O_CLOEXEC),
  close: (fd) => libc.close(fd),
  ioctl: (fd, req, arg, name) => libc.ioctl(fd, req, arg, name),
  ioctlRaw: (fd, req, arg) => libc.ioctlRaw(fd, req, arg),
  allocPages: (bytes) => {
    const addr = libc.mmap(bytes, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS, -1, 0);
    return { addr, bytes: new Uint8Array(libc.view(addr, bytes)) };
  },
  freePages: (p) => libc.munmap(p.addr, p.bytes.length),
};
