// Checks abi.ts against the real headers with generated C probes that print every constant and
// every sizeof/offsetof named there:
//   1. <linux/mshv.h> from Debian sid's linux-libc-dev (unpacked by scripts/mshv-headers.mjs into
//      .cache/debs; this machine's own linux-libc-dev is 6.1, which has no mshv.h);
//   2. the kernel's TLFS headers include/hyperv/hv*.h from sid's linux-headers-<ver>-common;
//   3. for the TLFS names the kernel does not carry (x64 register names, TIME_FREEZE, intercept
//      message bodies): Microsoft's headers as rust-vmm/mshv ships them in hv-headers/, found at
//      $STV_MSHV_HV_HEADERS or .cache/mshv-hv-headers (a copy of that folder).
// $STV_MSHV_INCLUDE=<uapi dir>:<kernel include dir> skips the download.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as abi from './abi.js';

const ROOT = resolve(fileURLToPath(new URL('../../../..', import.meta.url)));

/** Numeric exports of abi.ts that are this project's helpers, not C names. */
const NOT_IN_C = new Set(['HV_X64_INSTRUCTION_LENGTH_BYTE', 'HV_X64_IO_ACCESS_SIZE_MASK',
  'HV_X64_IO_STRING_OP', 'HV_X64_IO_REP_PREFIX', 'HV_STATUS_SUCCESS', '_IOC_NONE', '_IOC_READ', '_IOC_WRITE']);

type Layout = { readonly [k: string]: number | Layout };
type Field = [key: string, expr: string, value: number];

function flatten(struct: string, kind: string, l: Layout, prefix: string, out: Field[]): void {
  for (const [k, v] of Object.entries(l)) {
    if (typeof v === 'number') {
      if (k === 'SIZE') {
        const expr = prefix === '' ? `sizeof(${kind} ${struct})` : `sizeof(((${kind} ${struct} *)0)->${prefix})`;
        out.push([`${struct}${prefix ? '.' + prefix : ''}.SIZE`, expr, v]);
      } else if (k === 'OFFSET') {
        out.push([`${struct}.${prefix}.OFFSET`, `offsetof(${kind} ${struct}, ${prefix})`, v]);
      } else {
        const member = prefix ? `${prefix}.${k}` : k;
        out.push([`${struct}.${member}`, `offsetof(${kind} ${struct}, ${member})`, v]);
      }
    } else {
      flatten(struct, kind, v, prefix ? `${prefix}.${k}` : k, out);
    }
  }
}

/** Shims that let the kernel-internal include/hyperv headers compile in userspace. */
const KERNEL_PRELUDE = `
#include <stdbool.h>
#include <linux/types.h>
typedef __u8 u8; typedef __u16 u16; typedef __u32 u32; typedef __u64 u64;
typedef __s8 s8; typedef __s16 s16; typedef __s32 s32; typedef __s64 s64; typedef unsigned long ulong;
#define __packed __attribute__((packed))
#define __aligned(x) __attribute__((aligned(x)))
#define BIT(n) (1UL << (n))
#define BIT_ULL(n) (1ULL << (n))
#define GENMASK(h, l) (((~0UL) << (l)) & (~0UL >> (63 - (h))))
#define GENMASK_ULL(h, l) (((~0ULL) << (l)) & (~0ULL >> (63 - (h))))
#define static_assert(...)
#define IS_ENABLED(x) IS_ENABLED_##x
#define IS_ENABLED_CONFIG_X86 1
#define IS_ENABLED_CONFIG_X86_64 1
#define IS_ENABLED_CONFIG_ARM64 0
#define CONFIG_X86 1
#define CONFIG_X86_64 1
#define DECLARE_FLEX_ARRAY(TYPE, NAME) struct { struct { } __empty_##NAME; TYPE NAME[]; }
#define __TRAILING_OVERLAP(TYPE, NAME, FAM, ATTRS, MEMBERS) union { TYPE NAME; struct { unsigned char __offset_to_FAM[offsetof(TYPE, FAM)]; MEMBERS } ATTRS; }
#include <hyperv/hvhdk.h>
`;
const RUSTVMM_PRELUDE = `
#include <linux/types.h>
#define BIT(n) (1UL << (n))
#define BIT_ULL(n) (1ULL << (n))
#include "hvhdk.h"
`;

