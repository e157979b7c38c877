// The VMM's own memory, guest RAM excluded. Totals come from /proc/PID/smaps_rollup (the kernel's
// sum over every mapping of the process, proc(5)); the mappings that hold guest RAM (an anonymous,
// shared-anonymous (/dev/zero) or memfd mapping the size of guest memory, up to 4 MiB of alignment
// slack, or one named *guest-ram*) are found in /proc/PID/smaps and subtracted.
//  - RSS: resident pages, each counted whole even when another process maps it too;
//  - PSS: each resident page divided by the number of processes mapping it (shared libraries
//    and the node/qemu binary are split with every other process using them);
//  - USS (private): Private_Clean + Private_Dirty, what the process alone holds (freed at exit).
import { readdirSync, readFileSync } from 'node:fs';

export interface SmapsTotals {
  rssKb: number;
  pssKb: number;
  privateKb: number;
}

export interface SmapsSplit {
  total: SmapsTotals;
  guest: SmapsTotals;
}

const zero = (): SmapsTotals => ({ rssKb: 0, pssKb: 0, privateKb: 0 });

/** Sum Rss / Pss / Private_* over the mappings of a smaps (or smaps_rollup) text. */
export function parseSmaps(text: string, guestBytes: number): SmapsSplit {
  const total = zero();
  const guest = zero();
  let isGuest = false;
  for (const line of text.split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+)\s+\S+\s+\S+\s+\S+\s+\S+\s*(.*)$/.exec(line);
    if (head) {
      const size = parseInt(head[2]!, 16) - parseInt(head[1]!, 16);
      const name = head[3] ?? '';
      // Private anonymous mappings have no name; shared anonymous ones show as /dev/zero (deleted).
      const anon = name === '' || name.startsWith('/dev/zero') || name.startsWith('/memfd:') || name.startsWith('[anon');
      isGuest = name.includes('guest-ram') || (anon && size >= guestBytes && size <= guestBytes + 4 * 1024 * 1024);
      continue;
    }
    const f = /^(Rss|Pss|Private_Clean|Private_Dirty):\s+(\d+) kB/.exec(line);
    if (!f) continue;
    const kb = Number(f[2]);
    const key: keyof SmapsTotals = f[1] === 'Rss' ? 'rssKb' : f[1] === 'Pss' ? 'pssKb' : 'privateKb';
    total[key] += kb;
    if (isGuest) guest[key] += kb;
  }
  return { total, guest };
}

/** Rss only (kept for callers that want one figure). */
export function parseSmapsRss(text: string, guestBytes: number): { totalKb: number; guestKb: number } {
  const s = parseSmaps(text, guestBytes);
  return { totalKb: s.total.rssKb, guestKb: s.guest.rssKb };
}

export interface VmmMemory {
  rssMiB: number;
  pssMiB: number;
  ussMiB: number;
}

/** MiB of RSS / PSS / USS of `pid` outside guest RAM; NaN each if the process is gone. */
export function vmmMemory(pid: number, guestBytes: number): VmmMemory {
  try {
    const guest = parseSmaps(readFileSync(`/proc/${pid}/smaps`, 'utf8'), guestBytes).guest;
    let total: SmapsTotals;
    try {
      total = parseSmaps(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'), 0).total;
    } catch {
      total = parseSmaps(readFileSync(`/proc/${pid}/smaps`, 'utf8'), guestBytes).total; // kernel < 4.14
    }
    return {
      rssMiB: (total.rssKb - guest.rssKb) / 1024,
      pssMiB: (total.pssKb - guest.pssKb) / 1024,
      ussMiB: (total.privateKb - guest.privateKb) / 1024,
    };
  } catch {
    return { rssMiB: NaN, pssMiB: NaN, ussMiB: NaN };
  }
}

/** MiB of resident memory of `pid` outside guest RAM, or NaN if the process is gone. */
export function vmmRssMiB(pid: number, guestBytes: number): number {
  return vmmMemory(pid, guestBytes).rssMiB;
}

export interface ThreadCpu {
  tid: number;
  comm: string;
  /** utime + stime in ms (clock ticks of 10 ms, USER_HZ = 100). */
  cpuMs: number;
}

/** Per-thread CPU time so far from /proc/PID/task/TID/stat (proc(5): fields 14 utime, 15 stime). */
export function threadCpu(pid: number): ThreadCpu[] {
  const out: ThreadCpu[] = [];
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const t of tids) {
    try {
      const s = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      out.push({ tid: Number(t), comm: s.slice(s.indexOf('(') + 1, s.lastIndexOf(')')), cpuMs: parseTaskStat(s) });
    } catch {
      // the thread exited meanwhile
    }
  }
  return out;
}

/** utime + stime of one /proc/PID/task/TID/stat line, in ms (USER_HZ = 100). */
export function parseTaskStat(s: string): number {
  // comm is in parentheses and may contain spaces and ')': split after the last ')'.
  const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state): utime is field 14 -> rest[11], stime field 15 -> rest[12].
  return (Number(rest[11]) + Number(rest[12])) * 10;
}
