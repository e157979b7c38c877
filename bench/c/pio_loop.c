// C reference for bench/pio-exits.ts: a real-mode guest doing `out 0x10, al; jmp $-2` forever,
// run for N KVM_RUN calls with the same ioctls as the TypeScript backend.
// Build: cc -O2 -o pio_loop pio_loop.c   Run: ./pio_loop [N]   Prints: exits_per_sec <value>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define CHECK(x) do { if ((x) < 0) { perror(#x); exit(1); } } while (0)

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 200000;
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  CHECK(kvm);
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  CHECK(vm);
  size_t memsz = 2 << 20;
  uint8_t *mem = mmap(NULL, memsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) { perror("mmap"); return 1; }
  struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0, .memory_size = memsz, .userspace_addr = (uint64_t)mem };
  CHECK(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r));
  const uint8_t code[] = { 0xe6, 0x10, 0xeb, 0xfc }; // out 0x10, al; jmp -4
  memcpy(mem + 0x1000, code, sizeof code);
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  CHECK(vcpu);
  int mmsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  CHECK(mmsz);
  struct kvm_run *run = mmap(NULL, mmsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) { perror("mmap run"); return 1; }
  struct kvm_sregs s;
  CHECK(ioctl(vcpu, KVM_GET_SREGS, &s));
  s.cs.base = 0; s.cs.selector = 0;
  s.ds.base = 0; s.ds.selector = 0;
  CHECK(ioctl(vcpu, KVM_SET_SREGS, &s));
  struct kvm_regs regs;
  CHECK(ioctl(vcpu, KVM_GET_REGS, &regs));
  regs.rip = 0x1000; regs.rflags = 2; regs.rax = 0x42;
  CHECK(ioctl(vcpu, KVM_SET_REGS, &regs));

  struct timespec t0, t1;
  uint64_t sum = 0;
  for (int pass = 0; pass < 2; pass++) { // pass 0 warms up
    long iters = pass == 0 ? n / 10 : n;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < iters; i++) {
      if (ioctl(vcpu, KVM_RUN, 0) < 0) { if (errno == EINTR) continue; perror("KVM_RUN"); return 1; }
      if (run->exit_reason != KVM_EXIT_IO || run->io.port != 0x10 || run->io.direction != KVM_EXIT_IO_OUT) {
        fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
        return 1;
      }
      sum += ((uint8_t *)run)[run->io.data_offset];
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
  }
  double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("exits_per_sec %.0f\n", n / secs);
  fprintf(stderr, "checksum %llu\n", (unsigned long long)sum);
  return 0;
}
