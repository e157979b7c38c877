// Thin libc bindings through koffi FFI (Linux x86-64, glibc).
//
// Every worker thread gets its own copy of this module (ES modules are per isolate), so libc and
// the function prototypes are loaded lazily, once per thread, on first use.
//
// Hot-path rules: `ioctl(fd, req, 0)` (KVM_RUN) and `ioctl(fd, req, buf)` with a preallocated
// Uint8Array pass straight through to a fixed (non-variadic) prototype: no per-call allocation
// on our side. Typed arrays passed as `void *` are handed to C as a pointer into their own
// backing store (the kernel writes land in the caller's buffer).

import koffi from 'koffi';

// ---------------------------------------------------------------------------------------------
// Constants (asm-generic / x86-64 values, see man 2 open, mmap, eventfd, poll, errno(3)).

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000;
export const O_DIRECT = 0o40000;
export const O_CLOEXEC = 0o2000000;

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;

export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;
/** mmap's error return, `(void *)-1`. `mmap()` below throws instead of returning it. */
export const MAP_FAILED = -1n;

export const MADV_NORMAL = 0;
export const MADV_RANDOM = 1;
export const MADV_SEQUENTIAL = 2;
export const MADV_WILLNEED = 3;
export const MADV_DONTNEED = 4;
export const MADV_REMOVE = 9;
export const MADV_DONTFORK = 10;
export const MADV_DOFORK = 11;
export const MADV_MERGEABLE = 12;
export const MADV_UNMERGEABLE = 13;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_DONTDUMP = 16;

export const EFD_SEMAPHORE = 1;
export const EFD_NONBLOCK = O_NONBLOCK;
export const EFD_CLOEXEC = O_CLOEXEC;

export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;

export const POLLIN = 0x001;
export const POLLPRI = 0x002;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;

export const EPERM = 1;
export const ENOENT = 2;
export const ESRCH = 3;
export const EINTR = 4;
export const EIO = 5;
export const ENXIO = 6;
export const E2BIG = 7;
export const EBADF = 9;
export const EAGAIN = 11;
export const EWOULDBLOCK = EAGAIN;
export const ENOMEM = 12;
export const EACCES = 13;
export const EFAULT = 14;
export const EBUSY = 16;
export const EEXIST = 17;
export const ENODEV = 19;
export const EINVAL = 22;
export const ENFILE = 23;
export const EMFILE = 24;
export const ENOTTY = 25;
export const ENOSPC = 28;
export const ERANGE = 34;
export const ENOSYS = 38;
export const EOPNOTSUPP = 95;

export const SIG_BLOCK = 0;
export const SIG_UNBLOCK = 1;
export const SIG_SETMASK = 2;
/** glibc's sigset_t is 1024 bits; the kernel only looks at the first 8 bytes (_NSIG = 64). */
export const SIGSET_SIZE = 128;
/** Kernel sigset size, e.g. for kvm_signal_mask.len (KVM API doc 4.43). */
export const KERNEL_SIGSET_SIZE = 8;
export const SIGUSR1 = 10;
export const SIGUSR2 = 12;
/** Kernel SIGRTMIN is 32; glibc reserves 32 and 33 for NPTL, so its SIGRTMIN is 34. */
export const SIGRTMIN = 34;
export const SIGRTMAX = 64;

// ---------------------------------------------------------------------------------------------
// Errors

const codeByErrno = new Map<number, string>();
function errnoName(errno: number): string {
  if (codeByErrno.size === 0) {
    for (const [name, value] of Object.entries(koffi.os.errno)) {
      if (!codeByErrno.has(value)) codeByErrno.set(value, name);
    }
    codeByErrno.set(EAGAIN, 'EAGAIN');
    codeByErrno.set(EOPNOTSUPP, 'EOPNOTSUPP');
  }
  return codeByErrno.get(errno) ?? `E${errno}`;
}

/** A failed libc call: `call` names it (e.g. "ioctl(KVM_CREATE_VM)"), `errno`/`code` the reason. */
export class SysError extends Error {
  readonly call: string;
  readonly errno: number;
  readonly code: string;
  constructor(call: string, errno: number) {
    const code = errnoName(errno);
    super(`${call} failed: ${code} (${errno})`);
    this.name = 'SysError';
    this.call = call;
    this.errno = errno;
    this.code = code;
  }
}

/** errno of the last FFI call made on this thread. */
export function errno(): number {
  return koffi.errno();
}

// ---------------------------------------------------------------------------------------------
// Lazy, per-thread prototypes

type Fn = (...args: never[]) => unknown;
interface Libc {
  open: (path: string, flags: number, mode: number) => number;
  close: (fd: number) => number;
  ioctlInt: (fd: number, req: number, arg: number | bigint) => number;
  ioctlPtr: (fd: number, req: number, arg: Uint8Array | null) => number;
  mmap: (addr: number | bigint, len: number, prot: number, flags: number, fd: number, off: number) => number | bigint;
  munmap: (addr: bigint, len: number) => number;
  madvise: (addr: bigint, len: number, advice: number) => number;
  eventfd: (initval: number, flags: number) => number;
  read: (fd: number, buf: Uint8Array, len: number) => number;
  write: (fd: number, buf: Uint8Array, len: number) => number;
  poll: (fds: Int32Array, n: number, timeout: number) => number;
  memfdCreate: (name: string, flags: number) => number;
  ftruncate: (fd: number, len: number) => number;
  getpid: () => number;
  gettid: () => number;
  tgkill: (tgid: number, tid: number, sig: number) => number;
  pthreadSigmask: (how: number, set: Uint8Array | null, old: Uint8Array | null) => number;
  sigtimedwait: (set: Uint8Array, info: Uint8Array | null, timeout: Uint8Array) => number;
  signal: (sig: number, handler: number) => number | bigint;
  fallocate: (fd: number, mode: number, offset: number, len: number) => number;
  flock: (fd: number, op: number) => number;
  pipe2: (fds: Int32Array, flags: number) => number;
  lseek: (fd: number, offset: number, whence: number) => number;
  fsync: (fd: number) => number;
  timerfdCreate: (clockid: number, flags: number) => number;
  timerfdSettime: (fd: number, flags: number, value: Uint8Array, old: Uint8Array | null) => number;
}

