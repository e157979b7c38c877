// The MMIO decoder against GNU objdump: thousands of generated encodings of every instruction
// form it handles (random prefixes, REX, ModRM/SIB, displacements, immediates) are written into
// one flat binary and disassembled with `objdump -D -b binary -m i386:x86-64 -M intel`; for each
// instruction the length, direction, memory access size, register operand (name and width,
// AH..BH included), memory operand (base, index, scale, displacement, segment) and immediate
// must agree.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeMmio, emptyInsn, InsnOp, RIP_BASE, type DecodedInsn } from './decoder.js';

const REG64 = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];
const REG32 = ['eax', 'ecx', 'edx', 'ebx', 'esp', 'ebp', 'esi', 'edi', 'r8d', 'r9d', 'r10d', 'r11d', 'r12d', 'r13d', 'r14d', 'r15d'];
const REG16 = ['ax', 'cx', 'dx', 'bx', 'sp', 'bp', 'si', 'di', 'r8w', 'r9w', 'r10w', 'r11w', 'r12w', 'r13w', 'r14w', 'r15w'];
const REG8 = ['al', 'cl', 'dl', 'bl', 'spl', 'bpl', 'sil', 'dil', 'r8b', 'r9b', 'r10b', 'r11b', 'r12b', 'r13b', 'r14b', 'r15b'];
const HIGH8 = ['ah', 'ch', 'dh', 'bh'];
const PTR: Record<string, number> = { BYTE: 1, WORD: 2, DWORD: 4, QWORD: 8 };

function regName(reg: number, size: number, high: boolean): string {
  if (high) return HIGH8[reg]!;
  return (size === 8 ? REG64 : size === 4 ? REG32 : size === 2 ? REG16 : REG8)[reg]!;
}

/** xorshift32: a fixed seed, so a failure reproduces. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s;
  };
}

function generate(count: number): Uint8Array[] {
  const r = rng(0x5eed1234);
  const pick = <T>(a: readonly T[]): T => a[r() % a.length]!;
  const out: Uint8Array[] = [];
  const forms = [
    [0x88], [0x89], [0x8a], [0x8b], [0xc6], [0xc7], [0x0f, 0xb6], [0x0f, 0xb7], [0x0f, 0xbe], [0x0f, 0xbf],
    [0x63], [0xa0], [0xa1], [0xa2], [0xa3], [0xa4], [0xa5], [0xaa], [0xab],
  ];
  for (let k = 0; k < count; k++) {
    const form = forms[k % forms.length]!;
    const op = form[form.length - 1]!;
    const bytes: number[] = [];
    const string = form.length === 1 && op >= 0xa4 && op <= 0xab;
    const moffs = form.length === 1 && op >= 0xa0 && op <= 0xa3;
    let opsize = false;
    let addr32 = false;
    if (r() % 3 === 0) { bytes.push(0x66); opsize = true; }
    if (r() % 4 === 0 && !string) { bytes.push(0x67); addr32 = true; }
    if (r() % 5 === 0 && !string) bytes.push(pick([0x2e, 0x3e, 0x26, 0x64, 0x65, 0x36]));
    if (string && r() % 2 === 0) bytes.push(0xf3);
    let rex = 0;
    if (op === 0x63) rex = 0x48 | (r() % 8);
    else if (r() % 2 === 0) rex = 0x40 | (r() % 16);
    void opsize; void addr32;
    if (rex) bytes.push(rex);
    bytes.push(...form);
    if (moffs) {
      const w = addr32 ? 4 : 8;
      for (let i = 0; i < w; i++) bytes.push(r() & 0xff);
    } else if (!string) {
      const mod = r() % 3;
      const reg = op === 0xc6 || op === 0xc7 ? 0 : r() % 8;
      const rm = r() % 8;
      bytes.push((mod << 6) | (reg << 3) | rm);
      let dispLen = mod === 1 ? 1 : mod === 2 ? 4 : 0;
      if (rm === 4) {
        const sib = r() & 0xff;
        bytes.push(sib);
        if ((sib & 7) === 5 && mod === 0) dispLen = 4;
      } else if (rm === 5 && mod === 0) {
        dispLen = 4;
      }
      for (let i = 0; i < dispLen; i++) bytes.push(r() & 0xff);
      if (op === 0xc6) bytes.push(r() & 0xff);
      if (op === 0xc7) {
        const w = (rex & 8) === 0 && opsize ? 2 : 4;
        for (let i = 0; i < w; i++) bytes.push(r() & 0xff);
      }
    }
    out.push(Uint8Array.from(bytes));
  }
  return out;
}


/**
 * Our memory operand as objdump's Intel syntax prints it: `[base+index*scale+disp]`; a SIB
 * index of 100b as riz/eiz where the SIB was not needed; RIP-relative displacements as unsigned 64-bit;
 * no base and no index as `ds:0xdisp`; only fs/gs shown (es/cs/ss/ds overrides are a prefix word
 * in 64-bit mode).
 */
