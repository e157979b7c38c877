// Landlock file-system confinement (Documentation/userspace-api/landlock.rst,
// include/uapi/linux/landlock.h), through the raw syscalls:
//   landlock_create_ruleset(attr, size, flags) 444, landlock_add_rule(fd, type, attr, flags) 445,
//   landlock_restrict_self(fd, flags) 446.
// Layouts (landlock.h):
//   struct landlock_ruleset_attr { __u64 handled_access_fs; __u64 handled_access_net (ABI 4); __u64 scoped (ABI 6); };
//   struct landlock_path_beneath_attr { __u64 allowed_access; __s32 parent_fd; } __attribute__((packed)); (12 bytes)
// landlock_restrict_self confines the calling thread and the threads and processes it creates
// later; there is no TSYNC. Callers decide how every thread is covered (see cli/confine.ts).

import { existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import {
  close,
  EOPNOTSUPP,
  ENOSYS,
  O_CLOEXEC,
  O_PATH,
  open,
  PR_SET_NO_NEW_PRIVS,
  prctl,
  syscallBufIntInt,
  syscallIntIntBufInt,
  syscallInts,
  SysError,
} from './libc.js';

const NR_LANDLOCK_CREATE_RULESET = 444;
const NR_LANDLOCK_ADD_RULE = 445;
const NR_LANDLOCK_RESTRICT_SELF = 446;
const LANDLOCK_CREATE_RULESET_VERSION = 1;
const LANDLOCK_RULE_PATH_BENEATH = 1;

// LANDLOCK_ACCESS_FS_* (landlock.h), with the ABI that introduced each.
export const ACCESS_FS = {
  EXECUTE: 1n << 0n,
  WRITE_FILE: 1n << 1n,
  READ_FILE: 1n << 2n,
  READ_DIR: 1n << 3n,
  REMOVE_DIR: 1n << 4n,
  REMOVE_FILE: 1n << 5n,
  MAKE_CHAR: 1n << 6n,
  MAKE_DIR: 1n << 7n,
  MAKE_REG: 1n << 8n,
  MAKE_SOCK: 1n << 9n,
  MAKE_FIFO: 1n << 10n,
  MAKE_BLOCK: 1n << 11n,
  MAKE_SYM: 1n << 12n,
  REFER: 1n << 13n, // ABI 2
  TRUNCATE: 1n << 14n, // ABI 3
  IOCTL_DEV: 1n << 15n, // ABI 5
} as const;

/** Every file-system right the kernel's Landlock ABI `abi` knows. */
export function handledAccessFs(abi: number): bigint {
  let bits = (1n << 13n) - 1n; // ABI 1: EXECUTE .. MAKE_SYM
  if (abi >= 2) bits |= ACCESS_FS.REFER;
  if (abi >= 3) bits |= ACCESS_FS.TRUNCATE;
  if (abi >= 5) bits |= ACCESS_FS.IOCTL_DEV;
  return bits;
}

/** Rights that apply to a file (not a directory): others make landlock_add_rule fail with EINVAL. */
const FILE_RIGHTS = ACCESS_FS.EXECUTE | ACCESS_FS.WRITE_FILE | ACCESS_FS.READ_FILE | ACCESS_FS.TRUNCATE | ACCESS_FS.IOCTL_DEV;

const READ_RIGHTS = ACCESS_FS.EXECUTE | ACCESS_FS.READ_FILE | ACCESS_FS.READ_DIR;
const WRITE_RIGHTS =
  ACCESS_FS.WRITE_FILE |
  ACCESS_FS.REMOVE_DIR |
  ACCESS_FS.REMOVE_FILE |
  ACCESS_FS.MAKE_CHAR |
  ACCESS_FS.MAKE_DIR |
  ACCESS_FS.MAKE_REG |
  ACCESS_FS.MAKE_SOCK |
  ACCESS_FS.MAKE_FIFO |
  ACCESS_FS.MAKE_BLOCK |
  ACCESS_FS.MAKE_SYM |
  ACCESS_FS.REFER |
  ACCESS_FS.TRUNCATE |
  ACCESS_FS.IOCTL_DEV;

/** One rule, as CH's --landlock-rules path=<path>,access=[rw] and VmConfig.landlock_rules. */
export interface LandlockRule {
  path: string;
  /** "r", "w" or "rw". */
  access: string;
}

/** Parse CH's access string; undefined when it is not a non-empty combination of r and w. */
export function parseAccess(access: string): { read: boolean; write: boolean } | undefined {
  if (!/^[rw]{1,2}$/.test(access) || access === 'rr' || access === 'ww') return undefined;
  return { read: access.includes('r'), write: access.includes('w') };
}

/**
 * The Landlock ABI version this kernel offers, or a reason it has none: not built in (ENOSYS)
 * or built in but not enabled at boot (EOPNOTSUPP: add landlock to the lsm= boot parameter).
 */
export function landlockAbi(): { abi: number } | { reason: string } {
  const r = syscallBufIntInt(NR_LANDLOCK_CREATE_RULESET, null, 0, LANDLOCK_CREATE_RULESET_VERSION);
  if (r > 0) return { abi: r };
  if (r === -ENOSYS) return { reason: 'this kernel has no Landlock (CONFIG_SECURITY_LANDLOCK is off: landlock_create_ruleset is ENOSYS)' };
  if (r === -EOPNOTSUPP) {
    return { reason: 'Landlock is built into this kernel but not enabled (add "landlock" to the lsm= boot parameter; see /sys/kernel/security/lsm)' };
  }
  return { reason: `landlock_create_ruleset(VERSION) failed: errno ${-r}` };
}

/** A rule resolved against the file system: what gets added to the ruleset. */
export interface ResolvedRule {
  path: string;
  rights: bigint;
}

/**
 * Resolve rules: paths made absolute, access mapped to rights the ABI handles, rights masked to
 * what a file may carry. A path that does not exist yet (a socket or log file the VMM will make)
 * is granted through its parent directory. Throws naming the rule when neither exists.
 */
export function resolveRules(rules: readonly LandlockRule[], abi: number, origin = '--landlock-rules'): ResolvedRule[] {
  const handled = handledAccessFs(abi);
  const out: ResolvedRule[] = [];
  for (const rule of rules) {
    const acc = parseAccess(rule.access);
    if (acc === undefined) throw new Error(`${origin}: access="${rule.access}" for ${rule.path} is not r, w or rw`);
    let path = resolve(rule.path);
    let rights = (acc.read ? READ_RIGHTS : 0n) | (acc.write ? WRITE_RIGHTS : 0n);
    if (!existsSync(path)) {
      const parent = dirname(path);
      if (!existsSync(parent)) throw new Error(`${origin}: ${rule.path} does not exist, nor does its directory ${parent}`);
      path = parent;
      rights |= ACCESS_FS.READ_DIR;
    }
    if (!statSync(path).isDirectory()) rights &= FILE_RIGHTS;
    out.push({ path, rights: rights & handled });
  }
  return out;
}

/**
 * Create a ruleset handling every file-system right of `abi`, add `rules`, set no_new_privs and
 * restrict the calling thread (and what it starts later). Network rights are not handled
 * (handled_access_net = 0): TCP stays as it was.
 */
export function restrictSelf(rules: readonly ResolvedRule[], abi: number): void {
  const attr = new Uint8Array(abi >= 4 ? 16 : 8);
  const av = new DataView(attr.buffer);
  av.setBigUint64(0, handledAccessFs(abi), true);
  const rs = syscallBufIntInt(NR_LANDLOCK_CREATE_RULESET, attr, attr.byteLength, 0);
  if (rs < 0) throw new SysError('landlock_create_ruleset', -rs);
  try {
    const pb = new Uint8Array(12);
    const pv = new DataView(pb.buffer);
    for (const rule of rules) {
      const fd = open(rule.path, O_PATH | O_CLOEXEC);
      try {
        pv.setBigUint64(0, rule.rights, true);
        pv.setInt32(8, fd, true);
        const r = syscallIntIntBufInt(NR_LANDLOCK_ADD_RULE, rs, LANDLOCK_RULE_PATH_BENEATH, pb, 0);
        if (r < 0) throw new SysError(`landlock_add_rule(${rule.path})`, -r);
      } finally {
        close(fd);
      }
    }
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 'prctl(PR_SET_NO_NEW_PRIVS)');
    const r = syscallInts(NR_LANDLOCK_RESTRICT_SELF, rs, 0, 0);
    if (r < 0) throw new SysError('landlock_restrict_self', -r);
  } finally {
    close(rs);
  }
}