let libc: Libc | null = null;

function L(): Libc {
  if (libc !== null) return libc;
  const lib = koffi.load('libc.so.6');
  const f = <T extends Fn>(decl: string): T => lib.func(decl) as unknown as T;
  libc = {
    open: f('int open(const char *path, int flags, uint32_t mode)'),
    close: f('int close(int fd)'),
    // ioctl is variadic in glibc; on x86-64 SysV a fixed prototype passes the third argument in
    // the same register (rdx), so two fixed prototypes avoid koffi's per-call variadic typing.
    ioctlInt: f('int ioctl(int fd, unsigned long req, unsigned long arg)'),
    ioctlPtr: f('int ioctl(int fd, unsigned long req, void *arg)'),
    mmap: f('int64_t mmap(uintptr_t addr, size_t len, int prot, int flags, int fd, int64_t off)'),
    munmap: f('int munmap(uint64_t addr, size_t len)'),
    madvise: f('int madvise(uint64_t addr, size_t len, int advice)'),
    eventfd: f('int eventfd(unsigned int initval, int flags)'),
    read: f('long read(int fd, void *buf, size_t len)'),
    write: f('long write(int fd, const void *buf, size_t len)'),
    poll: f('int poll(void *fds, unsigned long nfds, int timeout)'),
    memfdCreate: f('int memfd_create(const char *name, unsigned int flags)'),
    ftruncate: f('int ftruncate(int fd, int64_t len)'),
    getpid: f('int getpid()'),
    gettid: f('int gettid()'),
    tgkill: f('int tgkill(int tgid, int tid, int sig)'),
    pthreadSigmask: f('int pthread_sigmask(int how, const void *set, void *old)'),
    sigtimedwait: f('int sigtimedwait(const void *set, void *info, const void *timeout)'),
    signal: f('intptr_t signal(int sig, intptr_t handler)'),
    fallocate: f('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
    flock: f('int flock(int fd, int op)'),
    pipe2: f('int pipe2(void *fds, int flags)'),
    lseek: f('int64_t lseek(int fd, int64_t offset, int whence)'),
    fsync: f('int fsync(int fd)'),
    timerfdCreate: f('int timerfd_create(int clockid, int flags)'),
    timerfdSettime: f('int timerfd_settime(int fd, int flags, const void *value, void *old)'),
  };
  return libc;
}

function check(ret: number, call: string): number {
  if (ret < 0) throw new SysError(call, koffi.errno());
  return ret;
}

// ---------------------------------------------------------------------------------------------
// Files and ioctl

export function open(path: string, flags: number, mode = 0): number {
  return check(L().open(path, flags, mode), `open(${path})`);
}

export function close(fd: number): void {
  check(L().close(fd), 'close');
}

/**
 * ioctl(2). `arg` is an integer (passed by value), a buffer (passed as a pointer to its bytes;
 * the kernel reads/writes it in place) or null/undefined (0). Throws SysError naming `name`
 * (defaults to the request number in hex). Returns the non-negative result.
 */
export function ioctl(fd: number, request: number, arg?: number | bigint | Uint8Array | null, name?: string): number {
  const c = libc ?? L();
  let ret: number;
  if (arg === undefined || arg === null) ret = c.ioctlInt(fd, request, 0);
  else if (typeof arg === 'number' || typeof arg === 'bigint') ret = c.ioctlInt(fd, request, arg);
  else ret = c.ioctlPtr(fd, request, arg);
  if (ret < 0) throw new SysError(`ioctl(${name ?? '0x' + (request >>> 0).toString(16)})`, koffi.errno());
  return ret;
}

/**
 * ioctl without throwing: returns the result, or `-errno` on failure. For hot paths that treat
 * some errors (EINTR, EAGAIN) as normal outcomes (KVM_RUN).
 */
export function ioctlRaw(fd: number, request: number, arg: number | Uint8Array): number {
  const c = libc ?? L();
  const ret = typeof arg === 'number' ? c.ioctlInt(fd, request, arg) : c.ioctlPtr(fd, request, arg);
  return ret < 0 ? -koffi.errno() : ret;
}

// ---------------------------------------------------------------------------------------------
// Memory

/** mmap(2) with a kernel-chosen address. Returns the address; throws SysError on MAP_FAILED. */
export function mmap(length: number, prot: number, flags: number, fd: number, offset: number): bigint {
  const r = L().mmap(0, length, prot, flags, fd, offset);
  if (r === -1 || r === MAP_FAILED) throw new SysError('mmap', koffi.errno());
  return BigInt(r);
}

/**
 * mmap(2) at `addr` exactly (MAP_FIXED is added): replaces whatever is mapped there, e.g. guest
 * RAM by an inaccessible PROT_NONE mapping, or a memfd at a 2 MiB-aligned address. Throws SysError
 * on MAP_FAILED.
 */
export function mmapFixed(addr: bigint, length: number, prot: number, flags: number, fd: number, offset: number): bigint {
  const r = L().mmap(addr, length, prot, flags | MAP_FIXED, fd, offset);
  if (r === -1 || r === MAP_FAILED) throw new SysError('mmap', koffi.errno());
  return BigInt(r);
}

export function munmap(addr: bigint, length: number): void {
  check(L().munmap(addr, length), 'munmap');
}

export function madvise(addr: bigint, length: number, advice: number): void {
  check(L().madvise(addr, length, advice), 'madvise');
}

/**
 * An ArrayBuffer over process memory at `addr` (e.g. an mmap done by any thread of this
 * process). The buffer does not own the memory: it must not be used after munmap.
 */
export function view(addr: bigint, length: number): ArrayBuffer {
  L();
  return koffi.view(addr, length);
}

export function memfdCreate(name: string, flags: number): number {
  return check(L().memfdCreate(name, flags), `memfd_create(${name})`);
}

export function ftruncate(fd: number, length: number): void {
  check(L().ftruncate(fd, length), 'ftruncate');
}

/** lseek(2) whence values (unistd.h; SEEK_DATA/SEEK_HOLE: lseek(2), Linux 3.1). */
export const SEEK_SET = 0;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/** lseek(2): the new offset, or -errno (ENXIO: no data / hole at or after `offset` with SEEK_DATA/SEEK_HOLE). */
export function lseekRaw(fd: number, offset: number, whence: number): number {
  const r = L().lseek(fd, offset, whence);
  return r < 0 ? -koffi.errno() : r;
}

export function fsync(fd: number): void {
  check(L().fsync(fd), 'fsync');
}

/** fallocate(2) modes (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** fallocate(2). Throws SysError (EOPNOTSUPP where the file system cannot do `mode`). */
export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  check(L().fallocate(fd, mode, offset, length), 'fallocate');
}