/** `hyperv`: the kernel's include/hyperv, reached through a shim folder (only that folder, and
 * empty linux/bits.h, linux/build_bug.h) so no other kernel-internal header is picked up. */
interface Source { name: string; prelude: string; includes: string[]; text: string; hyperv?: string }

function probe(src: Source, constants: Array<[string, number]>, fields: Field[]): string[] {
  const lines = ['#include <stddef.h>', '#include <stdio.h>', src.prelude, 'int main(void) {'];
  for (const [name] of constants) lines.push(`  printf("%s %llu\\n", "${name}", (unsigned long long)(${name}));`);
  for (const [key, expr] of fields) lines.push(`  printf("%s %zu\\n", "${key}", (size_t)(${expr}));`);
  lines.push('  return 0;', '}');
  const dir = mkdtempSync(join(tmpdir(), 'mshv-abi-'));
  try {
    writeFileSync(join(dir, 'probe.c'), lines.join('\n'));
    const includes = [...src.includes];
    if (src.hyperv) {
      mkdirSync(join(dir, 'shim/linux'), { recursive: true });
      writeFileSync(join(dir, 'shim/linux/bits.h'), '');
      writeFileSync(join(dir, 'shim/linux/build_bug.h'), '');
      symlinkSync(src.hyperv, join(dir, 'shim/hyperv'));
      includes.unshift(join(dir, 'shim'));
    }
    const cc = spawnSync('cc', ['-O0', '-w', ...includes.flatMap((i) => ['-I', i]), '-o', join(dir, 'probe'), join(dir, 'probe.c')], { encoding: 'utf8' });
    if (cc.status !== 0) return [`${src.name}: the probe does not compile:\n${cc.stderr.split('\n').filter((l) => /error/.test(l)).slice(0, 20).join('\n')}`];
    const out = execFileSync(join(dir, 'probe'), { encoding: 'utf8' });
    const got = new Map(out.trim().split('\n').map((l) => l.split(' ') as [string, string]));
    const bad: string[] = [];
    for (const [name, v] of constants) {
      const c = Number(got.get(name));
      if (c !== v) bad.push(`${src.name}: ${name}: abi.ts 0x${v.toString(16)} vs C 0x${c.toString(16)}`);
    }
    for (const [key, , v] of fields) {
      const c = Number(got.get(key));
      if (c !== v) bad.push(`${src.name}: ${key}: abi.ts ${v} vs C ${c}`);
    }
    return bad;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function headerText(dir: string): string {
  return readdirSync(dir).filter((f) => f.endsWith('.h')).map((f) => readFileSync(join(dir, f), 'utf8')).join('\n');
}

function includeDirs(): { uapi: string; hyperv: string | null } | string {
  const env = process.env.STV_MSHV_INCLUDE;
  if (env) {
    const [uapi, hyperv] = env.split(':');
    return { uapi: uapi!, hyperv: hyperv ?? null };
  }
  const r = spawnSync(process.execPath, [join(ROOT, 'scripts/mshv-headers.mjs')], { encoding: 'utf8', timeout: 300_000 });
  if (r.status !== 0) return `cannot fetch Debian sid's headers: ${(r.stderr ?? '').trim().split('\n').at(-1) ?? r.error?.message}`;
  const j = JSON.parse(r.stdout) as { uapi: string; hyperv: string | null; versions: Record<string, string> };
  console.log(`# headers: linux-libc-dev ${j.versions['linux-libc-dev']}, ${j.versions.common}`);
  return j;
}

const constants = Object.entries(abi).filter(
  (e): e is [string, number] => /^(MSHV_|HV)/.test(e[0]) && typeof e[1] === 'number' && !NOT_IN_C.has(e[0]),
);
const layouts = abi.layout as unknown as Record<string, Layout>;

let dirsMemo: ReturnType<typeof includeDirs> | undefined;
function dirs(): ReturnType<typeof includeDirs> {
  return (dirsMemo ??= includeDirs());
}

function noCc(): string | null {
  return spawnSync('cc', ['--version']).status !== 0 ? 'no C compiler (cc) on PATH' : null;
}

/** Probe the TLFS names found in `src`'s headers (and not in `exclude`); returns those not found. */
function probeTlfs(src: Source, names: Set<string>, mismatches: string[]): Set<string> {
  const c: Array<[string, number]> = [];
  const f: Field[] = [];
  const left = new Set<string>();
  for (const k of constants) {
    if (!names.has(k[0])) continue;
    if (new RegExp(`(#define\\s+${k[0]}\\b|\\b${k[0]}\\s*=)`).test(src.text)) c.push(k); else left.add(k[0]);
  }
  for (const [name, l] of Object.entries(layouts)) {
    if (!names.has(name)) continue;
    if (!new RegExp(`\\b(struct|union)\\s+${name}\\s*\\{`).test(src.text)) { left.add(name); continue; }
    const kind = new RegExp(`\\bunion\\s+${name}\\s*\\{`).test(src.text) ? 'union' : 'struct';
    flatten(name, kind, l, '', f);
  }
  mismatches.push(...probe(src, c, f));
  console.log(`# ${src.name}: checked ${c.length} constants and ${f.length} sizes/offsets`);
  return left;
}

const TLFS_NAMES = new Set([
  ...constants.map(([n]) => n).filter((n) => !n.startsWith('MSHV_')),
  ...Object.keys(layouts).filter((n) => !n.startsWith('mshv_')),
]);
/** TLFS names the kernel headers do not define, left for the rust-vmm headers (set by test 1). */
let notInKernel: Set<string> | null = null;

test("abi.ts matches the real <linux/mshv.h> and the kernel's TLFS headers (sizes, offsets, ioctl numbers, constants)", (t) => {
  const why = noCc() ?? (typeof dirs() === 'string' ? dirs() as string : null);
  if (why !== null) {
    console.log(`# skipping: ${why}`);
    t.skip(why);
    return;
  }
  const d = dirs() as { uapi: string; hyperv: string | null };
  assert.ok(existsSync(join(d.uapi, 'linux/mshv.h')), `${d.uapi}/linux/mshv.h`);
  const uapiConsts = constants.filter(([n]) => n.startsWith('MSHV_'));
  const uapiFields: Field[] = [];
  for (const [s, l] of Object.entries(layouts)) if (s.startsWith('mshv_')) flatten(s, 'struct', l, '', uapiFields);
  const mismatches = probe({ name: 'linux/mshv.h', prelude: '#include <sys/ioctl.h>\n#include <linux/mshv.h>', includes: [d.uapi], text: '' }, uapiConsts, uapiFields);
  console.log(`# linux/mshv.h: checked ${uapiConsts.length} constants and ${uapiFields.length} sizes/offsets`);
  assert.ok(d.hyperv, 'the kernel headers package has include/hyperv');
  notInKernel = probeTlfs({ name: 'kernel include/hyperv', prelude: KERNEL_PRELUDE, includes: [d.uapi], hyperv: join(d.hyperv, 'hyperv'), text: headerText(join(d.hyperv, 'hyperv')) }, TLFS_NAMES, mismatches);
  assert.deepEqual(mismatches, []);
});

test("abi.ts matches Microsoft's hv-headers (rust-vmm/mshv) for the TLFS names the kernel lacks", (t) => {
  const rv = process.env.STV_MSHV_HV_HEADERS ?? join(ROOT, '.cache/mshv-hv-headers');
  const why = noCc() ?? (notInKernel === null ? 'the kernel headers were not probed (see the previous test)' : null)
    ?? (existsSync(join(rv, 'hvhdk.h')) ? null : `no hv-headers at ${rv}: set STV_MSHV_HV_HEADERS to a copy of rust-vmm/mshv's hv-headers/`);
  if (why !== null) {
    console.log(`# skipping: ${why}${notInKernel ? ` (unchecked: ${[...notInKernel].join(', ')})` : ''}`);
    t.skip(why);
    return;
  }
  const mismatches: string[] = [];
  const left = probeTlfs({ name: `rust-vmm hv-headers (${rv})`, prelude: RUSTVMM_PRELUDE, includes: [rv], text: headerText(rv) }, notInKernel!, mismatches);
  assert.deepEqual(mismatches, []);
  assert.deepEqual([...left], [], 'names in abi.ts that no header defines');
});

test('MSHV ioctl numbers (_IOC encoding)', () => {
  assert.equal(abi.MSHV_CREATE_PARTITION, 0x4010b800);
  assert.equal(abi.MSHV_RUN_VP, 0x8100b800);
  assert.equal(abi.MSHV_ROOT_HVCALL, 0xc020b807);
});
