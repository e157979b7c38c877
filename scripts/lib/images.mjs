// Guest images built from Debian packages only: the stock kernel (bzImage as shipped and the
// vmlinux ELF inside it, for PVH boot), a busybox-static initramfs with the virtio/ext4/vsock
// modules, the KVM sandbox's own initramfs, and ext4 disk images made with `mke2fs -d`.
// Everything lands in .cache/images (git-ignored) and is rebuilt when an input changes.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync, statSync, renameSync, readdirSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { CpioWriter } from './cpio.mjs';
import { loadModuleIndex, resolveModules } from './modules.mjs';
import { resolveKernel, DEFAULT_KERNEL } from './kernels.mjs';
import { ensurePackages } from './deps.mjs';

export const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CACHE = join(REPO, '.cache');
const GUEST_DIR = join(REPO, 'guest');

/**
 * Modules the test guest loads: virtio over PCI, the devices, ext4, vsock, virtio-balloon and
 * virtio-pmem (virtio_pmem registers an nvdimm region, libnvdimm's nd_pmem makes it /dev/pmemN; modules.dep
 * does not say that nd_pmem is needed). modules.dep has no
 * soft dependencies: ext4 and jbd2 declare `softdep pre: crypto-crc32c` (modules.softdep), which
 * Debian builds as a module, and mounting an ext4 with metadata_csum (mke2fs's default) fails
 * without it ("Cannot load crc32c driver"), so crc32c_generic is listed, before ext4.
 */
export const GUEST_MODULES = [
  'virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_console', 'virtio_rng',
  'vmw_vsock_virtio_transport', 'virtiofs', 'crc32c_generic', 'ext4',
  'virtio_pmem', 'nd_pmem', 'virtio_balloon', 'virtio_mem',
  // The ACPI power button (PNP0C0C, vm.power-button) as an input device, for guest/init's acpid.
  'button', 'evdev',
];
/** Modules the sandbox loads: virtio-9p for the host's root, KVM on AMD SVM, and tun for the
 * e2e tests' and benchmarks' tap devices; vhost_vsock for QEMU's vhost-vsock-pci (bench/vsock.ts). */
export const SANDBOX_MODULES = ['virtio_pci', '9pnet_virtio', '9p', 'kvm_amd', 'virtio_net', 'virtio_blk', 'ext4', 'tun', 'vhost_vsock'];

/** gcc and libc6-dev build the guest's static C tools (guest/tools/*.c); e2fsprogs makes and
 * inspects ext4 images (mke2fs -d, debugfs, e2fsck). */
// qemu-system-common: /usr/lib/qemu/virtiofsd, the vhost-user back-end of the virtio-fs e2e test;
// zstd and kmod (depmod) for Debian 6.12's kernel (zstd bzImage payload, unpacked tree).
export const GUEST_PACKAGES = ['linux-image-amd64', 'busybox-static', 'xz-utils', 'zstd', 'kmod', 'e2fsprogs', 'gcc', 'libc6-dev', 'qemu-system-common'];

export class ImageError extends Error {}

function fileStamp(path) {
  const st = statSync(path);
  return `${path}:${st.size}:${st.mtimeMs}`;
}

function hashOf(parts) {
  const h = createHash('sha256');
  for (const p of parts) h.update(String(p)).update('\0');
  return h.digest('hex').slice(0, 16);
}

function writeAtomic(path, data) {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

/** True when an ELF file has no PT_INTERP program header, i.e. it is statically linked. */
function isStaticElf(path) {
  const b = readFileSync(path);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2) return false;
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > b.length) return false;
    if (b.readUInt32LE(off) === 3 /* PT_INTERP */) return false;
  }
  return true;
}

function busyboxPath() {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) {
    if (existsSync(p) && isStaticElf(p)) return p;
  }
  throw new ImageError('no static busybox found (install the busybox-static Debian package)');
}

/**
 * Extract the vmlinux ELF from a bzImage: the setup header's payload_offset/payload_length
 * (boot.rst, protocol 2.08+) locate the compressed kernel after the setup sectors.
 */