/** flock(2) operations. */
export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/** flock(2). With LOCK_NB, a lock held elsewhere throws SysError with errno EWOULDBLOCK. */
export function flock(fd: number, operation: number): void {
  check(L().flock(fd, operation), 'flock');
}

/** pipe2(2): returns [read end, write end]. */
export function pipe2(flags: number): [number, number] {
  const fds = new Int32Array(2);
  check(L().pipe2(fds, flags), 'pipe2');
  return [fds[0]!, fds[1]!];
}

// ---------------------------------------------------------------------------------------------
// timerfd (timerfd_create(2))

export const CLOCK_MONOTONIC = 1;
export const TFD_NONBLOCK = O_NONBLOCK;
export const TFD_CLOEXEC = O_CLOEXEC;

export function timerfdCreate(clockid: number, flags: number): number {
  return check(L().timerfdCreate(clockid, flags), 'timerfd_create');
}

/** timerfd_settime(2), relative: `value` is a 32-byte struct itimerspec (all zero disarms). */
export function timerfdSettime(fd: number, value: Uint8Array): void {
  const c = libc ?? L();
  if (c.timerfdSettime(fd, 0, value, null) < 0) throw new SysError('timerfd_settime', koffi.errno());
}

// ---------------------------------------------------------------------------------------------
// eventfd, read/write, poll

export function eventfd(initval: number, flags: number): number {
  return check(L().eventfd(initval, flags), 'eventfd');
}

/** read(2) into `buf` (its whole length). Returns bytes read; throws SysError (incl. EAGAIN). */
export function read(fd: number, buf: Uint8Array): number {
  return check(L().read(fd, buf, buf.byteLength), 'read');
}

/** write(2) of `buf` (its whole length). Returns bytes written; throws SysError (incl. EAGAIN). */
export function write(fd: number, buf: Uint8Array): number {
  return check(L().write(fd, buf, buf.byteLength), 'write');
}

/**
 * poll(2). `fds` holds raw `struct pollfd` entries, two int32 per fd:
 * `[fd, events | revents << 16]` (build with `pollFds`/`pollFdSet`, read with `pollRevents`).
 * Returns the number of ready fds (0 on timeout); throws SysError (EINTR included).
 */
export function poll(fds: Int32Array, timeoutMs: number): number {
  return check(L().poll(fds, fds.length >> 1, timeoutMs), 'poll');
}

/** A pollfd array for `n` fds (all set to -1, which poll ignores). */
export function pollFds(n: number): Int32Array {
  const a = new Int32Array(n * 2);
  for (let i = 0; i < n; i++) a[i * 2] = -1;
  return a;
}

/** Set entry `i` to watch `fd` for `events`, clearing its revents. */
export function pollFdSet(fds: Int32Array, i: number, fd: number, events: number): void {
  fds[i * 2] = fd;
  fds[i * 2 + 1] = events & 0xffff;
}

/** revents of entry `i` after poll(). */
export function pollRevents(fds: Int32Array, i: number): number {
  return (fds[i * 2 + 1]! >>> 16) & 0xffff;
}

// ---------------------------------------------------------------------------------------------
// Threads and signals (used to kick a vCPU thread out of KVM_RUN)

export function getpid(): number {
  return L().getpid();
}

/** Kernel thread id of the calling thread (each worker_thread is its own OS thread). */
export function gettid(): number {
  return L().gettid();
}

export function tgkill(tgid: number, tid: number, sig: number): void {
  check(L().tgkill(tgid, tid, sig), 'tgkill');
}

/** A zeroed glibc sigset_t. */
export function sigsetEmpty(): Uint8Array {
  return new Uint8Array(SIGSET_SIZE);
}

export function sigsetAdd(set: Uint8Array, sig: number): void {
  set[(sig - 1) >> 3]! |= 1 << ((sig - 1) & 7);
}

export function sigsetDel(set: Uint8Array, sig: number): void {
  set[(sig - 1) >> 3]! &= ~(1 << ((sig - 1) & 7));
}

export function sigsetHas(set: Uint8Array, sig: number): boolean {
  return (set[(sig - 1) >> 3]! & (1 << ((sig - 1) & 7))) !== 0;
}

/** pthread_sigmask(3) for the calling thread. `set`/`old` are SIGSET_SIZE-byte buffers or null. */
export function pthreadSigmask(how: number, set: Uint8Array | null, old: Uint8Array | null): void {
  const r = L().pthreadSigmask(how, set, old);
  if (r !== 0) throw new SysError('pthread_sigmask', r);
}

const zeroTimespec = new Uint8Array(16);
/**
 * sigtimedwait(2) with a zero timeout: consumes one pending signal from `set` if any.
 * Returns the signal number, or 0 when none was pending.
 */