function memText(d: DecodedInsn): string {
  const R = d.addrSize === 4 ? REG32 : REG64;
  const seg = d.segment === 0x64 ? 'fs' : d.segment === 0x65 ? 'gs' : '';
  const parts: string[] = [];
  if (d.base === RIP_BASE) parts.push(d.addrSize === 4 ? 'eip' : 'rip');
  else if (d.base >= 0) parts.push(R[d.base]!);
  if (d.index >= 0) parts.push(`${R[d.index]!}*${d.scale}`);
  // A SIB without index: objdump names it riz/eiz unless the SIB was needed (base rsp/r12, scale 1).
  else if (d.hasSib && (d.scale > 1 || (d.base >= 0 && (d.base & 7) !== 4))) parts.push(`${d.addrSize === 4 ? 'eiz' : 'riz'}*${d.scale}`);
  if (parts.length === 0) {
    const v = d.addrSize === 4 ? BigInt.asUintN(32, d.disp) : BigInt.asUintN(64, d.disp);
    return `${seg || 'ds'}:0x${v.toString(16)}`;
  }
  let t = parts.join('+');
  if (d.base === RIP_BASE) t += `+0x${BigInt.asUintN(64, d.disp).toString(16)}`;
  else if (d.disp < 0n) t += `-0x${(-d.disp).toString(16)}`;
  else if (d.disp > 0n || d.hasDisp) t += `+0x${d.disp.toString(16)}`;
  return `${seg ? seg + ':' : ''}[${t}]`;
}

interface ObjLine { addr: number; text: string }