export function extractVmlinux(bzImage) {
  if (bzImage.length < 0x268 || bzImage.readUInt32LE(0x202) !== 0x53726448) {
    throw new ImageError('not a bzImage: setup header magic "HdrS" missing');
  }
  let setupSects = bzImage[0x1f1];
  if (setupSects === 0) setupSects = 4;
  const payloadOffset = bzImage.readUInt32LE(0x248);
  const payloadLength = bzImage.readUInt32LE(0x24c);
  const start = (setupSects + 1) * 512 + payloadOffset;
  if (start + payloadLength > bzImage.length) throw new ImageError('bzImage payload extends past the end of the file');
  const payload = bzImage.subarray(start, start + payloadLength);
  let vmlinux;
  if (payload.readUInt32BE(0) === 0xfd377a58) {
    vmlinux = execFileSync('xz', ['-dc', '--single-stream'], { input: payload, maxBuffer: 1 << 30 });
  } else if (payload.readUInt32LE(0) === 0xfd2fb528) {
    // zstd (Debian 6.12): the kernel's build appends the uncompressed size as 4 bytes (size_append).
    vmlinux = execFileSync('zstd', ['-dcq'], { input: payload.subarray(0, payload.length - 4), maxBuffer: 1 << 30 });
  } else {
    throw new ImageError('bzImage payload is neither XZ nor zstd');
  }
  if (vmlinux.readUInt32BE(0) !== 0x7f454c46) throw new ImageError('decompressed payload is not an ELF file');
  return vmlinux;
}

function kernelOrThrow(name, log) {
  try {
    return resolveKernel(name ?? DEFAULT_KERNEL, { log });
  } catch (e) {
    throw new ImageError(e.message);
  }
}

function buildInitramfs({ kernel, modules, init, extra }) {
  const { dep, builtin } = loadModuleIndex(kernel.modulesDir);
  const order = resolveModules(dep, modules, builtin);
  const cpio = new CpioWriter();
  for (const d of ['bin', 'sbin', 'dev', 'proc', 'sys', 'tmp', 'mnt', 'run', 'etc', 'lib', 'lib/modules', 'root']) cpio.dir(d);
  cpio.charDevice('dev/console', 5, 1);
  cpio.charDevice('dev/null', 1, 3, 0o666);
  cpio.hostFile('bin/busybox', busyboxPath(), 0o755);
  cpio.symlink('bin/sh', 'busybox');
  cpio.file('init', init, 0o755);
  const listed = [];
  for (const m of order) {
    // Compressed modules (.ko.xz, Debian 6.12) are stored decompressed: busybox insmod passes
    // the file to init_module, which takes only plain ELF.
    const rel = m.path.replace(/\.ko\.xz$/, '.ko');
    if (rel !== m.path) cpio.parents(`lib/modules/${rel}`);
    if (rel !== m.path) cpio.file(`lib/modules/${rel}`, execFileSync('xz', ['-dc', join(kernel.modulesDir, m.path)], { maxBuffer: 1 << 28 }), 0o644);
    else cpio.hostFile(`lib/modules/${rel}`, join(kernel.modulesDir, rel), 0o644);
    listed.push(rel);
  }
  cpio.file('etc/modules.order', listed.join('\n') + '\n');
  extra?.(cpio);
  return { data: cpio.finish(), modules: order.map((m) => m.name) };
}

/** The guest's C tools: guest/tools/NAME.c, installed as /bin/NAME. */
function guestToolSources() {
  const dir = join(GUEST_DIR, 'tools');
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.c')).sort() : [];
}