export function sigtimedwaitNow(set: Uint8Array): number {
  const r = L().sigtimedwait(set, null, zeroTimespec);
  if (r >= 0) return r;
  const e = koffi.errno();
  if (e === EAGAIN || e === EINTR) return 0;
  throw new SysError('sigtimedwait', e);
}

/** Set the process-wide disposition of `sig` to ignore (SIG_IGN) or default (SIG_DFL). */
export function signalDisposition(sig: number, disposition: 'ignore' | 'default'): void {
  const r = L().signal(sig, disposition === 'ignore' ? 1 : 0);
  if (r === -1 || r === -1n) throw new SysError('signal', koffi.errno());
}

// ---------------------------------------------------------------------------------------------
// Networking and scatter/gather I/O (net/tap.ts, virtio/net). Raw variants return `-errno`
// instead of throwing, for hot paths where EAGAIN is a normal outcome.

export const AF_UNIX = 1;
export const AF_INET = 2;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_NONBLOCK = O_NONBLOCK;
export const SOCK_CLOEXEC = O_CLOEXEC;
/** Largest iovcnt readv/writev accept (UIO_MAXIOV). */
export const IOV_MAX = 1024;
/** sizeof(struct iovec) on x86-64: void *iov_base; size_t iov_len. */
export const IOVEC_SIZE = 16;

interface NetLibc {
  socket: (domain: number, type: number, protocol: number) => number;
  socketpair: (domain: number, type: number, protocol: number, sv: Int32Array) => number;
  readv: (fd: number, iov: Uint8Array, cnt: number) => number;
  writev: (fd: number, iov: Uint8Array, cnt: number) => number;
  preadv: (fd: number, iov: Uint8Array, cnt: number, offset: number) => number;
  pwritev: (fd: number, iov: Uint8Array, cnt: number, offset: number) => number;
  memcpy: (dst: number, src: number, n: number) => void;
}

let netLibc: NetLibc | null = null;

function N(): NetLibc {
  if (netLibc !== null) return netLibc;
  const lib = koffi.load('libc.so.6');
  const f = <T extends Fn>(decl: string): T => lib.func(decl) as unknown as T;
  netLibc = {
    socket: f('int socket(int domain, int type, int protocol)'),
    socketpair: f('int socketpair(int domain, int type, int protocol, void *sv)'),
    readv: f('long readv(int fd, const void *iov, int iovcnt)'),
    writev: f('long writev(int fd, const void *iov, int iovcnt)'),
    preadv: f('long preadv(int fd, const void *iov, int iovcnt, int64_t offset)'),
    pwritev: f('long pwritev(int fd, const void *iov, int iovcnt, int64_t offset)'),
    // Addresses as integers (host addresses fit in 47 bits, exact as JS numbers): no BigInt.
    memcpy: f('void memcpy(uintptr_t dst, uintptr_t src, size_t n)'),
  };
  return netLibc;
}

export function socket(domain: number, type: number, protocol = 0): number {
  return check(N().socket(domain, type, protocol), 'socket');
}

/** socketpair(2): returns the two connected fds. */
export function socketpair(domain: number, type: number, protocol = 0): [number, number] {
  const sv = new Int32Array(2);
  check(N().socketpair(domain, type, protocol, sv), 'socketpair');
  return [sv[0]!, sv[1]!];
}

/** read(2) of up to `len` bytes into `buf`: bytes read, or -errno. */
export function readRaw(fd: number, buf: Uint8Array, len: number): number {
  if (!(len >= 0 && len <= buf.byteLength)) throw new RangeError(`read: length ${len} outside a ${buf.byteLength}-byte buffer`);
  const r = (libc ?? L()).read(fd, buf, len);
  return r < 0 ? -koffi.errno() : r;
}

/** write(2) of the first `len` bytes of `buf`: bytes written, or -errno. */
export function writeRaw(fd: number, buf: Uint8Array, len: number): number {
  if (!(len >= 0 && len <= buf.byteLength)) throw new RangeError(`write: length ${len} outside a ${buf.byteLength}-byte buffer`);
  const r = (libc ?? L()).write(fd, buf, len);
  return r < 0 ? -koffi.errno() : r;
}

/** readv(2): `iov` holds `cnt` struct iovec (IOVEC_SIZE bytes each). Bytes read, or -errno. */
export function readvRaw(fd: number, iov: Uint8Array, cnt: number): number {
  if (!(cnt >= 0 && cnt * IOVEC_SIZE <= iov.byteLength)) throw new RangeError(`readv: ${cnt} iovecs outside a ${iov.byteLength}-byte array`);
  const r = (netLibc ?? N()).readv(fd, iov, cnt);
  return r < 0 ? -koffi.errno() : r;
}

/** writev(2): `iov` holds `cnt` struct iovec (IOVEC_SIZE bytes each). Bytes written, or -errno. */
export function writevRaw(fd: number, iov: Uint8Array, cnt: number): number {
  if (!(cnt >= 0 && cnt * IOVEC_SIZE <= iov.byteLength)) throw new RangeError(`writev: ${cnt} iovecs outside a ${iov.byteLength}-byte array`);
  const r = (netLibc ?? N()).writev(fd, iov, cnt);
  return r < 0 ? -koffi.errno() : r;
}

/** preadv(2) at file offset `offset` (< 2^53): bytes read, or -errno. */
export function preadvRaw(fd: number, iov: Uint8Array, cnt: number, offset: number): number {
  if (!(cnt >= 0 && cnt * IOVEC_SIZE <= iov.byteLength)) throw new RangeError(`preadv: ${cnt} iovecs outside a ${iov.byteLength}-byte array`);
  const r = (netLibc ?? N()).preadv(fd, iov, cnt, offset);
  return r < 0 ? -koffi.errno() : r;
}

