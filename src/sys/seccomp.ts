// seccomp-bpf confinement of the VMM process (man 2 seccomp; Documentation/userspace-api/seccomp_filter.rst).
//
// A classic BPF program over `struct seccomp_data` (linux/seccomp.h):
//   int nr @0; u32 arch @4; u64 instruction_pointer @8; u64 args[6] @16.
// Modes (Cloud Hypervisor's --seccomp true|false|log, plus strict):
//   true    deny-list: the calls in seccomp_table.ts DENIED kill the process; all else runs.
//   strict  allow-list: only ALLOWED runs, anything else kills the process.
//   log     allow-list in learning mode: anything outside ALLOWED is logged by the kernel
//           (SECCOMP_RET_LOG, an `audit: type=1326` line) and runs.
//   false   no filter.
// Every mode kills a non-x86-64 arch or an x32 call (nr >= 0x40000000), refuses clone(2) with
// namespace flags and ioctl(TIOCSTI), and answers clone3/io_uring with ENOSYS (callers fall back).
// Installed with SECCOMP_FILTER_FLAG_TSYNC, so every thread that exists has it and every later
// worker thread inherits it.

import {
  EINVAL,
  PR_GET_SECCOMP,
  PR_SET_NO_NEW_PRIVS,
  prctl,
  seccompSetModeFilter,
  SysError,
} from './libc.js';
import { ALLOWED, CLONE_NEW_MASK, DENIED, ENOSYS_CALLS, syscallNr, TIOCSTI, type SyscallGroup } from './seccomp_table.js';

export type SeccompMode = 'true' | 'false' | 'log' | 'strict';
export const SECCOMP_MODES: readonly SeccompMode[] = ['true', 'false', 'log', 'strict'];

// linux/filter.h, linux/bpf_common.h
const BPF_LD_W_ABS = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JSET_K = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K = 0x06; // BPF_RET | BPF_K

// linux/seccomp.h return actions
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_LOG = 0x7ffc0000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;
export const SECCOMP_FILTER_FLAG_TSYNC = 1;

// struct seccomp_data offsets
const OFF_NR = 0;
const OFF_ARCH = 4;
/** Low 32 bits of args[i] (little-endian u64 at 16 + 8i). */
const offArgLo = (i: number): number => 16 + 8 * i;

/** linux/audit.h: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE. */
export const AUDIT_ARCH_X86_64 = 0xc000003e;
/** x32 ABI calls have this bit set in nr (arch/x86/include/uapi/asm/unistd.h). */
const X32_SYSCALL_BIT = 0x40000000;
const ENOSYS = 38;

/** One struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }. */
interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}
const stmt = (code: number, k: number): Insn => ({ code, jt: 0, jf: 0, k: k >>> 0 });
const jump = (code: number, k: number, jt: number, jf: number): Insn => ({ code, jt, jf, k: k >>> 0 });
const ret = (action: number): Insn => stmt(BPF_RET_K, action);

function namesOf(groups: readonly SyscallGroup[]): number[] {
  return [...new Set(groups.flatMap((g) => g.names.map(syscallNr)))];
}

/** The filter, as instructions, for `mode` (not 'false'). */
export function buildFilter(mode: Exclude<SeccompMode, 'false'>): Insn[] {
  const kill = SECCOMP_RET_KILL_PROCESS;
  const p: Insn[] = [];
  // Wrong arch: kill (its numbers mean other calls). Then x32 numbers: kill.
  p.push(stmt(BPF_LD_W_ABS, OFF_ARCH), jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0), ret(kill));
  p.push(stmt(BPF_LD_W_ABS, OFF_NR), jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1), ret(kill));
  // Each rule: `if (nr == k) return action;` as `jeq k, 0, 1; ret action` (no long jumps).
  const match = (nr: number, action: number): void => {
    p.push(jump(BPF_JEQ_K, nr, 0, 1), ret(action));
  };
  for (const nr of namesOf(ENOSYS_CALLS)) match(nr, SECCOMP_RET_ERRNO | ENOSYS);
  const allowAction = SECCOMP_RET_ALLOW;
  const refuse = mode === 'log' ? SECCOMP_RET_LOG : kill;
  // clone(flags, ...): refuse namespace flags; otherwise allowed in every mode.
  // if (nr != clone) skip 4; A = args[0] lo; if (A & MASK) refuse; allow.
  p.push(
    jump(BPF_JEQ_K, syscallNr('clone'), 0, 4),
    stmt(BPF_LD_W_ABS, offArgLo(0)),
    jump(BPF_JSET_K, CLONE_NEW_MASK, 0, 1),
    ret(refuse),
    ret(allowAction),
  );
  // ioctl(fd, cmd, ...): refuse TIOCSTI (the kernel compares cmd as unsigned int: low 32 bits).
  p.push(
    jump(BPF_JEQ_K, syscallNr('ioctl'), 0, 4),
    stmt(BPF_LD_W_ABS, offArgLo(1)),
    jump(BPF_JEQ_K, TIOCSTI, 0, 1),
    ret(refuse),
    ret(allowAction),
  );
  const special = new Set([syscallNr('clone'), syscallNr('ioctl')]);
  if (mode === 'true') {
    for (const nr of namesOf(DENIED)) match(nr, kill);
    p.push(ret(SECCOMP_RET_ALLOW));
  } else {
    for (const nr of namesOf(ALLOWED)) if (!special.has(nr)) match(nr, allowAction);
    p.push(ret(refuse));
  }
  if (p.length > 4096) throw new Error(`seccomp: filter of ${p.length} instructions exceeds BPF_MAXINSNS (4096)`);
  return p;
}

