// The Linux kernels the project boots, as guests (e2e, bench) and as the KVM sandbox's own kernel:
// Debian 6.1 as installed on the system (bookworm's linux-image-amd64, in /boot) and Debian 6.12
// from bookworm-backports, fetched and unpacked into .cache/debs (never installed: the system's
// /boot and /lib/modules stay as they are). 6.12's modules are .ko.xz and its bzImage's payload
// is zstd, which images.mjs handles.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { candidateVersion, dependsOf, ensureBackports, unpackDeb, DebError } from './debs.mjs';

/** Kernel families by name: where each comes from. The first is the default. */
export const KERNELS = {
  '6.1': { from: 'system', meta: 'linux-image-amd64' },
  '6.12': { from: 'bookworm-backports', meta: 'linux-image-amd64' },
};
export const DEFAULT_KERNEL = '6.1';

export class KernelError extends Error {}

function familyOf(version) {
  const m = /^(\d+\.\d+)/.exec(version);
  return m ? m[1] : '';
}

/** Kernels in a root folder (/ or an unpacked .deb): [{version, bzImage, modulesDir}], oldest first. */
export function kernelsIn(root) {
  const boot = join(root, 'boot');
  const mods = join(root, 'lib', 'modules');
  if (!existsSync(boot)) return [];
  return readdirSync(boot)
    .filter((f) => f.startsWith('vmlinuz-'))
    .map((f) => f.slice('vmlinuz-'.length))
    .filter((v) => existsSync(join(mods, v, 'modules.dep')))
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
    .map((version) => ({ version, bzImage: join(boot, `vmlinuz-${version}`), modulesDir: join(mods, version) }));
}

/**
 * Resolve a kernel family name ('6.1', '6.12') to { name, version, bzImage, modulesDir },
 * fetching it when it comes from backports.
 */
export function resolveKernel(name = DEFAULT_KERNEL, { log = () => {} } = {}) {
  const k = KERNELS[name];
  if (!k) throw new KernelError(`unknown kernel '${name}' (known: ${Object.keys(KERNELS).join(', ')})`);
  if (k.from === 'system') {
    const found = kernelsIn('/').filter((x) => familyOf(x.version) === name).pop();
    if (!found) throw new KernelError(`no Debian ${name} kernel in /boot with modules in /lib/modules (install linux-image-amd64)`);
    return { name, ...found };
  }
  try {
    ensureBackports({ log });
    const metaVersion = candidateVersion(k.meta, k.from);
    if (!metaVersion) throw new KernelError(`${k.meta} has no version in ${k.from}`);
    const image = dependsOf(k.meta, metaVersion).find((d) => d.startsWith('linux-image-'));
    if (!image) throw new KernelError(`${k.meta} ${metaVersion} (${k.from}) names no linux-image package`);
    const imageVersion = candidateVersion(image, k.from) ?? metaVersion;
    const dir = unpackDeb(image, imageVersion, { log });
    // modules.dep is made by depmod when the package is installed; for the unpacked tree, here.
    const modRoot = join(dir, 'lib', 'modules');
    for (const v of existsSync(modRoot) ? readdirSync(modRoot) : []) {
      if (!existsSync(join(modRoot, v, 'modules.dep'))) execFileSync('depmod', ['-b', dir, v]);
    }
    const found = kernelsIn(dir).pop();
    if (!found) throw new KernelError(`${image} ${imageVersion} unpacked into ${dir} has no vmlinuz with modules`);
    if (familyOf(found.version) !== name) throw new KernelError(`${k.from} now ships kernel ${found.version}, not ${name}: update KERNELS in scripts/lib/kernels.mjs`);
    return { name, ...found };
  } catch (e) {
    if (e instanceof KernelError) throw e;
    if (e instanceof DebError) throw new KernelError(`kernel ${name}: ${e.message}`);
    throw e;
  }
}
