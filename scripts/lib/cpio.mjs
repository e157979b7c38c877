// Writer for the "newc" cpio format the kernel unpacks as initramfs
// (Documentation/driver-api/early-userspace/buffer-format.rst).
import { readFileSync, readlinkSync, lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const S_IFDIR = 0o040000, S_IFREG = 0o100000, S_IFLNK = 0o120000, S_IFCHR = 0o020000;

function hex8(n) {
  return (n >>> 0).toString(16).padStart(8, '0');
}

export class CpioWriter {
  constructor() {
    this.chunks = [];
    this.ino = 1;
    this.size = 0;
    this.names = new Set();
  }

  #push(buf) {
    this.chunks.push(buf);
    this.size += buf.length;
    const pad = (4 - (this.size % 4)) % 4;
    if (pad) {
      this.chunks.push(Buffer.alloc(pad));
      this.size += pad;
    }
  }

  #entry(name, mode, data, rdevMajor = 0, rdevMinor = 0) {
    if (this.names.has(name)) throw new Error(`cpio: duplicate entry ${name}`);
    this.names.add(name);
    const nameBuf = Buffer.from(name + '\0');
    const fields = [
      '070701', hex8(this.ino++), hex8(mode), hex8(0), hex8(0), hex8(1), hex8(0),
      hex8(data.length), hex8(0), hex8(0), hex8(rdevMajor), hex8(rdevMinor), hex8(nameBuf.length), hex8(0),
    ];
    this.#push(Buffer.concat([Buffer.from(fields.join('')), nameBuf]));
    if (data.length) this.#push(data);
  }

  dir(name, perm = 0o755) { this.#entry(name, S_IFDIR | perm, Buffer.alloc(0)); }
  file(name, data, perm = 0o644) { this.#entry(name, S_IFREG | perm, Buffer.from(data)); }
  symlink(name, target) { this.#entry(name, S_IFLNK | 0o777, Buffer.from(target)); }
  charDevice(name, major, minor, perm = 0o600) { this.#entry(name, S_IFCHR | perm, Buffer.alloc(0), major, minor); }

  /** Ensure every parent directory of `name` exists in the archive. */
  parents(name) {
    const parts = name.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (d && !this.names.has(d)) this.dir(d);
    }
  }

  /** Copy a host file (following nothing: symlinks stay symlinks). */
  hostFile(name, hostPath, perm) {
    this.parents(name);
    const st = lstatSync(hostPath);
    if (st.isSymbolicLink()) this.symlink(name, readlinkSync(hostPath));
    else this.file(name, readFileSync(hostPath), perm ?? (st.mode & 0o7777));
  }

  /** Copy a host directory tree. */
  hostTree(name, hostDir) {
    this.parents(name + '/x');
    if (!this.names.has(name)) this.dir(name);
    for (const ent of readdirSync(hostDir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const hp = join(hostDir, ent.name);
      if (ent.isDirectory()) this.hostTree(`${name}/${ent.name}`, hp);
      else this.hostFile(`${name}/${ent.name}`, hp);
    }
  }

  finish() {
    this.#entry('TRAILER!!!', 0, Buffer.alloc(0));
    const pad = (512 - (this.size % 512)) % 512;
    if (pad) this.chunks.push(Buffer.alloc(pad));
    return Buffer.concat(this.chunks);
  }
}
