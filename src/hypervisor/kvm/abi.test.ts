// Checks abi.ts against the system's <linux/kvm.h>: a generated C probe prints every constant
// and every sizeof/offsetof named in abi.ts; each must match.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as abi from './abi.js';

/** Constants in abi.ts that are kernel-internal (not in the uapi header). */
const NOT_IN_UAPI = new Set(['KVM_PIO_PAGE_OFFSET']);

type Layout = { readonly [k: string]: number | Layout };

function flatten(struct: string, l: Layout, prefix: string, out: Array<[string, string, number]>): void {
  for (const [k, v] of Object.entries(l)) {
    if (typeof v === 'number') {
      if (k === 'SIZE') {
        const expr = prefix === '' ? `sizeof(struct ${struct})` : `sizeof(((struct ${struct} *)0)->${prefix})`;
        out.push([`${struct}${prefix ? '.' + prefix : ''}.SIZE`, expr, v]);
      } else if (k === 'OFFSET') {
        out.push([`${struct}.${prefix}.OFFSET`, `offsetof(struct ${struct}, ${prefix})`, v]);
      } else {
        const member = prefix ? `${prefix}.${k}` : k;
        out.push([`${struct}.${member}`, `offsetof(struct ${struct}, ${member})`, v]);
      }
    } else {
      flatten(struct, v, prefix ? `${prefix}.${k}` : k, out);
    }
  }
}

function haveCc(): string | null {
  const r = spawnSync('cc', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return 'no C compiler (cc) on PATH';
  if (!existsSync('/usr/include/linux/kvm.h')) return '/usr/include/linux/kvm.h not installed';
  return null;
}

test('abi.ts matches <linux/kvm.h> (sizes, offsets, ioctl numbers, constants)', (t) => {
  const why = haveCc();
  if (why !== null) {
    console.log(`# skipping ABI probe: ${why}`);
    t.skip(why);
    return;
  }

  const constants = Object.entries(abi).filter(
    (e): e is [string, number] => e[0].startsWith('KVM') && typeof e[1] === 'number',
  );
  const fields: Array<[string, string, number]> = [];
  for (const [struct, l] of Object.entries(abi.layout as unknown as Record<string, Layout>)) flatten(struct, l, '', fields);

  const lines = ['#include <stddef.h>', '#include <stdio.h>', '#include <linux/kvm.h>', 'int main(void) {'];
  for (const [name] of constants) {
    if (NOT_IN_UAPI.has(name)) continue;
    lines.push(`#ifdef ${name}`, `  printf("%s %llu\\n", "${name}", (unsigned long long)(${name}));`,
      '#else', `  printf("%s MISSING\\n", "${name}");`, '#endif');
  }
  for (const [key, expr] of fields) lines.push(`  printf("%s %zu\\n", "${key}", (size_t)(${expr}));`);
  lines.push('  return 0;', '}');

  const dir = mkdtempSync(join(tmpdir(), 'kvm-abi-'));
  try {
    writeFileSync(join(dir, 'probe.c'), lines.join('\n'));
    execFileSync('cc', ['-O0', '-w', '-o', join(dir, 'probe'), join(dir, 'probe.c')], { stdio: 'pipe' });
    const out = execFileSync(join(dir, 'probe'), { encoding: 'utf8' });
    const got = new Map(out.trim().split('\n').map((l) => l.split(' ') as [string, string]));

    const mismatches: string[] = [];
    for (const [name, v] of constants) {
      if (NOT_IN_UAPI.has(name)) continue;
      const c = got.get(name);
      if (c === 'MISSING') mismatches.push(`${name}: not defined in <linux/kvm.h>`);
      else if (Number(c) !== v) mismatches.push(`${name}: abi.ts 0x${v.toString(16)} vs C 0x${Number(c).toString(16)}`);
    }
    for (const [key, , v] of fields) {
      const c = Number(got.get(key));
      if (c !== v) mismatches.push(`${key}: abi.ts ${v} vs C ${c}`);
    }
    assert.deepEqual(mismatches, []);
    console.log(`# checked ${constants.length} constants and ${fields.length} sizes/offsets`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('_IOC encoding', () => {
  assert.equal(abi.KVM_RUN, 0xae80);
  assert.equal(abi.KVM_GET_REGS, 0x8090ae81);
  assert.equal(abi.KVM_SET_USER_MEMORY_REGION, 0x4020ae46);
});