/** pwritev(2) at file offset `offset` (< 2^53): bytes written, or -errno. */
export function pwritevRaw(fd: number, iov: Uint8Array, cnt: number, offset: number): number {
  if (!(cnt >= 0 && cnt * IOVEC_SIZE <= iov.byteLength)) throw new RangeError(`pwritev: ${cnt} iovecs outside a ${iov.byteLength}-byte array`);
  const r = (netLibc ?? N()).pwritev(fd, iov, cnt, offset);
  return r < 0 ? -koffi.errno() : r;
}

/** memcpy between two host addresses of this process (e.g. mmapped guest RAM and a bounce buffer). */
export function memcpyHost(dst: number, src: number, n: number): void {
  (netLibc ?? N()).memcpy(dst, src, n);
}

// ---------------------------------------------------------------------------------------------
// Unix sockets: virtio-vsock's hybrid backend (bind/listen/accept4/connect/shutdown over struct
// sockaddr_un: sa_family_t sun_family; char sun_path[108]) and file descriptors passed with
// SCM_RIGHTS (unix(7), cmsg(3)): vhost-user and anything else that passes fds. Node's net sockets
// cannot, so these go through sendmsg/recvmsg here. The msghdr, iovec and control buffers live in
// one per-thread scratch mapping (their addresses go into the msghdr), grown when a bigger message comes.

export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
export const MSG_DONTWAIT = 0x40;
/** recv(2) flag: look at the bytes without taking them from the socket. */
export const MSG_PEEK = 0x02;
/** send(2)/sendmsg(2) flag: no SIGPIPE on a closed peer (EPIPE instead). */
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const MSG_CTRUNC = 0x08;
export const EPIPE = 32;
export const EADDRINUSE = 98;
export const ECONNRESET = 104;
export const ENOTCONN = 107;
export const ECONNREFUSED = 111;
export const EINPROGRESS = 115;
export const SHUT_RD = 0;
export const SHUT_WR = 1;
export const SHUT_RDWR = 2;
/** sizeof(struct sockaddr_un) on Linux. */
export const SOCKADDR_UN_SIZE = 110;
/** Longest sun_path, not counting its terminating NUL. */
export const UNIX_PATH_MAX = 107;
/** SCM_MAX_FD (include/net/scm.h): the most fds one message may carry. */
export const SCM_MAX_FD = 253;

interface SockLibc {
  bind: (fd: number, addr: Uint8Array, len: number) => number;
  connect: (fd: number, addr: Uint8Array, len: number) => number;
  listen: (fd: number, backlog: number) => number;
  accept4: (fd: number, addr: null, len: null, flags: number) => number;
  shutdown: (fd: number, how: number) => number;
  send: (fd: number, buf: Uint8Array, len: number, flags: number) => number;
  recv: (fd: number, buf: Uint8Array, len: number, flags: number) => number;
  sendmsg: (fd: number, msg: number, flags: number) => number;
  recvmsg: (fd: number, msg: number, flags: number) => number;
}
let sockLibc: SockLibc | null = null;

function S(): SockLibc {
  if (sockLibc !== null) return sockLibc;
  const lib = koffi.load('libc.so.6');
  const f = <T extends Fn>(decl: string): T => lib.func(decl) as unknown as T;
  sockLibc = {
    bind: f('int bind(int fd, const void *addr, uint32_t len)'),
    connect: f('int connect(int fd, const void *addr, uint32_t len)'),
    listen: f('int listen(int fd, int backlog)'),
    accept4: f('int accept4(int fd, void *addr, void *len, int flags)'),
    shutdown: f('int shutdown(int fd, int how)'),
    send: f('long send(int fd, const void *buf, size_t len, int flags)'),
    recv: f('long recv(int fd, void *buf, size_t len, int flags)'),
    sendmsg: f('long sendmsg(int fd, uintptr_t msg, int flags)'),
    recvmsg: f('long recvmsg(int fd, uintptr_t msg, int flags)'),
  };
  return sockLibc;
}

/** connect(2) to the Unix socket at `path` (sockaddr_un, sun_path at most 107 bytes). */
export function connectUnix(fd: number, path: string): void {
  const p = Buffer.from(path);
  if (p.length === 0 || p.length > 107) throw new RangeError(`Unix socket path '${path}' must be 1..107 bytes`);
  const sa = new Uint8Array(110);
  new DataView(sa.buffer).setUint16(0, AF_UNIX, true);
  sa.set(p, 2);
  check(S().connect(fd, sa, 2 + p.length + 1), `connect(${path})`);
}

// x86-64 layouts: struct msghdr (56 bytes), struct iovec (16), struct cmsghdr (16 + data).
const MSGHDR_SIZE = 56;
const CMSG_HDR = 16;
const cmsgSpace = (nfds: number): number => CMSG_HDR + ((nfds * 4 + 7) & ~7);
const SCRATCH_CTL = 64 + IOVEC_SIZE; // control buffer offset
const SCRATCH_DATA = SCRATCH_CTL + cmsgSpace(SCM_MAX_FD); // data offset

let scratchAddr = 0n;
let scratchSize = 0;
let scratchU8 = new Uint8Array(0);
let scratchDv = new DataView(new ArrayBuffer(0));
function scratch(dataBytes: number): void {
  const need = SCRATCH_DATA + dataBytes;
  if (need <= scratchSize) return;
  if (scratchSize > 0) munmap(scratchAddr, scratchSize);
  scratchSize = 0;
  const size = Math.max(16384, (need + 4095) & ~4095);
  scratchAddr = mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  scratchSize = size;
  const ab = view(scratchAddr, size);
  scratchU8 = new Uint8Array(ab);
  scratchDv = new DataView(ab);
}