/** Compile each guest tool with `gcc -O2 -static` (glibc static) into outDir; returns [name, path]. */
function buildGuestTools(outDir) {
  mkdirSync(outDir, { recursive: true });
  return guestToolSources().map((src) => {
    const name = src.slice(0, -2);
    const out = join(outDir, name);
    try {
      execFileSync('gcc', ['-O2', '-static', '-s', '-Wall', '-o', out, join(GUEST_DIR, 'tools', src)], { stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      const why = e.code === 'ENOENT' ? 'gcc is not installed (Debian packages gcc, libc6-dev)' : String(e.stderr || e.message).trim();
      throw new ImageError(`building guest/tools/${src} with gcc -static failed: ${why}`);
    }
    if (!isStaticElf(out)) throw new ImageError(`guest/tools/${src}: gcc -static produced a dynamically linked binary`);
    return [name, out];
  });
}

function guestInputs(kernel) {
  const scen = readdirSync(join(GUEST_DIR, 'scenarios')).sort();
  return [
    fileStamp(kernel.bzImage), fileStamp(busyboxPath()), readFileSync(join(GUEST_DIR, 'init')),
    ...scen.map((s) => s + readFileSync(join(GUEST_DIR, 'scenarios', s))),
    ...guestToolSources().map((s) => s + readFileSync(join(GUEST_DIR, 'tools', s))),
    readFileSync(fileURLToPath(import.meta.url)), readFileSync(join(REPO, 'scripts/lib/cpio.mjs')),
    GUEST_MODULES.join(','),
  ];
}

/**
 * Ensure the test guest images exist and are current; returns their paths:
 * { kernelVersion, bzImage, vmlinux, initramfs, dir }.
 */
export function ensureGuestImages({ log = () => {}, install = true, kernel: kernelName } = {}) {
  if (install) ensurePackages(GUEST_PACKAGES, { log });
  const kernel = kernelOrThrow(kernelName ?? process.env.STV_GUEST_KERNEL, log);
  const stamp = hashOf(guestInputs(kernel));
  const dir = join(CACHE, 'images', kernel.version);
  const paths = {
    kernelName: kernel.name, kernelVersion: kernel.version, dir,
    bzImage: join(dir, 'bzImage'), vmlinux: join(dir, 'vmlinux'), initramfs: join(dir, 'initramfs.cpio'),
  };
  const stampFile = join(dir, 'stamp');
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp && [paths.bzImage, paths.vmlinux, paths.initramfs].every((p) => existsSync(p))) {
    return paths;
  }
  log(`building guest images for kernel ${kernel.version} in ${dir}`);
  mkdirSync(dir, { recursive: true });
  const bz = readFileSync(kernel.bzImage);
  writeAtomic(paths.bzImage, bz);
  writeAtomic(paths.vmlinux, extractVmlinux(bz));
  const scenarios = readdirSync(join(GUEST_DIR, 'scenarios')).sort();
  const tools = buildGuestTools(join(dir, 'tools'));
  const { data } = buildInitramfs({
    kernel, modules: GUEST_MODULES, init: readFileSync(join(GUEST_DIR, 'init')),
    extra: (cpio) => {
      cpio.dir('scenarios');
      for (const s of scenarios) cpio.file(`scenarios/${s}`, readFileSync(join(GUEST_DIR, 'scenarios', s)), 0o644);
      for (const [name, path] of tools) cpio.hostFile(`bin/${name}`, path, 0o755);
    },
  });
  writeAtomic(paths.initramfs, data);
  writeAtomic(stampFile, stamp);
  return paths;
}

/** The sandbox's initramfs (see scripts/kvm-sandbox): { bzImage, initramfs }. */
export function ensureSandboxImages({ log = () => {}, initScript, kernel: kernelName }) {
  const kernel = kernelOrThrow(kernelName, log);
  const stamp = hashOf([fileStamp(kernel.bzImage), fileStamp(busyboxPath()), initScript, readFileSync(fileURLToPath(import.meta.url)), SANDBOX_MODULES.join(',')]);
  const dir = join(CACHE, 'sandbox-image', kernel.version);
  const initramfs = join(dir, 'initramfs.cpio');
  const stampFile = join(dir, 'stamp');
  if (!(existsSync(stampFile) && readFileSync(stampFile, 'utf8') === stamp && existsSync(initramfs))) {
    log(`building the KVM sandbox image for kernel ${kernel.version}`);
    const { data } = buildInitramfs({ kernel, modules: SANDBOX_MODULES, init: initScript });
    writeAtomic(initramfs, data);
    writeAtomic(stampFile, stamp);
  }
  return { bzImage: kernel.bzImage, initramfs, kernelName: kernel.name, kernelVersion: kernel.version };
}

/**
 * Make an ext4 image of `sizeMiB` from the contents of `fromDir` (mke2fs -d), without root
 * privileges or loop devices.
 */
export function makeExt4Image(out, fromDir, sizeMiB = 64, label = 'stvdisk') {
  rmSync(out, { force: true });
  mkdirSync(dirname(out), { recursive: true });
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', label, '-E', 'root_owner=0:0', '-d', fromDir, out, `${sizeMiB}M`], { stdio: ['ignore', 'ignore', 'pipe'] });
  return out;
}
