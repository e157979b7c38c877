// stvsock: the test guest's AF_VSOCK tool (built with `gcc -O2 -static` by scripts/lib/images.mjs,
// installed as /bin/stvsock). Reports are markers @@stv:vsock-EVENT:DATA@@; checksums are SHA-256
// (FIPS 180-4) in hex, so the host compares them with node:crypto.
//
//   stvsock serve PORT [MAX]        listen on port PORT (any CID); for each connection: read until
//                                   EOF, then send as many bytes of its own (pseudo-random) data,
//                                   shut down, close. Prints vsock-listening:PORT once listening and
//                                   vsock-served:PORT:RXBYTES:RXSHA:TXBYTES:TXSHA per connection
//                                   (vsock-conn-failed:PORT:WHY for one that broke). Exits after
//                                   MAX connections (default: never).
//   stvsock count PORT              the benchmark's listener (bench/vsock.ts): like serve, but
//                                   without checksums or generated data, so the guest's CPU does
//                                   not bound the figures: read until EOF counting, send as many
//                                   zero bytes, shut down, close; no marker per connection.
//   stvsock connect CID PORT BYTES  connect to CID:PORT, send BYTES bytes, shut down the write
//                                   side, read until EOF. Prints
//                                   vsock-connected:PORT:TXBYTES:TXSHA:RXBYTES:RXSHA, or
//                                   vsock-connect-failed:PORT:WHY.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

// ---- SHA-256 (FIPS 180-4, 6.2) --------------------------------------------------------------

typedef struct {
  uint32_t h[8];
  uint64_t bytes;
  uint8_t block[64];
  size_t fill;
} sha256_t;

static const uint32_t K[64] = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_init(sha256_t *s) {
  static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, h0, sizeof h0);
  s->bytes = 0;
  s->fill = 0;
}

static void sha256_block(sha256_t *s, const uint8_t *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
  }
  s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha256_update(sha256_t *s, const uint8_t *p, size_t n) {
  s->bytes += n;
  while (n > 0) {
    if (s->fill == 0 && n >= 64) { sha256_block(s, p); p += 64; n -= 64; continue; }
    size_t k = 64 - s->fill < n ? 64 - s->fill : n;
    memcpy(s->block + s->fill, p, k);
    s->fill += k; p += k; n -= k;
    if (s->fill == 64) { sha256_block(s, s->block); s->fill = 0; }
  }
}

static void sha256_hex(sha256_t *s, char out[65]) {
  uint64_t bits = s->bytes * 8;
  uint8_t pad = 0x80;
  uint64_t total = s->bytes;
  sha256_update(s, &pad, 1);
  uint8_t zero = 0;
  while (s->fill != 56) sha256_update(s, &zero, 1);
  uint8_t len[8];
  for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
  sha256_update(s, len, 8);
  s->bytes = total;
  for (int i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", s->h[i]);
}

// ---- data -----------------------------------------------------------------------------------

static uint64_t rng_state;

static void fill_random(uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i += 8) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17; // xorshift64
    uint64_t v = rng_state;
    for (size_t k = 0; k < 8 && i + k < n; k++) p[i + k] = (uint8_t)(v >> (8 * k));
  }
}

static uint8_t buf[64 * 1024];

/** Read until EOF, hashing; -1 on an error (errno set). */
static long long read_all(int fd, sha256_t *h) {
  long long total = 0;
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0) { if (errno == EINTR) continue; return -1; }
    if (r == 0) return total;
    sha256_update(h, buf, (size_t)r);
    total += r;
  }
}

/** Send `n` generated bytes, hashing; -1 on an error. */
static int send_n(int fd, long long n, sha256_t *h) {
  while (n > 0) {
    size_t k = n < (long long)sizeof buf ? (size_t)n : sizeof buf;
    fill_random(buf, k);
    sha256_update(h, buf, k);
    size_t off = 0;
    while (off < k) {
      ssize_t w = send(fd, buf + off, k - off, MSG_NOSIGNAL);
      if (w < 0) { if (errno == EINTR) continue; return -1; }
      off += (size_t)w;
    }
    n -= (long long)k;
  }
  return 0;
}

