// stvio: the test guest's I/O benchmark tool (built with `gcc -O2 -static` by
// scripts/lib/images.mjs, installed as /bin/stvio in the initramfs). Each mode prints one marker
// @@stv:io-MODE:VALUE@@ (or @@stv:io-error:MODE:WHY@@ and exits 1), so the host parses results
// the same way as every other guest report.
//
//   stvio seqwrite DEV MIB BS_KIB     O_DIRECT sequential writes over the first MIB MiB, then
//                                     fdatasync; prints MB/s (1 MB = 10^6 bytes)
//   stvio seqread  DEV MIB BS_KIB     O_DIRECT sequential reads; prints MB/s
//   stvio randread DEV MIB SECONDS    4 KiB O_DIRECT reads at random 4 KiB-aligned offsets within
//                                     the first MIB MiB, queue depth 1, for SECONDS; prints IOPS
//   stvio tcpsend HOST PORT MIB       connect (retrying up to 60 s), send MIB MiB, shut down the
//                                     write side, wait for the peer to close; prints MB/s
//   stvio tcprecv HOST PORT           connect (retrying up to 60 s), read until EOF; prints MB/s
//                                     and the byte count as "MBPS:BYTES"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *mode = "?";

static void fail(const char *what) {
  printf("@@stv:io-error:%s:%s: %s@@\n", mode, what, strerror(errno));
  fflush(stdout);
  exit(1);
}

static void failmsg(const char *what) {
  printf("@@stv:io-error:%s:%s@@\n", mode, what);
  fflush(stdout);
  exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long num(const char *s) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v <= 0) failmsg("bad number argument");
  return v;
}

static void *aligned(size_t n) {
  void *p;
  if (posix_memalign(&p, 4096, n)) failmsg("out of memory");
  return p;
}

static void seq(const char *dev, long mib, long bs_kib, int write) {
  size_t bs = (size_t)bs_kib * 1024;
  uint64_t total = (uint64_t)mib << 20;
  int fd = open(dev, (write ? O_WRONLY : O_RDONLY) | O_DIRECT);
  if (fd < 0) fail("open");
  unsigned char *buf = aligned(bs);
  for (size_t i = 0; i < bs; i++) buf[i] = (unsigned char)(i * 131 + 7);
  double t0 = now();
  for (uint64_t off = 0; off < total; off += bs) {
    ssize_t n = write ? pwrite(fd, buf, bs, (off_t)off) : pread(fd, buf, bs, (off_t)off);
    if (n < 0) fail(write ? "pwrite" : "pread");
    if ((size_t)n != bs) failmsg(write ? "short write (device smaller than the region?)" : "short read (device smaller than the region?)");
  }
  if (write && fdatasync(fd)) fail("fdatasync");
  double dt = now() - t0;
  close(fd);
  printf("@@stv:io-%s:%.1f@@\n", mode, (double)total / 1e6 / dt);
}

static void randread(const char *dev, long mib, long seconds) {
  uint64_t blocks = ((uint64_t)mib << 20) / 4096;
  int fd = open(dev, O_RDONLY | O_DIRECT);
  if (fd < 0) fail("open");
  unsigned char *buf = aligned(4096);
  uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
  uint64_t ops = 0;
  double t0 = now(), t;
  do {
    for (int i = 0; i < 16; i++) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;  // xorshift64
      off_t off = (off_t)((x % blocks) * 4096);
      ssize_t n = pread(fd, buf, 4096, off);
      if (n < 0) fail("pread");
      if (n != 4096) failmsg("short read");
      ops++;
    }
    t = now();
  } while (t - t0 < seconds);
  close(fd);
  printf("@@stv:io-%s:%.0f@@\n", mode, ops / (t - t0));
}

static int tcp_connect(const char *host, long port) {
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) failmsg("bad IPv4 address");
  double deadline = now() + 60;
  for (;;) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) fail("socket");
    struct timeval tv = { .tv_sec = 60 };
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0) return s;
    int e = errno;
    close(s);
    if (now() > deadline) { errno = e; fail("connect"); }
    usleep(250 * 1000);
  }
}

static void tcpsend(const char *host, long port, long mib) {
  size_t chunk = 64 * 1024;
  uint64_t total = (uint64_t)mib << 20;
  unsigned char *buf = aligned(chunk);
  for (size_t i = 0; i < chunk; i++) buf[i] = (unsigned char)(i * 131 + 7);
  int s = tcp_connect(host, port);
  double t0 = now();
  for (uint64_t sent = 0; sent < total;) {
    size_t want = total - sent < chunk ? (size_t)(total - sent) : chunk;
    ssize_t n = send(s, buf, want, MSG_NOSIGNAL);
    if (n < 0) { if (errno == EINTR) continue; fail("send"); }
    sent += (uint64_t)n;
  }
  if (shutdown(s, SHUT_WR)) fail("shutdown");
  // The peer closes once it has read everything: only then is the data really across.
  for (;;) {
    ssize_t n = recv(s, buf, chunk, 0);
    if (n == 0) break;
    if (n < 0) { if (errno == EINTR) continue; fail("recv (waiting for the peer to close)"); }
  }
  double dt = now() - t0;
  close(s);
  printf("@@stv:io-%s:%.1f@@\n", mode, (double)total / 1e6 / dt);
}

static void tcprecv(const char *host, long port) {
  size_t chunk = 256 * 1024;
  unsigned char *buf = aligned(chunk);
  int s = tcp_connect(host, port);
  uint64_t got = 0;
  double t0 = now();
  for (;;) {
    ssize_t n = recv(s, buf, chunk, 0);
    if (n == 0) break;
    if (n < 0) { if (errno == EINTR) continue; fail("recv"); }
    got += (uint64_t)n;
  }
  double dt = now() - t0;
  close(s);
  if (!got) failmsg("the peer sent nothing");
  printf("@@stv:io-%s:%.1f:%llu@@\n", mode, (double)got / 1e6 / dt, (unsigned long long)got);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) failmsg("usage: stvio seqwrite|seqread|randread|tcpsend|tcprecv ARGS");
  mode = argv[1];
  if (!strcmp(mode, "seqwrite") && argc == 5) seq(argv[2], num(argv[3]), num(argv[4]), 1);
  else if (!strcmp(mode, "seqread") && argc == 5) seq(argv[2], num(argv[3]), num(argv[4]), 0);
  else if (!strcmp(mode, "randread") && argc == 5) randread(argv[2], num(argv[3]), num(argv[4]));
  else if (!strcmp(mode, "tcpsend") && argc == 5) tcpsend(argv[2], num(argv[3]), num(argv[4]));
  else if (!strcmp(mode, "tcprecv") && argc == 4) tcprecv(argv[2], num(argv[3]));
  else failmsg("bad arguments (see guest/tools/stvio.c)");
  return 0;
}