/** The filter as the kernel reads it: struct sock_filter[], 8 bytes each, little-endian. */
export function encodeFilter(insns: readonly Insn[]): Uint8Array {
  const buf = new Uint8Array(insns.length * 8);
  const dv = new DataView(buf.buffer);
  insns.forEach((ins, i) => {
    dv.setUint16(i * 8, ins.code, true);
    dv.setUint8(i * 8 + 2, ins.jt);
    dv.setUint8(i * 8 + 3, ins.jf);
    dv.setUint32(i * 8 + 4, ins.k, true);
  });
  return buf;
}

/**
 * Run the program over one `seccomp_data` (nr, arch, args) as the kernel would: for the unit tests,
 * which check the encoded bytes, not the instruction objects.
 */
export function evaluateFilter(prog: Uint8Array, data: { nr: number; arch?: number; args?: readonly number[] }): number {
  const dv = new DataView(prog.buffer, prog.byteOffset, prog.byteLength);
  const sd = new DataView(new ArrayBuffer(64));
  sd.setInt32(OFF_NR, data.nr, true);
  sd.setUint32(OFF_ARCH, data.arch ?? AUDIT_ARCH_X86_64, true);
  (data.args ?? []).forEach((a, i) => sd.setBigUint64(16 + 8 * i, BigInt(a), true));
  let acc = 0;
  for (let pc = 0; pc * 8 < prog.byteLength; pc++) {
    const code = dv.getUint16(pc * 8, true);
    const jt = dv.getUint8(pc * 8 + 2);
    const jf = dv.getUint8(pc * 8 + 3);
    const k = dv.getUint32(pc * 8 + 4, true);
    switch (code) {
      case BPF_LD_W_ABS:
        acc = sd.getUint32(k, true);
        break;
      case BPF_JEQ_K:
        pc += acc === k ? jt : jf;
        break;
      case BPF_JGE_K:
        pc += acc >= k ? jt : jf;
        break;
      case BPF_JSET_K:
        pc += (acc & k) !== 0 ? jt : jf;
        break;
      case BPF_RET_K:
        return k;
      default:
        throw new Error(`evaluateFilter: opcode 0x${code.toString(16)} at ${pc}`);
    }
  }
  throw new Error('evaluateFilter: fell off the end of the program');
}

/** Parse a --seccomp value (CH: true|false|log; here also strict). */
export function parseSeccompMode(v: string): SeccompMode | undefined {
  const t = v.trim().toLowerCase();
  if (t === 'on') return 'true';
  if (t === 'off') return 'false';
  return (SECCOMP_MODES as readonly string[]).includes(t) ? (t as SeccompMode) : undefined;
}

/** Whether this kernel has seccomp filters (prctl(PR_GET_SECCOMP) answers rather than EINVAL). */
export function seccompSupported(): boolean {
  try {
    prctl(PR_GET_SECCOMP, 0, 0, 0, 0, 'prctl(PR_GET_SECCOMP)');
    return true;
  } catch (e) {
    if (e instanceof SysError && e.errno === EINVAL) return false;
    throw e;
  }
}

/**
 * Install the filter for `mode` on every thread of this process (TSYNC). Sets no_new_privs
 * first (required without CAP_SYS_ADMIN, and wanted anyway). Returns the instruction count.
 */
export function installSeccomp(mode: SeccompMode): number {
  if (mode === 'false') return 0;
  const insns = buildFilter(mode);
  const prog = encodeFilter(insns);
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 'prctl(PR_SET_NO_NEW_PRIVS)');
  const r = seccompSetModeFilter(SECCOMP_FILTER_FLAG_TSYNC, prog, insns.length);
  if (r < 0) throw new SysError('seccomp(SECCOMP_SET_MODE_FILTER)', -r);
  if (r > 0) throw new Error(`seccomp: thread ${r} could not take the filter (TSYNC); no filter was installed`);
  return insns.length;
}