function objdump(bin: Uint8Array): ObjLine[] | string {
  const dir = mkdtempSync(join(tmpdir(), 'decoder-'));
  try {
    writeFileSync(join(dir, 'insns.bin'), bin);
    const p = spawnSync('objdump', ['-D', '-b', 'binary', '-m', 'i386:x86-64', '-M', 'intel', '--insn-width=16', join(dir, 'insns.bin')], { encoding: 'utf8', maxBuffer: 64 << 20 });
    if (p.error || p.status !== 0) return `objdump failed: ${p.error?.message ?? p.stderr}`;
    const lines: ObjLine[] = [];
    for (const l of p.stdout.split('\n')) {
      const m = /^\s*([0-9a-f]+):\t[0-9a-f ]+\t(.*)$/.exec(l);
      if (m) lines.push({ addr: parseInt(m[1]!, 16), text: m[2]!.replace(/\s+#.*$/, '').trim() });
    }
    return lines;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('decodeMmio agrees with objdump on generated encodings (length, direction, size, register, memory operand, immediate)', (t) => {
  if (spawnSync('objdump', ['--version']).status !== 0) {
    console.log('# skipping: objdump (binutils) not on PATH');
    t.skip('objdump (binutils) not on PATH');
    return;
  }
  const insns = generate(6000);
  const total = insns.reduce((s, b) => s + b.length, 0);
  const bin = new Uint8Array(total);
  const starts: number[] = [];
  let off = 0;
  for (const b of insns) { starts.push(off); bin.set(b, off); off += b.length; }
  const lines = objdump(bin);
  if (typeof lines === 'string') assert.fail(lines);
  const byAddr = new Map(lines.map((l) => [l.addr, l.text]));

  const d = emptyInsn();
  const problems: string[] = [];
  const counts = new Map<string, number>();
  insns.forEach((b, k) => {
    const hexBytes = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(' ');
    const text = byAddr.get(starts[k]!);
    const next = k + 1 < insns.length ? starts[k + 1]! : total;
    if (text === undefined) { problems.push(`${hexBytes}: objdump has no instruction at its start (desync)`); return; }
    // objdump's length: the next instruction it printed must start where ours does.
    if (k + 1 < insns.length && !byAddr.has(next)) { problems.push(`${hexBytes}: objdump length differs (${text})`); return; }
    const err = decodeMmio(b, b.length, d);
    if (err !== null) { problems.push(`${hexBytes}: decoder refused: ${err} (objdump: ${text})`); return; }
    if (d.length !== b.length) problems.push(`${hexBytes}: length ${d.length}, objdump ${b.length} (${text})`);

    // Parse objdump's Intel syntax: [prefix words] mnemonic op1,op2
    const m = /^(?:(?:rep|repz|repnz|addr32|data16|rex(?:\.[WRXB]+)?|cs|ds|es|fs|gs|ss)\s+)*(\w+)\s+(.*)$/.exec(text);
    if (!m) { problems.push(`${hexBytes}: cannot parse objdump '${text}'`); return; }
    const mn = m[1]!;
    const ops = m[2]!.split(/,(?![^[]*\])/).map((s) => s.trim());
    counts.set(mn, (counts.get(mn) ?? 0) + 1);
    const memFirst = /PTR|ds:|es:|fs:|gs:|cs:|ss:/.test(ops[0]!) && !REG64.concat(REG32, REG16, REG8, HIGH8).includes(ops[0]!);
    const sizeOf = (o: string): number | undefined => { const p = /^(BYTE|WORD|DWORD|QWORD) PTR/.exec(o); return p ? PTR[p[1]!] : undefined; };
    const ourReg = d.reg >= 0 ? regName(d.reg, d.regSize, d.highByte) : null;
    switch (mn) {
      case 'mov': case 'movabs': {
        const wantWrite = memFirst;
        if (d.isWrite !== wantWrite) problems.push(`${hexBytes}: isWrite ${d.isWrite} vs objdump '${text}'`);
        const memOp = wantWrite ? ops[0]! : ops[1]!;
        const other = wantWrite ? ops[1]! : ops[0]!;
        const mem = memOp.replace(/^(BYTE|WORD|DWORD|QWORD) PTR /, '');
        if (mem !== memText(d)) problems.push(`${hexBytes}: memory operand ${memText(d)} vs objdump '${text}'`);
        if (/^0x[0-9a-f]+$/.test(other)) {
          if (d.op !== InsnOp.StoreImm || d.imm !== BigInt(other)) problems.push(`${hexBytes}: imm 0x${d.imm.toString(16)} vs objdump '${text}'`);
          if (sizeOf(memOp) !== d.size) problems.push(`${hexBytes}: size ${d.size} vs objdump '${text}'`);
        } else {
          if (ourReg !== other) problems.push(`${hexBytes}: register ${ourReg} vs objdump '${text}'`);
          const sz = sizeOf(memOp) ?? (REG8.includes(other) || HIGH8.includes(other) ? 1 : REG16.includes(other) ? 2 : REG32.includes(other) ? 4 : 8);
          if (sz !== d.size) problems.push(`${hexBytes}: size ${d.size} vs objdump '${text}'`);
        }
        break;
      }
      case 'movzx': case 'movsx': case 'movsxd': {
        const want = mn === 'movzx' ? InsnOp.LoadZeroExtend : InsnOp.LoadSignExtend;
        // movsxd without REX.W is a plain 32-bit load, which objdump also calls movsxd.
        if (d.op !== want && !(mn === 'movsxd' && d.op === InsnOp.Load)) problems.push(`${hexBytes}: op ${d.op} vs objdump '${text}'`);
        if (d.isWrite) problems.push(`${hexBytes}: isWrite vs objdump '${text}'`);
        if (ourReg !== ops[0]) problems.push(`${hexBytes}: register ${ourReg} vs objdump '${text}'`);
        if (sizeOf(ops[1]!) !== d.size) problems.push(`${hexBytes}: size ${d.size} vs objdump '${text}'`);
        if (ops[1]!.replace(/^(BYTE|WORD|DWORD|QWORD) PTR /, '') !== memText(d)) problems.push(`${hexBytes}: memory operand ${memText(d)} vs objdump '${text}'`);
        break;
      }
      case 'stos': case 'movs': {
        if (d.op !== (mn === 'stos' ? InsnOp.Stos : InsnOp.Movs) || !d.isWrite) problems.push(`${hexBytes}: op ${d.op} vs objdump '${text}'`);
        if (sizeOf(ops[0]!) !== d.size) problems.push(`${hexBytes}: size ${d.size} vs objdump '${text}'`);
        if (mn === 'stos' && ourReg !== ops[1]) problems.push(`${hexBytes}: register ${ourReg} vs objdump '${text}'`);
        if (d.rep !== /\brep/.test(text)) problems.push(`${hexBytes}: rep ${d.rep} vs objdump '${text}'`);
        break;
      }
      default:
        problems.push(`${hexBytes}: objdump says '${text}'`);
    }
  });
  console.log(`# ${insns.length} encodings, ${total} bytes: ${[...counts].map(([k, v]) => `${k} ${v}`).join(', ')}`);
  assert.deepEqual(problems.slice(0, 30), []);
});

test('decodeMmio refuses what it does not emulate, with the reason', () => {
  const d = emptyInsn();
  assert.match(decodeMmio(Uint8Array.of(0x01, 0x03), 2, d)!, /opcode 01/);
  assert.match(decodeMmio(Uint8Array.of(0x89, 0xc0), 2, d)!, /register operand/);
  assert.match(decodeMmio(Uint8Array.of(0x8b, 0x05, 0x00), 3, d)!, /truncated/);
  assert.match(decodeMmio(Uint8Array.of(0xf0, 0x89, 0x03), 3, d)!, /LOCK/);
  assert.match(decodeMmio(Uint8Array.of(0xc7, 0x08, 1, 2, 3, 4), 6, d)!, /not MOV/);
  assert.match(decodeMmio(new Uint8Array(0), 0, d)!, /truncated/);
});

test('decodeMmio: Linux readl/writel forms', () => {
  const d = emptyInsn();
  // mov eax, DWORD PTR [rdi+0x14]  (readl)
  assert.equal(decodeMmio(Uint8Array.of(0x8b, 0x47, 0x14), 3, d), null);
  assert.deepEqual([d.op, d.size, d.reg, d.length, d.isWrite, d.base, d.disp], [InsnOp.Load, 4, 0, 3, false, 7, 0x14n]);
  // mov DWORD PTR [rip+0x100], r9d  (writel to a RIP-relative address)
  assert.equal(decodeMmio(Uint8Array.of(0x44, 0x89, 0x0d, 0x00, 0x01, 0x00, 0x00), 7, d), null);
  assert.deepEqual([d.op, d.size, d.reg, d.length, d.isWrite, d.base, d.disp], [InsnOp.Store, 4, 9, 7, true, 16, 0x100n]);
  // movzx eax, WORD PTR [rbx]  (readw)
  assert.equal(decodeMmio(Uint8Array.of(0x0f, 0xb7, 0x03), 3, d), null);
  assert.deepEqual([d.op, d.size, d.regSize, d.reg], [InsnOp.LoadZeroExtend, 2, 4, 0]);
  // mov BYTE PTR [rax], ah
  assert.equal(decodeMmio(Uint8Array.of(0x88, 0x20), 2, d), null);
  assert.deepEqual([d.reg, d.highByte], [0, true]);
});

test('decodeMmio on random bytes (what a hostile guest can put in front of an MMIO access) never throws', () => {
  const r = rng(0xbadc0de);
  const d = emptyInsn();
  const b = new Uint8Array(16);
  let decoded = 0;
  for (let k = 0; k < 50_000; k++) {
    for (let i = 0; i < 16; i++) b[i] = r() & 0xff;
    const len = r() % 17;
    const err = decodeMmio(b, len, d);
    if (err === null) {
      decoded++;
      assert.ok(d.length >= 1 && d.length <= len && d.length <= 15, `length ${d.length} of ${len} bytes`);
      assert.ok([1, 2, 4, 8].includes(d.size));
      assert.ok(d.reg >= -1 && d.reg < 16);
    } else {
      assert.equal(typeof err, 'string');
    }
  }
  console.log(`# 50000 random inputs, ${decoded} decoded as memory moves`);
});
