// The host side of bench/vsock.ts, the same code for both VMMs: AF_VSOCK to QEMU's vhost-vsock
// guest, or Stratovisor's hybrid Unix socket (`CONNECT <port>\n` -> `OK <hostport>\n`).
//   vsock_host vsock CID|unix PATH  PORT BYTES CONNS DONEPORT
// One stream: BYTES host->guest, half-close, the guest's BYTES back (stvsock count); then CONNS
// connections of 1 byte each; then one connection to DONEPORT. Prints
//   h2g_mbs X g2h_mbs Y  and per connection: conn_ms C first_byte_ms F
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int use_unix;
static const char *path;
static unsigned cid;
static char buf[256 * 1024];

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void die(const char *w) { fprintf(stderr, "vsock_host: %s: %s\n", w, strerror(errno)); exit(1); }

static int open_to(unsigned port) {
  int fd;
  if (use_unix) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect(unix)");
    char line[32];
    int n = snprintf(line, sizeof line, "CONNECT %u\n", port);
    if (write(fd, line, n) != n) die("write CONNECT");
    char c; int k = 0; char ok[64];
    for (;;) {
      ssize_t r = read(fd, &c, 1);
      if (r <= 0) { errno = r ? errno : ECONNRESET; die("read OK"); }
      if (c == '\n') break;
      if (k < 63) ok[k++] = c;
    }
    ok[k] = 0;
    if (strncmp(ok, "OK ", 3)) { fprintf(stderr, "vsock_host: answer %s\n", ok); exit(1); }
  } else {
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = cid};
    fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect(vsock)");
  }
  return fd;
}

int main(int argc, char **argv) {
  if (argc != 7) { fprintf(stderr, "usage: vsock_host vsock CID|unix PATH PORT BYTES CONNS DONEPORT\n"); return 2; }
  use_unix = !strcmp(argv[1], "unix");
  if (use_unix) path = argv[2]; else cid = (unsigned)strtoul(argv[2], NULL, 10);
  unsigned port = (unsigned)strtoul(argv[3], NULL, 10);
  long long bytes = strtoll(argv[4], NULL, 10);
  int conns = atoi(argv[5]);
  unsigned done = (unsigned)strtoul(argv[6], NULL, 10);
  memset(buf, 0x5a, sizeof buf);

  int fd = open_to(port);
  double t0 = now();
  for (long long left = bytes; left > 0;) {
    ssize_t w = write(fd, buf, left < (long long)sizeof buf ? (size_t)left : sizeof buf);
    if (w < 0) { if (errno == EINTR) continue; die("write"); }
    left -= w;
  }
  shutdown(fd, SHUT_WR);
  long long got = 0; double t1 = 0;
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0) { if (errno == EINTR) continue; die("read"); }
    if (r == 0) break;
    if (!got) t1 = now();
    got += r;
  }
  double t2 = now();
  close(fd);
  if (got != bytes) { fprintf(stderr, "vsock_host: sent %lld bytes, got %lld back\n", bytes, got); return 1; }
  printf("h2g_mbs %.2f g2h_mbs %.2f\n", bytes / (t1 - t0) / 1e6, bytes / (t2 - t1) / 1e6);
  for (int i = 0; i < conns; i++) {
    double a = now();
    int c = open_to(port);
    double b = now();
    char x = 1;
    if (write(c, &x, 1) != 1) die("write 1");
    shutdown(c, SHUT_WR);
    if (read(c, &x, 1) != 1) die("read 1");
    double d = now();
    close(c);
    printf("conn_ms %.3f first_byte_ms %.3f\n", (b - a) * 1e3, (d - a) * 1e3);
  }
  int c = open_to(done);
  if (write(c, "done", 4) != 4) die("write done");
  shutdown(c, SHUT_WR);
  while (read(c, buf, sizeof buf) > 0) {}
  close(c);
  return 0;
}