function setMsghdr(dataLen: number, ctlLen: number): void {
  const a = Number(scratchAddr);
  const dv = scratchDv;
  scratchU8.fill(0, 0, MSGHDR_SIZE);
  // msghdr: name(0) namelen(8) iov(16) iovlen(24) control(32) controllen(40) flags(48)
  dv.setBigUint64(16, BigInt(a + 64), true);
  dv.setBigUint64(24, 1n, true);
  if (ctlLen > 0) {
    dv.setBigUint64(32, BigInt(a + SCRATCH_CTL), true);
    dv.setBigUint64(40, BigInt(ctlLen), true);
  }
  // iovec at 64
  dv.setBigUint64(64, BigInt(a + SCRATCH_DATA), true);
  dv.setBigUint64(72, BigInt(dataLen), true);
}

/**
 * sendmsg(2) of `bytes` with `fds` attached as one SCM_RIGHTS message (none when empty), with
 * MSG_NOSIGNAL (a peer that went away is EPIPE, not SIGPIPE) plus `flags`. Returns the bytes sent
 * (may be fewer than bytes.length on a stream socket), or -errno.
 */
export function sendmsgFds(fd: number, bytes: Uint8Array, fds: readonly number[], flags = 0): number {
  if (fds.length > SCM_MAX_FD) throw new RangeError(`sendmsg: ${fds.length} fds (at most ${SCM_MAX_FD})`);
  scratch(bytes.length);
  scratchU8.set(bytes, SCRATCH_DATA);
  const ctl = fds.length > 0 ? cmsgSpace(fds.length) : 0;
  setMsghdr(bytes.length, ctl);
  if (ctl > 0) {
    scratchU8.fill(0, SCRATCH_CTL, SCRATCH_CTL + ctl);
    scratchDv.setBigUint64(SCRATCH_CTL, BigInt(CMSG_HDR + fds.length * 4), true);
    scratchDv.setInt32(SCRATCH_CTL + 8, SOL_SOCKET, true);
    scratchDv.setInt32(SCRATCH_CTL + 12, SCM_RIGHTS, true);
    fds.forEach((f, i) => scratchDv.setInt32(SCRATCH_CTL + CMSG_HDR + 4 * i, f, true));
  }
  const r = S().sendmsg(fd, Number(scratchAddr), flags | MSG_NOSIGNAL);
  return r < 0 ? -koffi.errno() : r;
}

/** What recvmsgFds received: `n` bytes (0 at end of stream) or -errno, fds that came with them. */
export interface RecvResult {
  n: number;
  fds: number[];
  /** Some fds did not fit (MSG_CTRUNC): they were closed by the kernel. */
  truncated: boolean;
}

/**
 * recvmsg(2) of up to `buf.length` bytes into `buf`, accepting up to `maxFds` fds (received with
 * MSG_CMSG_CLOEXEC; the caller owns and must close them). `flags` e.g. MSG_DONTWAIT.
 */
export function recvmsgFds(fd: number, buf: Uint8Array, maxFds = SCM_MAX_FD, flags = 0): RecvResult {
  const want = Math.min(Math.max(0, maxFds), SCM_MAX_FD);
  scratch(buf.length);
  const ctl = want > 0 ? cmsgSpace(want) : 0;
  setMsghdr(buf.length, ctl);
  if (ctl > 0) scratchU8.fill(0, SCRATCH_CTL, SCRATCH_CTL + ctl);
  const r = S().recvmsg(fd, Number(scratchAddr), flags | MSG_CMSG_CLOEXEC);
  if (r < 0) return { n: -koffi.errno(), fds: [], truncated: false };
  buf.set(scratchU8.subarray(SCRATCH_DATA, SCRATCH_DATA + r));
  const fds: number[] = [];
  const msgFlags = scratchDv.getInt32(48, true);
  const ctlLen = Number(scratchDv.getBigUint64(40, true));
  // Walk the control messages (CMSG_FIRSTHDR / CMSG_NXTHDR).
  let off = 0;
  while (off + CMSG_HDR <= ctlLen) {
    const len = Number(scratchDv.getBigUint64(SCRATCH_CTL + off, true));
    if (len < CMSG_HDR || off + len > ctlLen) break;
    const level = scratchDv.getInt32(SCRATCH_CTL + off + 8, true);
    const type = scratchDv.getInt32(SCRATCH_CTL + off + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let p = CMSG_HDR; p + 4 <= len; p += 4) fds.push(scratchDv.getInt32(SCRATCH_CTL + off + p, true));
    }
    off += (len + 7) & ~7;
  }
  return { n: r, fds, truncated: (msgFlags & MSG_CTRUNC) !== 0 };
}

/** struct sockaddr_un for `path`; throws RangeError when the path does not fit sun_path. */
export function sockaddrUn(path: string): Uint8Array {
  const bytes = Buffer.from(path, 'utf8');
  if (bytes.length === 0 || bytes.length > UNIX_PATH_MAX || bytes.includes(0)) {
    throw new RangeError(`Unix socket path '${path}' must be 1..${UNIX_PATH_MAX} bytes without NUL`);
  }
  const sa = new Uint8Array(SOCKADDR_UN_SIZE);
  new DataView(sa.buffer).setUint16(0, AF_UNIX, true);
  sa.set(bytes, 2);
  return sa;
}

/** bind(2) to a sockaddr (from sockaddrUn). Throws SysError. */
export function bind(fd: number, addr: Uint8Array): void {
  check(S().bind(fd, addr, addr.byteLength), 'bind');
}

/** listen(2). Throws SysError. */
export function listen(fd: number, backlog: number): void {
  check(S().listen(fd, backlog), 'listen');
}

/** accept4(2) without the peer address: the new fd, or -errno (EAGAIN when none is pending). */
export function accept4Raw(fd: number, flags: number): number {
  const r = S().accept4(fd, null, null, flags);
  return r < 0 ? -koffi.errno() : r;
}

/** connect(2) to a sockaddr: 0, or -errno (EINPROGRESS/EAGAIN on a non-blocking socket). */
export function connectRaw(fd: number, addr: Uint8Array): number {
  const r = S().connect(fd, addr, addr.byteLength);
  return r < 0 ? -koffi.errno() : r;
}