static int serve(unsigned port, long max) {
  int ls = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (ls < 0) { printf("@@stv:vsock-error:socket(AF_VSOCK): %s@@\n", strerror(errno)); return 1; }
  struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY};
  if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 16) < 0) {
    printf("@@stv:vsock-error:listen on port %u: %s@@\n", port, strerror(errno));
    return 1;
  }
  printf("@@stv:vsock-listening:%u@@\n", port);
  fflush(stdout);
  for (long served = 0; max <= 0 || served < max; served++) {
    int fd = accept(ls, NULL, NULL);
    if (fd < 0) { if (errno == EINTR) { served--; continue; } printf("@@stv:vsock-error:accept: %s@@\n", strerror(errno)); return 1; }
    sha256_t rx, tx;
    sha256_init(&rx);
    sha256_init(&tx);
    char rxs[65], txs[65];
    long long got = read_all(fd, &rx);
    if (got < 0 || send_n(fd, got, &tx) < 0) {
      printf("@@stv:vsock-conn-failed:%u:%s@@\n", port, strerror(errno));
    } else {
      shutdown(fd, SHUT_WR);
      sha256_hex(&rx, rxs);
      sha256_hex(&tx, txs);
      printf("@@stv:vsock-served:%u:%lld:%s:%lld:%s@@\n", port, got, rxs, got, txs);
    }
    fflush(stdout);
    close(fd);
  }
  return 0;
}

static uint8_t zeros[64 * 1024];

static int count(unsigned port) {
  int ls = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (ls < 0) { printf("@@stv:vsock-error:socket(AF_VSOCK): %s@@\n", strerror(errno)); return 1; }
  struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY};
  if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 16) < 0) {
    printf("@@stv:vsock-error:listen on port %u: %s@@\n", port, strerror(errno));
    return 1;
  }
  printf("@@stv:vsock-listening:%u@@\n", port);
  fflush(stdout);
  for (;;) {
    int fd = accept(ls, NULL, NULL);
    if (fd < 0) { if (errno == EINTR) continue; printf("@@stv:vsock-error:accept: %s@@\n", strerror(errno)); return 1; }
    long long got = 0;
    for (;;) {
      ssize_t r = read(fd, buf, sizeof buf);
      if (r < 0) { if (errno == EINTR) continue; got = -1; break; }
      if (r == 0) break;
      got += r;
    }
    for (long long left = got; left > 0;) {
      ssize_t w = send(fd, zeros, left < (long long)sizeof zeros ? (size_t)left : sizeof zeros, MSG_NOSIGNAL);
      if (w < 0) { if (errno == EINTR) continue; printf("@@stv:vsock-conn-failed:%u:%s@@\n", port, strerror(errno)); break; }
      left -= w;
    }
    if (got < 0) printf("@@stv:vsock-conn-failed:%u:%s@@\n", port, strerror(errno));
    shutdown(fd, SHUT_WR);
    close(fd);
  }
}

static int connect_to(unsigned cid, unsigned port, long long n) {
  int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
  struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = cid};
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    printf("@@stv:vsock-connect-failed:%u:%s@@\n", port, strerror(errno));
    return 1;
  }
  sha256_t rx, tx;
  sha256_init(&rx);
  sha256_init(&tx);
  char rxs[65], txs[65];
  if (send_n(fd, n, &tx) < 0) { printf("@@stv:vsock-connect-failed:%u:send: %s@@\n", port, strerror(errno)); return 1; }
  shutdown(fd, SHUT_WR);
  long long got = read_all(fd, &rx);
  if (got < 0) { printf("@@stv:vsock-connect-failed:%u:read: %s@@\n", port, strerror(errno)); return 1; }
  close(fd);
  sha256_hex(&rx, rxs);
  sha256_hex(&tx, txs);
  printf("@@stv:vsock-connected:%u:%lld:%s:%lld:%s@@\n", port, n, txs, got, rxs);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  struct timeval tv;
  gettimeofday(&tv, NULL);
  rng_state = ((uint64_t)tv.tv_sec << 20 ^ (uint64_t)tv.tv_usec ^ (uint64_t)getpid() << 40) | 1;
  if (argc >= 3 && strcmp(argv[1], "serve") == 0) return serve((unsigned)strtoul(argv[2], NULL, 10), argc >= 4 ? strtol(argv[3], NULL, 10) : 0);
  if (argc == 3 && strcmp(argv[1], "count") == 0) return count((unsigned)strtoul(argv[2], NULL, 10));
  if (argc == 5 && strcmp(argv[1], "connect") == 0) {
    return connect_to((unsigned)strtoul(argv[2], NULL, 10), (unsigned)strtoul(argv[3], NULL, 10), strtoll(argv[4], NULL, 10));
  }
  fprintf(stderr, "usage: stvsock serve PORT [MAX] | stvsock count PORT | stvsock connect CID PORT BYTES\n");
  return 2;
}
