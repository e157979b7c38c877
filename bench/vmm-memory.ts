// The VMM's own resident memory, guest RAM excluded: the sum of Rss over /proc/PID/smaps minus
// the mappings that hold guest RAM (an anonymous, shared-anonymous (/dev/zero) or memfd mapping
// the size of guest memory, up to 4 MiB of alignment slack, or one named *guest-ram*).
import { readFileSync } from 'node:fs';

export function parseSmapsRss(text: string, guestBytes: number): { totalKb: number; guestKb: number } {
  let totalKb = 0;
  let guestKb = 0;
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
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) {
      const kb = Number(rss[1]);
      totalKb += kb;
      if (isGuest) guestKb += kb;
    }
  }
  return { totalKb, guestKb };
}

/** MiB of resident memory of `pid` outside guest RAM, or NaN if the process is gone. */
export function vmmRssMiB(pid: number, guestBytes: number): number {
  try {
    const { totalKb, guestKb } = parseSmapsRss(readFileSync(`/proc/${pid}/smaps`, 'utf8'), guestBytes);
    return (totalKb - guestKb) / 1024;
  } catch {
    return NaN;
  }
}