/** shutdown(2): 0 or -errno. */
export function shutdownRaw(fd: number, how: number): number {
  const r = S().shutdown(fd, how);
  return r < 0 ? -koffi.errno() : r;
}

/** send(2) of the first `len` bytes of `buf` with `flags`: bytes sent, or -errno. */
export function sendRaw(fd: number, buf: Uint8Array, len: number, flags: number): number {
  if (!(len >= 0 && len <= buf.byteLength)) throw new RangeError(`send: length ${len} outside a ${buf.byteLength}-byte buffer`);
  const r = (sockLibc ?? S()).send(fd, buf, len, flags);
  return r < 0 ? -koffi.errno() : r;
}

/** recv(2) of up to `len` bytes into `buf` with `flags` (MSG_PEEK: leave them queued): bytes, or -errno. */
export function recvRaw(fd: number, buf: Uint8Array, len: number, flags: number): number {
  if (!(len >= 0 && len <= buf.byteLength)) throw new RangeError(`recv: length ${len} outside a ${buf.byteLength}-byte buffer`);
  const r = (sockLibc ?? S()).recv(fd, buf, len, flags);
  return r < 0 ? -koffi.errno() : r;
}

/** Bytes one API connection read (recvmsgFds) or one client write moves at most. */
export const MSG_CHUNK_MAX = 64 * 1024;

interface PollLibc {
  poll: { async: (fds: number, n: number, timeout: number, cb: (err: unknown, res: number) => void) => void };
}
let pollLibc: PollLibc | null = null;
function P(): PollLibc {
  pollLibc ??= { poll: koffi.load('libc.so.6').func('int poll(uintptr_t fds, unsigned long nfds, int timeout)') as unknown as PollLibc['poll'] };
  return pollLibc;
}

/**
 * poll(2) run on a koffi worker thread, so the event loop keeps running while it waits.
 * `fds` (built with pollFds/pollFdSet) must be native memory that stays put: use
 * `AsyncPollSet`. Resolves with poll's result (negative on failure, e.g. EINTR).
 */
export class AsyncPollSet {
  readonly capacity: number;
  private readonly addr: bigint;
  readonly fds: Int32Array;
  private busy = false;

