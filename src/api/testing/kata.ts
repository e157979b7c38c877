// Request bodies exactly as Kata Containers' Cloud Hypervisor drivers send them, for tests.
//
// Source: github.com/kata-containers/kata-containers at 7c6ba40c54ea (2026-08-22):
//   src/runtime/virtcontainers/clh.go  CreateVM (vmconfig), addVSock, addVolume, addNet,
//                                      vmAddNetPutRequest (vm.add-net + SCM_RIGHTS)
//   src/runtime/virtcontainers/pkg/cloud-hypervisor/client/model_*.go  the generated
//     constructors (NewVmConfig, NewMemoryConfig, NewCpusConfig, NewConsoleConfig,
//     NewPlatformConfig, NewRngConfig, NewVsockConfig, NewFsConfig, NewNetConfig) set the
//     schema defaults as pointers, and MarshalJSON emits every non-nil pointer plus the
//     required fields: so the defaults (false, "Acpi", ...) are all on the wire.
// The configuration is Kata's default for an initrd guest: 1 boot vCPU, shared_fs
// virtio-fs, not confidential, no IOMMU, no hugepages, debug off (serial and console Off).
// Kata sends serial as a ConsoleConfig (with `iommu`), which CH's SerialConfig does not
// have: CH ignores the field.

/** Host-dependent values Kata fills in (kernel/initrd paths, sizes, socket paths). */
export interface KataGoVmOptions {
  kernel: string;
  initramfs: string;
  /** Extra kernel parameters (Kata's kernel_params), appended after Kata's own. */
  kernelParams?: string;
  /** default_memory (MiB). Kata's default: 2048. */
  memoryMiB?: number;
  /** default_maxmemory (MiB): hotplug_size. Kata's default: the host's memory. */
  maxMemoryMiB?: number;
  /** default_maxvcpus: max_vcpus and cores_per_die. Kata's default: the host's CPUs. */
  maxVcpus?: number;
  /** VMStorePath/<sandbox id>: where clh.sock and virtiofsd.sock live. */
  sandboxDir?: string;
  /**
   * Kata's debug mode (enable_debug): serial Tty with `console=ttyS0,115200n8
   * systemd.log_target=console` instead of `quiet` (clhDebugKernelParams). Default false.
   */
  debug?: boolean;
}

/** The vm.create body (VmConfig) of Kata's Go runtime, as json.Marshal(clh.vmconfig) writes it. */
export function kataGoVmCreateBody(o: KataGoVmOptions): Record<string, unknown> {
  const mem = o.memoryMiB ?? 2048;
  const maxVcpus = o.maxVcpus ?? 1;
  const dir = o.sandboxDir ?? '/run/vc/vm/8a3f0c5e2b7d4e19a6c1f0d2b3e4a5c6';
  const kataParams = o.debug === true ? 'panic=1 no_timer_check noreplace-smp console=ttyS0,115200n8 systemd.log_target=console' : 'panic=1 no_timer_check noreplace-smp quiet';
  const cmdline = [kataParams, o.kernelParams ?? ''].join(' ').trim();
  return {
    // NewVmConfig(*NewPayloadConfig()) defaults
    iommu: false,
    watchdog: false,
    pvpanic: false,
    landlock_enable: false,
    payload: { kernel: o.kernel, cmdline, initramfs: o.initramfs },
    // NewPlatformConfig(): tdx, sev_snp false; SetNumPciSegments(2)
    platform: { num_pci_segments: 2, tdx: false, sev_snp: false },
    // NewMemoryConfig(size): mergeable, hotplug_method, shared, hugepages, prefault, thp
    memory: {
      size: mem * 1024 * 1024,
      hotplug_size: (o.maxMemoryMiB ?? mem) * 1024 * 1024,
      mergeable: false,
      hotplug_method: 'Acpi',
      shared: true,
      hugepages: false,
      prefault: false,
      thp: true,
    },
    // NewCpusConfig(boot, max): kvm_hyperv false, nested true; topology set by CreateVM
    cpus: {
      boot_vcpus: 1,
      max_vcpus: maxVcpus,
      kvm_hyperv: false,
      nested: true,
      topology: { threads_per_core: 1, cores_per_die: maxVcpus, dies_per_package: 1, packages: 1 },
    },
    rng: { src: '/dev/urandom', iommu: false },
    serial: { mode: o.debug === true ? 'Tty' : 'Off', iommu: false },
    console: { mode: 'Off', iommu: false },
    // addVSock(defaultGuestVSockCID = 3, <sandbox>/clh.sock)
    vsock: { cid: 3, socket: `${dir}/clh.sock`, iommu: false },
    // addVolume: NewFsConfig("kataShared", <sandbox>/virtiofsd.sock, 1, 1024), pci_segment 1
    fs: [{ tag: 'kataShared', socket: `${dir}/virtiofsd.sock`, num_queues: 1, queue_size: 1024, pci_segment: 1 }],
  };
}

/**
 * The vm.add-net body (NetConfig) of Kata's Go runtime (addNet: NewNetConfig() + mac + iommu).
 * It carries no `fds`: the tap fds go with the request bytes in one sendmsg (SCM_RIGHTS),
 * one per queue pair (num_queues 2: one fd).
 */
export function kataGoAddNetBody(mac: string): Record<string, unknown> {
  return {
    ip: '192.168.249.1',
    mask: '255.255.255.0',
    mac,
    iommu: false,
    num_queues: 2,
    queue_size: 256,
    vhost_user: false,
    vhost_mode: 'Client',
    offload_tso: true,
    offload_ufo: true,
    offload_csum: true,
  };
}

/**
 * The raw request Kata's vmAddNetPutRequest writes (httputil.DumpRequest of a PUT with
 * Accept, Content-Type and Content-Length: Host first, then the headers sorted by name).
 */
export function kataGoAddNetRequest(mac: string): Buffer {
  const body = JSON.stringify(kataGoAddNetBody(mac));
  return Buffer.from(
    'PUT /api/v1/vm.add-net HTTP/1.1\r\n' +
      'Host: localhost\r\n' +
      'Accept: application/json\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Content-Type: application/json\r\n' +
      '\r\n' +
      body,
  );
}

/** Kata's Rust runtime resize body (runtime-rs ch-config VmResize: Option fields as null). */
export const KATA_RS_RESIZE_BODY = { desired_vcpus: 2, desired_ram: null, desired_balloon: null };
