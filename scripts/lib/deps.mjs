// Debian packages the bench needs, installed on demand (apt-get; we run as root on these machines).
import { execFileSync, spawnSync } from 'node:child_process';

export function missingPackages(names) {
  const r = spawnSync('dpkg-query', ['-W', '-f', '${Package} ${db:Status-Abbrev}\n', ...names], { encoding: 'utf8' });
  const installed = new Set(
    (r.stdout || '').split('\n').filter((l) => /\sii\s*$/.test(l)).map((l) => l.split(' ')[0]),
  );
  return names.filter((n) => !installed.has(n));
}

let updated = false;
export function ensurePackages(names, { log = () => {} } = {}) {
  const missing = missingPackages(names);
  if (!missing.length) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`missing Debian packages: ${missing.join(' ')} — install them with: sudo apt-get install ${missing.join(' ')}`);
  }
  log(`installing Debian packages: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    if (!updated) {
      execFileSync('apt-get', ['update', '-qq'], { stdio: ['ignore', 'ignore', 'inherit'], env });
      updated = true;
    }
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: ['ignore', 'ignore', 'inherit'], env });
  } catch (e) {
    throw new Error(`could not install Debian packages ${missing.join(' ')}: ${e.message}`);
  }
  const still = missingPackages(names);
  if (still.length) throw new Error(`Debian packages still missing after apt-get install: ${still.join(' ')}`);
}
