// x86-64 instruction decoder for MMIO emulation: the memory-access instructions a guest uses
// on device registers (Linux readb/readw/readl/readq, writeX, memcpy_toio/fromio, memset_io).
// A backend that reports an unmapped-GPA access with the instruction's bytes but no decoded
// operands (MSHV: hv_x64_memory_intercept_message.instruction_bytes) uses this to learn the
// access size, direction, the register or immediate, and the instruction length (RIP advance).
//
// Covered (64-bit mode, Intel SDM Vol. 2 ch. 2 "Instruction Format", Vol. 2B "MOV", "MOVZX",
// "MOVSX/MOVSXD", "MOVS", "STOS"):
//   88/89 mov r/m,r   8A/8B mov r,r/m   C6 /0 ib, C7 /0 iw/id mov r/m,imm   A0-A3 mov moffs
//   0F B6/B7 movzx   0F BE/BF movsx   63 movsxd   A4/A5 movs   AA/AB stos
// with legacy prefixes (66 operand size, 67 address size, F2/F3 rep, segment overrides), REX
// (W/R/X/B; AH..BH without REX), ModRM/SIB, disp8/disp32, RIP-relative. The memory operand's
// address is decoded (base, index, scale, displacement) but not needed: the hypervisor gives
// the GPA. Anything else is refused with a message naming the opcode.
//
// Hot path: decodeMmio fills a caller-owned DecodedInsn and returns null; it allocates only to
// build an error message.

export const InsnOp = {
  /** mov reg, [mem] (8A/8B, A0/A1) */
  Load: 0,
  /** mov [mem], reg (88/89, A2/A3) */
  Store: 1,
  /** mov [mem], imm (C6/C7) */
  StoreImm: 2,
  /** movzx reg, [mem] */
  LoadZeroExtend: 3,
  /** movsx / movsxd reg, [mem] */
  LoadSignExtend: 4,
  /** stos [rdi], al/ax/eax/rax */
  Stos: 5,
  /** movs [rdi], [rsi] */
  Movs: 6,
} as const;
export type InsnOp = (typeof InsnOp)[keyof typeof InsnOp];

export interface DecodedInsn {
  op: InsnOp;
  /** Bytes the instruction occupies (the RIP advance). */
  length: number;
  /** The guest writes memory (Store, StoreImm, Stos; Movs writes [rdi]). */
  isWrite: boolean;
  /** Memory access size in bytes: 1, 2, 4 or 8. */
  size: number;
  /** Register operand (0..15, x86 encoding order rax, rcx, ...), -1 for StoreImm/Movs. */
  reg: number;
  /** Register width in bytes (movzx/movsx: the destination's; else = size). */
  regSize: number;
  /** The register is AH/CH/DH/BH (bits 15:8 of rax/rcx/rdx/rbx); `reg` is then 0..3. */
  highByte: boolean;
  /** StoreImm: the immediate, sign-extended to `size` bytes, as an unsigned value. */
  imm: bigint;
  /** F3/F2 prefix on movs/stos. */
  rep: boolean;
  /** Address size in bytes (8, or 4 with 67). */
  addrSize: number;
  /** Memory operand: base/index register (-1 none, 16 = RIP), scale, displacement; moffs: disp. */
  base: number;
  index: number;
  scale: number;
  disp: bigint;
  /** A SIB byte is encoded. */
  hasSib: boolean;
  /** A displacement byte/dword is encoded (mod 1/2, RIP-relative, no base), even when 0. */
  hasDisp: boolean;
  /** Segment override prefix (0x26/0x2E/0x36/0x3E/0x64/0x65) or 0. */
  segment: number;
}

export function emptyInsn(): DecodedInsn {
  return { op: InsnOp.Load, length: 0, isWrite: false, size: 0, reg: -1, regSize: 0, highByte: false, imm: 0n, rep: false, addrSize: 8, base: -1, index: -1, scale: 1, disp: 0n, hasSib: false, hasDisp: false, segment: 0 };
}