  constructor(capacity: number) {
    this.capacity = capacity;
    const bytes = Math.max(4096, capacity * 8);
    this.addr = mmap(bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    this.fds = new Int32Array(view(this.addr, bytes), 0, capacity * 2);
    for (let i = 0; i < capacity; i++) this.fds[i * 2] = -1;
  }

  private bytes(): number {
    return Math.max(4096, this.capacity * 8);
  }

  /** Unmap the entries (only when no poll is in flight). */
  dispose(): void {
    if (this.busy) throw new Error('AsyncPollSet: cannot dispose while a poll is in flight');
    munmap(this.addr, this.bytes());
  }

  /** Wait (off the main thread) until one of the first `n` entries is ready or `timeoutMs` passed. */
  wait(n: number, timeoutMs: number): Promise<number> {
    if (this.busy) return Promise.reject(new Error('AsyncPollSet: a poll is already in flight'));
    if (!(n >= 0 && n <= this.capacity)) return Promise.reject(new RangeError(`poll: ${n} entries outside a set of ${this.capacity}`));
    this.busy = true;
    return new Promise((resolve) => {
      (pollLibc ?? P()).poll.async(Number(this.addr), n, timeoutMs, (err, res) => {
        this.busy = false;
        resolve(err !== null && err !== undefined ? -1 : res);
      });
    });
  }
}

// ---------------------------------------------------------------------------------------------
// fcntl: duplicating received fds, making them non-blocking.

export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_DUPFD_CLOEXEC = 1030;

let fcntlFn: ((fd: number, cmd: number, arg: number) => number) | null = null;

/** fcntl(2) with an int argument (fcntl is variadic; on x86-64 a fixed prototype passes it in rdx). */
export function fcntl(fd: number, cmd: number, arg = 0): number {
  fcntlFn ??= koffi.load('libc.so.6').func('int fcntl(int fd, int cmd, int arg)') as unknown as (fd: number, cmd: number, arg: number) => number;
  return check(fcntlFn(fd, cmd, arg), `fcntl(${cmd})`);
}

/** A duplicate of `fd` (O_CLOEXEC, lowest number >= 3), sharing its open file description. */
export function dupCloexec(fd: number): number {
  return fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/** Set O_NONBLOCK on the open file description of `fd`. */
export function setNonblocking(fd: number): void {
  const fl = fcntl(fd, F_GETFL);
  if ((fl & O_NONBLOCK) === 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

// Process confinement (sys/seccomp.ts, sys/landlock.ts, jail/): prctl, raw syscall(2), execve,
// chroot, mount, mknod. Loaded on first use, on the thread that confines the process.

export const PR_SET_NO_NEW_PRIVS = 38;
export const PR_GET_NO_NEW_PRIVS = 39;
export const PR_GET_SECCOMP = 21;
export const O_PATH = 0o10000000;
export const O_DIRECTORY = 0o200000;
export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MS_REMOUNT = 32;
export const MS_BIND = 4096;
export const MS_REC = 16384;
export const MS_PRIVATE = 1 << 18;
export const S_IFCHR = 0o020000;

interface ConfineLibc {
  prctl: (option: number, a2: number, a3: number, a4: number, a5: number) => number;
  syscallPtr: (nr: number, a1: number, a2: number, a3: Uint8Array | null) => number;
  syscallBuf: (nr: number, a1: Uint8Array | null, a2: number, a3: number) => number;
  syscallFdBuf: (nr: number, a1: number, a2: number, a3: Uint8Array | null, a4: number) => number;
  syscallInts: (nr: number, a1: number, a2: number, a3: number) => number;
  execve: (path: string, argv: (string | null)[], envp: (string | null)[]) => number;
  chroot: (path: string) => number;
  chdir: (path: string) => number;
  mount: (src: string | null, target: string, fstype: string | null, flags: number, data: string | null) => number;
  mknod: (path: string, mode: number, dev: number) => number;
  seccomp: (nr: number, op: number, flags: number, prog: { len: number; filter: Uint8Array }) => number;
  fcntl: (fd: number, cmd: number, arg: number) => number;
}

let confineLibc: ConfineLibc | null = null;
let sockFprogName: string | null = null;
function sockFprog(): string {
  if (sockFprogName === null) {
    koffi.struct('stv_sock_fprog', { len: 'uint16_t', filter: 'const void *' });
    sockFprogName = 'stv_sock_fprog';
  }
  return sockFprogName;
}

function C(): ConfineLibc {
  if (confineLibc !== null) return confineLibc;
  const lib = koffi.load('libc.so.6');
  const f = <T extends Fn>(decl: string): T => lib.func(decl) as unknown as T;
  confineLibc = {
    prctl: f('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)'),
    // syscall(2) is variadic; on x86-64 SysV fixed prototypes pass integer/pointer arguments in
    // the same registers (rdi, rsi, rdx, rcx, r8), as for ioctl above.
    syscallPtr: f('long syscall(long nr, long a1, long a2, void *a3)'),
    syscallBuf: f('long syscall(long nr, void *a1, long a2, long a3)'),
    syscallFdBuf: f('long syscall(long nr, long a1, long a2, void *a3, long a4)'),
    syscallInts: f('long syscall(long nr, long a1, long a2, long a3)'),
    execve: f('int execve(const char *path, const char **argv, const char **envp)'),
    chroot: f('int chroot(const char *path)'),
    chdir: f('int chdir(const char *path)'),
    mount: f('int mount(const char *src, const char *target, const char *fstype, unsigned long flags, const char *data)'),
    mknod: f('int mknod(const char *path, uint32_t mode, uint64_t dev)'),
    // struct sock_fprog (linux/filter.h): unsigned short len; struct sock_filter *filter.
    seccomp: f(`long syscall(long nr, long op, long flags, const ${sockFprog()} *prog)`),
    fcntl: f('int fcntl(int fd, int cmd, long arg)'),
  };
  return confineLibc;
}

/** prctl(2) with integer arguments. Returns the result; throws SysError naming `name`. */
export function prctl(option: number, a2 = 0, a3 = 0, a4 = 0, a5 = 0, name = `prctl(${option})`): number {
  return check(C().prctl(option, a2, a3, a4, a5), name);
}

/**
 * Raw syscall(2) shapes for calls glibc 2.36 has no wrapper for (seccomp, landlock_*).
 * Each returns the result, or `-errno` on failure.
 */
export function syscallIntIntBuf(nr: number, a1: number, a2: number, a3: Uint8Array | null): number {
  const r = C().syscallPtr(nr, a1, a2, a3);
  return r < 0 ? -koffi.errno() : r;
}
export function syscallBufIntInt(nr: number, a1: Uint8Array | null, a2: number, a3: number): number {
  const r = C().syscallBuf(nr, a1, a2, a3);
  return r < 0 ? -koffi.errno() : r;
}
export function syscallIntIntBufInt(nr: number, a1: number, a2: number, a3: Uint8Array | null, a4: number): number {
  const r = C().syscallFdBuf(nr, a1, a2, a3, a4);
  return r < 0 ? -koffi.errno() : r;
}
export function syscallInts(nr: number, a1: number, a2: number, a3: number): number {
  const r = C().syscallInts(nr, a1, a2, a3);
  return r < 0 ? -koffi.errno() : r;
}

const F_GETFD = 1;
const F_SETFD = 2;
const FD_CLOEXEC = 1;

/** Clear FD_CLOEXEC on `fd` so it survives execve (stdio, an inherited --api-socket fd=). */
export function clearCloexec(fd: number): void {
  const flags = check(C().fcntl(fd, F_GETFD, 0), 'fcntl(F_GETFD)');
  if (flags & FD_CLOEXEC) check(C().fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC), 'fcntl(F_SETFD)');
}

/** execve(2): replaces the process (all threads) on success; returns `-errno` on failure. */
export function execve(path: string, argv: readonly string[], env: readonly string[]): number {
  C().execve(path, [...argv, null], [...env, null]);
  return -koffi.errno();
}

export function chroot(path: string): void {
  check(C().chroot(path), `chroot(${path})`);
}

export function chdir(path: string): void {
  check(C().chdir(path), `chdir(${path})`);
}

/** mount(2). Throws SysError naming the target. */
export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null = null): void {
  check(C().mount(source, target, fstype, flags, data), `mount(${target})`);
}

/** mknod(2) of a character device `major:minor` (makedev, glibc's 64-bit dev_t encoding). */
export function mknodChar(path: string, mode: number, major: number, minor: number): void {
  const dev = ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & ~0xff) << 12);
  check(C().mknod(path, S_IFCHR | (mode & 0o7777), dev), `mknod(${path})`);
}

/** x86-64 __NR_seccomp. */
const NR_SECCOMP = 317;

/**
 * seccomp(2) SECCOMP_SET_MODE_FILTER (op 1) with `filter` holding `count` struct sock_filter.
 * Returns 0, a thread id (TSYNC could not sync that thread), or `-errno`.
 */
export function seccompSetModeFilter(flags: number, filter: Uint8Array, count: number): number {
  if (!(count > 0 && count <= 0xffff && count * 8 <= filter.byteLength)) throw new RangeError(`seccomp: ${count} instructions outside a ${filter.byteLength}-byte program`);
  const r = C().seccomp(NR_SECCOMP, 1, flags, { len: count, filter });
  return r < 0 ? -koffi.errno() : r;
}
