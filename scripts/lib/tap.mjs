// Reading the TAP files node --test writes (scripts/test.mjs): counts and failures.
import { existsSync, readFileSync } from 'node:fs';

/** Sum the "# pass/# fail/# skipped/# todo" trailers of a TAP file written by node --test. */
export function tapCounts(path) {
  const c = { pass: 0, fail: 0, skipped: 0, todo: 0, cancelled: 0, found: false };
  if (!existsSync(path)) return c;
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const m = /^# (pass|fail|skipped|todo|cancelled) (\d+)$/.exec(line);
    if (m) { c[m[1]] += Number(m[2]); c.found = true; }
  }
  return c;
}

/**
 * The failing tests of a TAP file written by node --test: each one's name and the first lines of
 * its error (the YAML block's `error:`), so that the end of a long run still says what failed.
 */
export function tapFailures(path, maxLines = 24) {
  const out = [];
  if (!existsSync(path)) return out;
  const lines = readFileSync(path, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^(\s*)not ok \d+ - (.*)$/.exec(lines[i]);
    if (!m) continue;
    const indent = m[1].length;
    const error = [];
    for (let j = i + 1; j < lines.length; j++) {
      const l = lines[j];
      if (/^\s*(not )?ok \d+ - /.test(l) || (l.trim() === '...' && l.indexOf('...') <= indent + 2)) break;
      const e = /^(\s*)error: ?(.*)$/.exec(l);
      if (!e) continue;
      const base = e[1].length;
      if (e[2] !== '|-' && e[2] !== '|' && e[2] !== '') error.push(e[2].replace(/^'|'$/g, ''));
      for (let k = j + 1; k < lines.length && error.length < maxLines; k++) {
        const c = lines[k];
        if (c.trim() !== '' && c.length - c.trimStart().length <= base) break;
        error.push(c.trim());
      }
      break;
    }
    // A subtest's failure also fails its parent: report the innermost (the parent says "subtest failed").
    if (error.some((l) => /\d+ subtests? failed/.test(l))) continue;
    out.push({ name: m[2], error });
  }
  return out;
}