export const RIP_BASE = 16;

function hex(b: number): string {
  return b.toString(16).padStart(2, '0');
}

/**
 * Decode the instruction at bytes[0..len). Returns null and fills `out`, or an error message
 * (not a memory instruction this decoder knows, or fewer bytes than the instruction needs).
 */
export function decodeMmio(bytes: Uint8Array, len: number, out: DecodedInsn): string | null {
  const n = Math.min(len, bytes.length, 15);
  let i = 0;
  let opsize16 = false;
  let addr32 = false;
  let rep = false;
  let segment = 0;
  let rex = 0;
  // Legacy prefixes (SDM Vol. 2A 2.1.1), then at most one REX right before the opcode (2.2.1).
  for (;;) {
    if (i >= n) return 'instruction truncated in its prefixes';
    const b = bytes[i]!;
    if (b === 0x66) opsize16 = true;
    else if (b === 0x67) addr32 = true;
    else if (b === 0xf3 || b === 0xf2) rep = true;
    else if (b === 0x26 || b === 0x2e || b === 0x36 || b === 0x3e || b === 0x64 || b === 0x65) segment = b;
    else if (b === 0xf0) return 'LOCK-prefixed instruction on MMIO is not supported';
    else break;
    i++;
    rex = 0;
  }
  if ((bytes[i]! & 0xf0) === 0x40) {
    rex = bytes[i]!;
    i++;
    if (i >= n) return 'instruction truncated after REX';
  }
  const rexW = (rex & 8) !== 0;
  const rexR = (rex & 4) !== 0 ? 8 : 0;
  const rexX = (rex & 2) !== 0 ? 8 : 0;
  const rexB = (rex & 1) !== 0 ? 8 : 0;
  const wide = rexW ? 8 : opsize16 ? 2 : 4;

  out.rep = false;
  out.imm = 0n;
  out.highByte = false;
  out.segment = segment;
  out.addrSize = addr32 ? 4 : 8;
  out.base = -1;
  out.index = -1;
  out.scale = 1;
  out.disp = 0n;
  out.hasDisp = false;
  out.hasSib = false;
  out.reg = -1;

  let op = bytes[i++]!;
  let twoByte = false;
  if (op === 0x0f) {
    if (i >= n) return 'instruction truncated after 0F';
    op = bytes[i++]!;
    twoByte = true;
  }

  // Instructions without ModRM: moffs, movs, stos.
  if (!twoByte && op >= 0xa0 && op <= 0xa3) {
    const w = addr32 ? 4 : 8;
    if (i + w > n) return 'moffs instruction truncated';
    out.disp = readLe(bytes, i, w, false);
    i += w;
    out.op = op >= 0xa2 ? InsnOp.Store : InsnOp.Load;
    out.isWrite = op >= 0xa2;
    out.size = out.regSize = (op & 1) === 0 ? 1 : wide;
    out.reg = 0;
    out.length = i;
    return null;
  }
  if (!twoByte && (op === 0xa4 || op === 0xa5 || op === 0xaa || op === 0xab)) {
    out.op = op <= 0xa5 ? InsnOp.Movs : InsnOp.Stos;
    out.isWrite = true;
    out.size = out.regSize = (op & 1) === 0 ? 1 : wide;
    out.reg = op <= 0xa5 ? -1 : 0;
    out.rep = rep;
    out.length = i;
    return null;
  }

  let byteReg = false;
  let immSize = 0;
  let regSize = 0;
  let size = 0;
  if (!twoByte) {
    switch (op) {
      case 0x88: out.op = InsnOp.Store; size = 1; byteReg = true; break;
      case 0x89: out.op = InsnOp.Store; size = wide; break;
      case 0x8a: out.op = InsnOp.Load; size = 1; byteReg = true; break;
      case 0x8b: out.op = InsnOp.Load; size = wide; break;
      case 0xc6: out.op = InsnOp.StoreImm; size = 1; immSize = 1; break;
      case 0xc7: out.op = InsnOp.StoreImm; size = wide; immSize = wide === 2 ? 2 : 4; break;
      case 0x63: out.op = rexW ? InsnOp.LoadSignExtend : InsnOp.Load; size = rexW ? 4 : wide; regSize = wide; break;
      default: return `opcode ${hex(op)} is not a memory move this decoder emulates`;
    }
  } else {
    switch (op) {
      case 0xb6: out.op = InsnOp.LoadZeroExtend; size = 1; regSize = wide; break;
      case 0xb7: out.op = InsnOp.LoadZeroExtend; size = 2; regSize = wide; break;
      case 0xbe: out.op = InsnOp.LoadSignExtend; size = 1; regSize = wide; break;
      case 0xbf: out.op = InsnOp.LoadSignExtend; size = 2; regSize = wide; break;
      default: return `opcode 0f ${hex(op)} is not a memory move this decoder emulates`;
    }
  }
  if (regSize === 0) regSize = size;

  // ModRM (SDM Vol. 2A 2.1.5, Table 2-2; 64-bit mode 2.2.1.6 for RIP-relative).
  if (i >= n) return 'instruction truncated before ModRM';
  const modrm = bytes[i++]!;
  const mod = modrm >> 6;
  const regField = (modrm >> 3) & 7;
  const rm = modrm & 7;
  if (mod === 3) return `opcode ${hex(op)} with a register operand (ModRM ${hex(modrm)}) does not access memory`;
  if ((op === 0xc6 || op === 0xc7) && !twoByte && regField !== 0) return `opcode ${hex(op)} /${regField} is not MOV`;
  if (rm === 4) {
    if (i >= n) return 'instruction truncated before SIB';
    const sib = bytes[i++]!;
    out.hasSib = true;
    const ss = sib >> 6;
    const idx = ((sib >> 3) & 7) | rexX;
    const b = sib & 7;
    out.scale = 1 << ss;
    out.index = idx === 4 ? -1 : idx;
    if (b === 5 && mod === 0) {
      out.base = -1;
      if (i + 4 > n) return 'displacement truncated';
      out.disp = readLe(bytes, i, 4, true);
      out.hasDisp = true;
      i += 4;
    } else {
      out.base = b | rexB;
    }
  } else if (rm === 5 && mod === 0) {
    out.base = RIP_BASE;
    if (i + 4 > n) return 'displacement truncated';
    out.disp = readLe(bytes, i, 4, true);
    out.hasDisp = true;
    i += 4;
  } else {
    out.base = rm | rexB;
  }
  if (mod === 1) {
    if (i + 1 > n) return 'displacement truncated';
    out.disp = readLe(bytes, i, 1, true);
    out.hasDisp = true;
    i += 1;
  } else if (mod === 2) {
    if (i + 4 > n) return 'displacement truncated';
    out.disp = readLe(bytes, i, 4, true);
    out.hasDisp = true;
    i += 4;
  }
  if (immSize > 0) {
    if (i + immSize > n) return 'immediate truncated';
    const v = readLe(bytes, i, immSize, true);
    out.imm = BigInt.asUintN(size * 8, v);
    i += immSize;
  } else {
    const r = regField | rexR;
    if (byteReg && rex === 0 && r >= 4 && r <= 7) {
      out.highByte = true;
      out.reg = r - 4;
    } else {
      out.reg = r;
    }
  }
  out.isWrite = out.op === InsnOp.Store || out.op === InsnOp.StoreImm;
  out.size = size;
  out.regSize = regSize;
  out.length = i;
  return null;
}

function readLe(b: Uint8Array, off: number, len: number, signed: boolean): bigint {
  let v = 0n;
  for (let k = len - 1; k >= 0; k--) v = (v << 8n) | BigInt(b[off + k]!);
  return signed ? BigInt.asIntN(len * 8, v) : v;
}
