#!/usr/bin/env node
// Unpack the headers the MSHV ABI probe (src/hypervisor/mshv/abi.test.ts) compiles against, from
// Debian sid (private apt lists under .cache/debs; nothing is installed), and print their include
// directories as JSON: { uapi: ".../usr/include" (linux/mshv.h, linux-libc-dev),
// hyperv: ".../include" (hyperv/hv*.h, linux-headers-<ver>-common), versions }.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { findPrivate, unpackPrivate } from './lib/debs.mjs';

const suite = process.env.STV_MSHV_SUITE ?? 'sid';
const log = (m) => process.stderr.write(`mshv-headers: ${m}\n`);
try {
  const libc = unpackPrivate('linux-libc-dev', suite, { log });
  const uapi = join(libc.dir, 'usr/include');
  if (!existsSync(join(uapi, 'linux/mshv.h'))) throw new Error(`linux-libc-dev ${libc.version} (${suite}) has no linux/mshv.h`);
  const common = findPrivate(/^linux-headers-[0-9.]+\+[a-z0-9]+-common$/, suite, { log });
  let hyperv = null;
  let commonVersion = null;
  if (common) {
    const h = unpackPrivate(common, suite, { log });
    hyperv = join(h.dir, 'usr/src', common, 'include');
    commonVersion = `${common} ${h.version}`;
    if (!existsSync(join(hyperv, 'hyperv/hvhdk.h'))) hyperv = null;
  }
  process.stdout.write(JSON.stringify({ uapi, hyperv, versions: { 'linux-libc-dev': libc.version, common: commonVersion } }) + '\n');
} catch (e) {
  process.stderr.write(`mshv-headers: ${e.message}\n`);
  process.exit(1);
}
