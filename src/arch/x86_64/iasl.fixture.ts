// Test-only: a DSDT through ACPICA's iasl (Debian's acpica-tools), disassembled and compiled back,
// for the AML tests (ged_aml, cpu_hotplug_aml, memory_hotplug_aml) to match the ASL they mean.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** null when `iasl` runs here, else why not (the test skips with it). */
export function iaslOrWhy(): string | null {
  try {
    execFileSync('iasl', ['-v'], { stdio: 'pipe' });
    return null;
  } catch (e) {
    return `iasl (Debian package acpica-tools) is not installed: ${(e as Error).message.split('\n')[0]}`;
  }
}

export interface IaslRoundTrip {
  /** `iasl -d`'s ASL. */
  asl: string;
  /** The ASL without comments (iasl annotates names and values), whitespace squeezed to one space. */
  squeezed: string;
  /** The lines of iasl -d's output that mention errors or warnings. */
  warnings: string[];
}

/**
 * Disassemble `dsdt` with `iasl -d`, then compile the disassembly back with `iasl` (it exits
 * non-zero, and this throws, on any compile error).
 */
export function iaslRoundTrip(dsdt: Uint8Array): IaslRoundTrip {
  const dir = mkdtempSync(join(tmpdir(), 'stv-iasl-'));
  try {
    writeFileSync(join(dir, 'dsdt.aml'), dsdt);
    const log = execFileSync('iasl', ['-d', join(dir, 'dsdt.aml')], { stdio: 'pipe', cwd: dir }).toString();
    const asl = readFileSync(join(dir, 'dsdt.dsl'), 'utf8');
    execFileSync('iasl', ['-p', join(dir, 'again'), join(dir, 'dsdt.dsl')], { stdio: 'pipe', cwd: dir });
    const squeezed = asl.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/[^\n]*/g, '').replace(/\s+/g, ' ');
    return { asl, squeezed, warnings: log.split('\n').filter((l) => /error|warning/i.test(l)) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
