import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CliError, parseArgs, parseOptionList, parseSize, splitOptionList, usage, type RunArgs } from './args.js';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

function run(...argv: string[]): RunArgs {
  const r = parseArgs(argv);
  assert.equal(r.kind, 'run');
  return r as RunArgs;
}

/** Assert parseArgs throws a CliError whose message matches `re`. */
function fails(argv: string[], re: RegExp, flag?: string): void {
  assert.throws(
    () => parseArgs(argv),
    (e: unknown) => {
      assert.ok(e instanceof CliError, `expected CliError, got ${String(e)}`);
      assert.match(e.message, re);
      if (flag !== undefined) assert.equal(e.flag, flag);
      return true;
    },
  );
}

test('minimal VM: defaults like Cloud Hypervisor', () => {
  const r = run('--kernel', '/boot/vmlinux');
  assert.equal(r.verbosity, 0);
  assert.equal(r.apiSocket, undefined);
  const c = r.config!;
  assert.deepEqual(c.payload, { kernel: '/boot/vmlinux' });
  assert.equal(c.cpus.boot_vcpus, 1);
  assert.equal(c.cpus.max_vcpus, 1);
  assert.equal(c.memory.size, 512 * MIB);
  assert.equal(c.serial.mode, 'Null');
  assert.equal(c.console.mode, 'Tty');
  assert.equal(c.rng.src, '/dev/urandom');
  assert.equal(c.disks, undefined);
  assert.equal(c.net, undefined);
});

test('full command line', () => {
  const r = run(
    '--kernel', 'vmlinux',
    '--initramfs', 'initrd.img',
    '--cmdline', 'console=ttyS0 reboot=k panic=1',
    '--cpus', 'boot=2,max=4',
    '--memory', 'size=1G,shared=on,hugepages=off',
    '--serial', 'tty',
    '--console', 'off',
    '--disk', 'path=a.img', 'path=b.img,readonly=on,direct=true',
    '--disk', 'path=c.img,num_queues=2,queue_size=256,id=disk3,serial=ABC',
    '--net', 'tap=tap0,mac=12:34:56:78:9a:bc,ip=10.0.0.1,mask=255.255.255.0,num_queues=2,queue_size=512,id=net0',
    '--rng', 'src=/dev/random',
    '--api-socket', '/tmp/api.sock',
    '--event-monitor', 'path=/tmp/events',
    '-vv', '-v',
    '--watchdog',
  );
  assert.equal(r.verbosity, 3);
  assert.deepEqual(r.apiSocket, { path: '/tmp/api.sock' });
  assert.deepEqual(r.eventMonitor, { path: '/tmp/events' });
  const c = r.config!;
  assert.deepEqual(c.payload, { kernel: 'vmlinux', initramfs: 'initrd.img', cmdline: 'console=ttyS0 reboot=k panic=1' });
  assert.equal(c.cpus.boot_vcpus, 2);
  assert.equal(c.cpus.max_vcpus, 4);
  assert.equal(c.memory.size, GIB);
  assert.equal(c.memory.shared, true);
  assert.equal(c.memory.hugepages, false);
  assert.deepEqual(c.serial, { mode: 'Tty' });
  assert.deepEqual(c.console, { mode: 'Off', iommu: false });
  assert.equal(c.disks!.length, 3);
  assert.deepEqual(
    c.disks!.map((d) => [d.path, d.readonly, d.direct, d.num_queues, d.queue_size, d.id, d.serial]),
    [
      ['a.img', false, false, 1, 128, undefined, undefined],
      ['b.img', true, true, 1, 128, undefined, undefined],
      ['c.img', false, false, 2, 256, 'disk3', 'ABC'],
    ],
  );
  const n = c.net![0]!;
  assert.deepEqual(
    [n.tap, n.mac, n.ip, n.mask, n.num_queues, n.queue_size, n.id],
    ['tap0', '12:34:56:78:9a:bc', '10.0.0.1', '255.255.255.0', 2, 512, 'net0'],
  );
  assert.deepEqual(c.rng, { src: '/dev/random', iommu: false });
  assert.equal(c.watchdog, true);
});

test('--flag=value form, serial/console modes, quoting', () => {
  const r = run('--kernel=/k', '--serial=file=/tmp/serial.log', '--console', 'pty', '--cmdline=a=b c');
  assert.deepEqual(r.config!.serial, { mode: 'File', file: '/tmp/serial.log' });
  assert.equal(r.config!.console.mode, 'Pty');
  assert.equal(r.config!.payload.cmdline, 'a=b c');
  assert.deepEqual(run('--kernel', 'k', '--serial', 'socket=/run/s.sock').config!.serial, {
    mode: 'Socket',
    socket: '/run/s.sock',
  });
  assert.deepEqual(run('--kernel', 'k', '--serial', 'null').config!.serial, { mode: 'Null' });
  assert.deepEqual(run('--kernel', 'k', '--serial', 'off').config!.serial, { mode: 'Off' });
  assert.deepEqual(run('--kernel', 'k', '--serial', 'pty').config!.serial, { mode: 'Pty' });
  assert.deepEqual(run('--kernel', 'k', '--console', 'file=/x,iommu=on').config!.console, {
    mode: 'File',
    file: '/x',
    iommu: true,
  });
  // Quotes protect commas; brackets are kept together.
  const d = run('--kernel', 'k', '--disk', 'path="/a,b.img",id=x').config!.disks![0]!;
  assert.equal(d.path, '/a,b.img');
  assert.deepEqual(splitOptionList('--x', 'a=[1,2],b="c,d",e'), ['a=[1,2]', 'b="c,d"', 'e']);
  assert.deepEqual([...parseOptionList('--x', 'size=1G,shared', ['size'], ['shared'])], [
    ['size', '1G'],
    ['shared', ''],
  ]);
});

test('cpus topology and memory options', () => {
  const c = run(
    '--kernel', 'k',
    '--cpus', 'boot=4,topology=2:2:1:1,max_phys_bits=40,kvm_hyperv=off,nested=on',
    '--memory', 'size=2G,hugepages=on,hugepage_size=2M,prefault=on,thp=off,mergeable=off,hotplug_size=1G',
  ).config!;
  assert.deepEqual(c.cpus.topology, { threads_per_core: 2, cores_per_die: 2, dies_per_package: 1, packages: 1 });
  assert.equal(c.cpus.max_phys_bits, 40);
  assert.equal(c.cpus.nested, true);
  assert.equal(c.memory.hugepage_size, 2 * MIB);
  assert.equal(c.memory.hotplug_size, GIB);
  assert.equal(c.memory.prefault, true);
  assert.equal(c.memory.thp, false);
});

test('--memory hotplug_method=acpi|virtio-mem, hotplugged_size: as Cloud Hypervisor; bad values and VirtioMem rules named', () => {
  const c = run('--kernel', 'k', '--memory', 'size=512M,hotplug_method=virtio-mem,hotplug_size=512M,hotplugged_size=128M').config!;
  assert.deepEqual([c.memory.size, c.memory.hotplug_method, c.memory.hotplug_size, c.memory.hotplugged_size], [512 * MIB, 'VirtioMem', 512 * MIB, 128 * MIB]);
  assert.equal(run('--kernel', 'k', '--memory', 'size=1G,hotplug_method=acpi,hotplug_size=1G').config!.memory.hotplug_method, 'Acpi');
  assert.equal(run('--kernel', 'k', '--memory', 'size=1G').config!.memory.hotplug_method, undefined, 'absent: CH\'s default (Acpi)');
  fails(['--kernel', 'k', '--memory', 'size=1G,hotplug_method=dimm'], /--memory: hotplug_method "dimm" is not one of: acpi, virtio-mem/, '--memory');
  fails(['--kernel', 'k', '--memory', 'size=1G,hotplug_method=virtio-mem'], /--memory: hotplug_size is required with hotplug_method "VirtioMem"/);
  fails(['--kernel', 'k', '--memory', 'size=1G,hotplug_method=virtio-mem,hotplug_size=3M'], /--memory: hotplug_size 3145728 is not a multiple of 2 MiB \(the virtio-mem block size\)/);
  fails(['--kernel', 'k', '--memory', 'size=1G,hotplug_method=virtio-mem,hotplug_size=64M,hotplugged_size=128M'], /--memory: hotplugged_size 134217728 bytes is more than hotplug_size/);
});

test('--cpus kvm_hyperv=on|off turns Hyper-V enlightenments on or off; absent is off; a bad value is named', () => {
  assert.equal(run('--kernel', 'k', '--cpus', 'boot=2,kvm_hyperv=on').config!.cpus.kvm_hyperv, true);
  assert.equal(run('--kernel', 'k', '--cpus', 'kvm_hyperv=off,boot=2').config!.cpus.kvm_hyperv, false);
  assert.equal(run('--kernel', 'k', '--cpus', 'boot=2').config!.cpus.kvm_hyperv, false);
  assert.throws(() => parseArgs(['--kernel', 'k', '--cpus', 'boot=2,kvm_hyperv=yes please']), /--cpus: bad value "yes please" for kvm_hyperv \(expected on or off\)/);
});

test('sizes', () => {
  assert.equal(parseSize('512M'), 512 * MIB);
  assert.equal(parseSize('1G'), GIB);
  assert.equal(parseSize('4K'), 4096);
  assert.equal(parseSize('2T'), 2 * 1024 * GIB);
  assert.equal(parseSize('2g'), 2 * GIB);
  assert.equal(parseSize('268435456'), 256 * MIB);
  assert.equal(parseSize('12Q'), undefined);
  assert.equal(parseSize('1.5G'), undefined);
  assert.equal(parseSize(''), undefined);
  assert.equal(parseSize('-1'), undefined);
  assert.equal(parseSize('99999999999T'), undefined);
  assert.equal(run('--kernel', 'k', '--memory', 'size=536870912').config!.memory.size, 512 * MIB);
});

test('no VM options: VMM only, waiting on the API socket', () => {
  const r = run('--api-socket', 'path=/run/sv.sock', '-v');
  assert.equal(r.config, null);
  assert.deepEqual(r.apiSocket, { path: '/run/sv.sock' });
  assert.deepEqual(run('--api-socket', 'fd=3').apiSocket, { fd: 3 });
  assert.deepEqual(run('--api-socket=/x.sock').apiSocket, { path: '/x.sock' });
  assert.deepEqual(run('--event-monitor', 'fd=4').eventMonitor, { fd: 4 });
  assert.equal(run('--log-file', '/tmp/log').logFile, '/tmp/log');
  assert.deepEqual(run(), { kind: 'run', config: null, verbosity: 0, confine: { seccomp: 'true', landlock: false, landlockRules: [] } });
});

test('version and help', () => {
  assert.deepEqual(parseArgs(['--version']), { kind: 'version' });
  assert.deepEqual(parseArgs(['-V']), { kind: 'version' });
  const h = parseArgs(['--kernel', 'k', '-h']);
  assert.equal(h.kind, 'help');
  assert.equal(parseArgs(['--help']).kind, 'help');
  for (const flag of ['--kernel', '--cpus', '--memory', '--disk', '--net', '--serial', '--console', '--api-socket', 'remote']) {
    assert.ok(usage.includes(flag), `usage mentions ${flag}`);
  }
  if (h.kind === 'help') assert.equal(h.text, usage);
});

test('remote subcommand', () => {
  assert.deepEqual(parseArgs(['remote', '--api-socket', '/run/sv.sock', 'info']), {
    kind: 'remote',
    apiSocket: '/run/sv.sock',
    command: 'info',
    args: [],
    json: false,
  });
  assert.deepEqual(parseArgs(['remote', '--api-socket=/s', 'resize', '--cpus', '4', '--json']), {
    kind: 'remote',
    apiSocket: '/s',
    command: 'resize',
    args: ['--cpus', '4'],
    json: true,
  });
  assert.deepEqual(parseArgs(['remote', '--json', '--api-socket', 'path=/s', 'add-disk', 'path=/d.img']), {
    kind: 'remote',
    apiSocket: '/s',
    command: 'add-disk',
    args: ['path=/d.img'],
    json: true,
  });
  assert.equal(parseArgs(['remote', '--help']).kind, 'help');
  fails(['remote', 'info'], /remote: --api-socket <path> is required/);
  fails(['remote', '--api-socket', '/s'], /remote: missing command/);
  fails(['remote', '--api-socket', '/s', 'explode'], /remote: unknown command "explode"/);
  fails(['remote', '--api-socket'], /remote: --api-socket requires a value/);
  fails(['remote', '--api-socket', 'fd=3', 'info'], /needs a path/);
  fails(['remote', '--bogus', 'info'], /remote: unknown flag --bogus/);
  fails(['--kernel', 'k', 'remote'], /"remote" must be the first argument/);
});

test('error: unknown flag', () => {
  fails(['--kernal', 'k'], /unknown flag --kernal/, '--kernal');
  fails(['-x'], /unknown flag -x/, '-x');
  fails(['-vq'], /unknown flag -q \(in -vq\)/);
  fails(['--numa', 'guest_numa_id=0'], /--numa is a Cloud Hypervisor option that stratovisor does not support/);
  fails(['--'], /unexpected argument "--"/);
});

test('error: missing value', () => {
  fails(['--kernel'], /--kernel requires a value/, '--kernel');
  fails(['--kernel', '--cpus', 'boot=1'], /--kernel requires a value/, '--kernel');
  fails(['--kernel', 'k', '--disk'], /--disk requires a value/, '--disk');
  fails(['--kernel', 'k', '--memory', 'size'], /--memory: "size" needs a value \(size=\.\.\.\)/);
  fails(['--kernel', 'k', '--serial', 'file='], /--serial: a path is required/);
  fails(['--kernel', 'k', '--serial', ''], /--serial: missing mode/);
  fails(['--kernel', 'k', '--api-socket', 'path='], /--api-socket: a path is required/);
  fails(['--kernel', 'k', '--api-socket', ''], /--api-socket: empty value/);
  fails(['--kernel='], /--kernel: empty path/);
});

test('error: bad number', () => {
  fails(['--kernel', 'k', '--cpus', 'boot=two'], /--cpus: bad number "two" for boot/, '--cpus');
  fails(['--kernel', 'k', '--cpus', 'boot=-1'], /--cpus: bad number "-1" for boot/);
  fails(['--kernel', 'k', '--disk', 'path=a,num_queues=1.5'], /--disk: bad number "1.5" for num_queues/);
  fails(['--kernel', 'k', '--net', 'tap=t,queue_size=0x100'], /--net: bad number "0x100" for queue_size/);
  fails(['--kernel', 'k', '--api-socket', 'fd=x'], /--api-socket: bad number "x" for fd/);
  fails(['--kernel', 'k', '--cpus', 'topology=2:2:1'], /--cpus: bad topology "2:2:1"/);
});

test('error: --cpus boot=0 and cpu ranges', () => {
  fails(['--kernel', 'k', '--cpus', 'boot=0'], /--cpus: boot=0 is invalid: at least 1 vCPU is required/, '--cpus');
  fails(['--kernel', 'k', '--cpus', 'boot=4,max=2'], /--cpus: max_vcpus \(2\) is lower than boot_vcpus \(4\)/, '--cpus');
  fails(['--kernel', 'k', '--cpus', 'boot=300'], /--cpus: boot_vcpus 300 exceeds the limit of 254/);
});

test('error: unknown key', () => {
  fails(['--kernel', 'k', '--memory', 'foo=1'], /--memory: unknown key "foo"/, '--memory');
  fails(['--kernel', 'k', '--disk', 'path=a,bogus=1'], /--disk: unknown key "bogus"/);
  fails(['--kernel', 'k', '--net', 'tapp=x'], /--net: unknown key "tapp"/);
  fails(['--kernel', 'k', '--serial', 'vga'], /--serial: unknown key "vga"/);
  fails(['--kernel', 'k', '--serial', 'tty=1'], /--serial: "tty" takes no value/);
  fails(['--kernel', 'k', '--serial', 'iommu=on'], /--serial: unknown key "iommu"/);
  fails(['--kernel', 'k', '--memory', 'size=1G,size=2G'], /--memory: "size" given more than once/);
});

test('error: bad size', () => {
  fails(['--kernel', 'k', '--memory', 'size=12Q'], /--memory: bad size "12Q" for size/, '--memory');
  fails(['--kernel', 'k', '--memory', 'size=1000'], /--memory: size 1000 is not a multiple of 4 KiB/);
  fails(['--kernel', 'k', '--memory', 'size=16M'], /--memory: size .* below the minimum/);
});

test('error: other problems name their flag', () => {
  fails(['--kernel', 'k', '--kernel', 'k2'], /--kernel given more than once/, '--kernel');
  fails(['--kernel', 'k', '--watchdog', '--watchdog'], /--watchdog given more than once/);
  fails(['--watchdog=on'], /--watchdog takes no value/);
  fails(['--kernel', 'k', 'stray'], /unexpected argument "stray"/);
  fails(['--cpus', 'boot=2'], /--kernel \(or --firmware\) is required/, '--kernel');
  fails(['--kernel', 'k', '--serial', 'tty,off'], /--serial: only one mode may be given, got off and tty|--serial: only one mode may be given, got tty and off/);
  fails(['--kernel', 'k', '--disk', 'path=a,readonly=maybe'], /--disk: bad value "maybe" for readonly \(expected on or off\)/);
  fails(['--kernel', 'k', '--disk', 'readonly=on'], /--disk #1: path is required/, '--disk');
  fails(['--kernel', 'k', '--disk', 'path=a', 'path=b,queue_size=100'], /--disk #2: queue_size must be a power of two/);
  fails(['--kernel', 'k', '--net', 'tap=t,mac=zz'], /--net #1: mac must be a unicast MAC/);
  fails(['--kernel', 'k', '--disk', 'path="a'], /--disk: unterminated quote/);
  fails(['--kernel', 'k', '--disk', 'path=a]'], /--disk: unbalanced "]"/);
  fails(['--kernel', 'k', '--api-socket', 'path=/a,fd=3'], /either path= or fd=/);
  fails(['--firmware', 'fw', '--initramfs', 'i'], /--initramfs: initramfs requires a kernel/);
  // As in CH, an empty value means "not given": the default source is used.
  assert.equal(run('--kernel', 'k', '--rng', 'src=').config!.rng.src, '/dev/urandom');
  fails(['--kernel', 'k', '--rng', 'source=/dev/random'], /--rng: unknown key "source"/);
});

test('--fs (Cloud Hypervisor syntax): tag, socket, num_queues, queue_size, id; needs --memory shared=on', () => {
  const r = parseArgs(['--kernel', '/k', '--memory', 'size=512M,shared=on', '--fs', 'tag=myfs,socket=/run/vfsd.sock,num_queues=1,queue_size=512,id=fs0', 'tag=b,socket=/s2']) as RunArgs;
  assert.deepEqual(r.config!.fs, [
    { tag: 'myfs', socket: '/run/vfsd.sock', num_queues: 1, queue_size: 512, id: 'fs0' },
    { tag: 'b', socket: '/s2', num_queues: 1, queue_size: 1024 },
  ]);
  assert.throws(() => parseArgs(['--kernel', '/k', '--fs', 'tag=myfs,socket=/s']), (e: unknown) =>
    e instanceof CliError && /^--fs #1: virtio-fs needs --memory shared=on \(guest RAM must be shareable with the vhost-user backend\)$/.test(e.message));
  assert.throws(() => parseArgs(['--kernel', '/k', '--memory', 'shared=on', '--fs', 'socket=/s']), /--fs #1: tag is required/);
  assert.throws(() => parseArgs(['--kernel', '/k', '--memory', 'shared=on', '--fs', 'tag=a']), /--fs #1: socket is required/);
  assert.throws(() => parseArgs(['--kernel', '/k', '--memory', 'shared=on', '--fs', 'tag=a,socket=/s,queue_size=100']), /queue_size must be a power of two/);
  assert.throws(() => parseArgs(['--kernel', '/k', '--memory', 'shared=on', '--fs', 'tag=a,socket=/s,cache=none']), /--fs/);
  assert.match(usage, /--fs <tag=<tag>,socket=<path>/);
});

test('--vsock (Cloud Hypervisor syntax)', () => {
  const base = ['--kernel', '/k'];
  const r = parseArgs([...base, '--vsock', 'cid=3,socket=/tmp/v.sock,id=vs0']);
  assert.equal(r.kind, 'run');
  assert.deepEqual(r.kind === 'run' ? r.config?.vsock : null, { cid: 3, socket: '/tmp/v.sock', id: 'vs0' });
  fails([...base, '--vsock', 'cid=2,socket=/tmp/v.sock'], /^--vsock: cid must be an integer in 3\.\.\d+ \(0\.\.2 are reserved\), got 2$/, '--vsock');
  fails([...base, '--vsock', 'cid=3'], /^--vsock: socket is required$/, '--vsock');
  fails([...base, '--vsock', 'socket=/s'], /^--vsock: cid is required$/, '--vsock');
  fails([...base, '--vsock', 'cid=x,socket=/s'], /--vsock: bad number "x" for cid/, '--vsock');
  fails([...base, '--vsock', 'cid=3,socket=/s,port=1'], /--vsock/, '--vsock');
  fails([...base, '--vsock', 'cid=3,socket=/a', '--vsock', 'cid=4,socket=/b'], /--vsock given more than once/, '--vsock');
});

test('iothread=<name> on --disk, --net, --fs and --vsock: a thread of the device\'s own; bad names are refused', () => {
  const c = run(
    '--kernel', '/k', '--memory', 'shared=on',
    '--disk', 'path=/a.img,iothread=blk0', 'path=/b.img',
    '--net', 'tap=t0,iothread=net_0',
    '--fs', 'tag=f,socket=/s,iothread=blk0',
    '--vsock', 'cid=3,socket=/v,iothread=v-1',
  ).config!;
  assert.deepEqual(c.disks!.map((d) => d.iothread), ['blk0', undefined]);
  assert.equal(c.net![0]!.iothread, 'net_0');
  assert.equal(c.fs![0]!.iothread, 'blk0');
  assert.equal(c.vsock!.iothread, 'v-1');
  fails(['--kernel', '/k', '--net', 'tap=t0,iothread=a/b'], /--net #1: iothread must be a name/);
  fails(['--kernel', '/k', '--vsock', 'cid=3,socket=/v,iothread=' + 'x'.repeat(33)], /iothread must be a name of 1\.\.32/);
});

test('rate limits: --disk/--net bw_*/ops_* and --rate-limit-group as Cloud Hypervisor', () => {
  const r = run(
    '--kernel', '/k',
    '--disk', 'path=/a.img,bw_size=1048576,bw_refill_time=100,bw_one_time_burst=2M', 'path=/b.img,rate_limit_group=g0,id=b', 'path=/c.img,ops_size=100,ops_refill_time=1000',
    '--net', 'tap=t0,bw_size=10M,bw_refill_time=1000,ops_size=1000,ops_one_time_burst=50,ops_refill_time=1000',
    '--rate-limit-group', 'bw_size=1048576,bw_refill_time=100,id=g0',
  );
  assert.deepEqual(r.config!.disks![0]!.rate_limiter_config, { bandwidth: { size: MIB, refill_time: 100, one_time_burst: 2 * MIB } });
  assert.equal(r.config!.disks![0]!.rate_limit_group, undefined);
  assert.equal(r.config!.disks![1]!.rate_limiter_config, undefined);
  assert.equal(r.config!.disks![1]!.rate_limit_group, 'g0');
  assert.deepEqual(r.config!.disks![2]!.rate_limiter_config, { ops: { size: 100, refill_time: 1000 } });
  assert.deepEqual(r.config!.net![0]!.rate_limiter_config, {
    bandwidth: { size: 10 * MIB, refill_time: 1000 }, ops: { size: 1000, refill_time: 1000, one_time_burst: 50 },
  });
  assert.deepEqual(r.config!.rate_limit_groups, [{ id: 'g0', rate_limiter_config: { bandwidth: { size: MIB, refill_time: 100 } } }]);
  // A group-limited disk only (CH's io_throttling.md example, with the group's id).
  const g = run('--kernel', '/k', '--disk', 'path=/a,rate_limit_group=group0', 'path=/b,rate_limit_group=group0', '--rate-limit-group', 'bw_size=1048576,bw_refill_time=100,id=group0');
  assert.deepEqual(g.config!.disks!.map((d) => d.rate_limit_group), ['group0', 'group0']);
});

test('rate limits: bad forms are refused, naming the flag and the key', () => {
  fails(['--kernel', '/k', '--disk', 'path=/a,bw_size=1000'], /^--disk: bw_refill_time is required with bw_size/, '--disk');
  fails(['--kernel', '/k', '--disk', 'path=/a,ops_refill_time=10'], /^--disk: ops_size is required with ops_refill_time/, '--disk');
  fails(['--kernel', '/k', '--disk', 'path=/a,bw_one_time_burst=10'], /^--disk: bw_size is required with bw_one_time_burst/, '--disk');
  fails(['--kernel', '/k', '--disk', 'path=/a,bw_size=1000,bw_refill_time=0'], /^--disk #1: bw_refill_time must be > 0 for a bucket of size 1000/, '--disk');
  fails(['--kernel', '/k', '--net', 'tap=t0,ops_size=-1,ops_refill_time=10'], /--net: bad number "-1" for ops_size/, '--net');
  fails(['--kernel', '/k', '--net', 'tap=t0,bw_size=1x,bw_refill_time=10'], /--net: bad size "1x" for bw_size/, '--net');
  fails(['--kernel', '/k', '--net', 'tap=t0,ops_size=1,ops_refill_time=99999999999'], /--net #1: ops_refill_time must be an integer in 0\.\.4294967295/, '--net');
  fails(['--kernel', '/k', '--net', 'tap=t0,rate_limit_group=g'], /--net: unknown key "rate_limit_group"/, '--net');
  fails(['--kernel', '/k', '--disk', 'path=/a,rate_limit_group=nope'], /--disk #1: rate_limit_group "nope" is not a rate_limit_groups id/, '--disk');
  fails(['--kernel', '/k', '--disk', 'path=/a,rate_limit_group=g,bw_size=1,bw_refill_time=1', '--rate-limit-group', 'id=g,ops_size=1,ops_refill_time=1'],
    /--disk #1: rate_limit_group and rate_limiter_config are mutually exclusive/, '--disk');
  fails(['--kernel', '/k', '--rate-limit-group', 'bw_size=1,bw_refill_time=1'], /--rate-limit-group: id=<id> is required/, '--rate-limit-group');
  fails(['--kernel', '/k', '--rate-limit-group', 'id=g'], /--rate-limit-group g: no limit given/, '--rate-limit-group');
  fails(['--kernel', '/k', '--rate-limit-group', 'id=g,ops_size=1,ops_refill_time=1', 'id=g,ops_size=2,ops_refill_time=1'],
    /--rate-limit-group #2: id "g" is already used by another rate limit group/, '--rate-limit-group');
  fails(['--kernel', '/k', '--rate-limit-group', 'id=g,bw_size=5,bw_refill_time=0'], /--rate-limit-group #1: bw_refill_time must be > 0/, '--rate-limit-group');
  // A group's limiter lives in one I/O thread.
  fails(['--kernel', '/k', '--disk', 'path=/a,rate_limit_group=g', 'path=/b,rate_limit_group=g,iothread=t1', '--rate-limit-group', 'id=g,ops_size=1,ops_refill_time=1'],
    /--disk #2: rate_limit_group "g" is shared with disks\[0\], which is served by the VM's shared I\/O thread; disks of one rate limit group must name the same iothread/);
});

test('--restore source_url=…[,prefault=][,resume=] (Cloud Hypervisor syntax): no VM flags beside it; paused needs --api-socket', () => {
  let r = run('--api-socket', '/tmp/a.sock', '--restore', 'source_url=file:///var/snap,prefault=on');
  assert.deepEqual(r.restore, { source_url: 'file:///var/snap', prefault: true });
  assert.equal(r.config, null);
  r = run('--restore', 'source_url=file:///var/snap,resume=on');
  assert.deepEqual(r.restore, { source_url: 'file:///var/snap', resume: true });
  fails(['--restore', 'prefault=on', '--api-socket', '/tmp/a'], /source_url= is required/, '--restore');
  fails(['--restore', 'source_url=file:///s', '--kernel', '/k', '--api-socket', '/tmp/a'], /cannot be combined with --kernel/, '--restore');
  fails(['--restore', 'source_url=file:///s'], /starts paused; give --api-socket/, '--restore');
  fails(['--restore', 'source_url=file:///s,resume=maybe'], /resume/, '--restore');
  fails(['--restore', 'source_url=file:///s,zone=1', '--api-socket', '/tmp/a'], /unknown key "zone"/, '--restore');
});

test('--balloon (Cloud Hypervisor syntax): size, deflate_on_oom, free_page_reporting, id, pci_segment; bad values named', () => {
  const c = run('--kernel', '/k', '--memory', 'size=1G', '--balloon', 'size=256M,deflate_on_oom=on,free_page_reporting=on').config!;
  assert.deepEqual(c.balloon, { size: 256 * 1024 * 1024, deflate_on_oom: true, free_page_reporting: true });
  const d = run('--kernel', '/k', '--balloon', 'size=0,id=bal,pci_segment=0').config!;
  assert.deepEqual(d.balloon, { size: 0, deflate_on_oom: false, free_page_reporting: false, id: 'bal', pci_segment: 0 });
  assert.equal(run('--kernel', '/k').config!.balloon, undefined);
  fails(['--kernel', '/k', '--balloon', 'deflate_on_oom=on'], /^--balloon: size is required \(size=<bytes>\)$/, '--balloon');
  fails(['--kernel', '/k', '--memory', 'size=512M', '--balloon', 'size=512M'], /^--balloon: size 536870912 bytes is not smaller than guest RAM \(536870912 bytes\)$/, '--balloon');
  fails(['--kernel', '/k', '--balloon', 'size=lots'], /--balloon: bad size "lots" for size/, '--balloon');
  fails(['--kernel', '/k', '--balloon', 'size=1M,free_page_reporting=maybe'], /--balloon: bad value "maybe" for free_page_reporting \(expected on or off\)/, '--balloon');
  fails(['--kernel', '/k', '--balloon', 'size=1M,stats=on'], /--balloon/, '--balloon');
  fails(['--kernel', '/k', '--balloon', 'size=1M,pci_segment=1'], /--balloon: pci_segment 1 names a PCI segment that does not exist/, '--balloon');
});

test('--pmem (Cloud Hypervisor syntax): file, size, discard_writes, id, pci_segment; repeatable; bad values named', () => {
  const c = run('--kernel', '/k', '--platform', 'num_pci_segments=2', '--pmem', 'file=/a.img,size=64M,discard_writes=on,id=p0,pci_segment=1', 'file=/b', '--pmem', 'file=/c,iommu=off').config!;
  assert.deepEqual(c.pmem, [
    { file: '/a.img', size: 64 * MIB, iommu: false, discard_writes: true, id: 'p0', pci_segment: 1 },
    { file: '/b', iommu: false, discard_writes: false },
    { file: '/c', iommu: false, discard_writes: false },
  ]);
  fails(['--kernel', '/k', '--pmem', 'size=2M'], /^--pmem #1: file is required \(file=<path> of the backing file\)$/, '--pmem');
  fails(['--kernel', '/k', '--pmem', 'file=/a,size=3M'], /^--pmem #1: size 3145728 is not a multiple of 2 MiB/, '--pmem');
  fails(['--kernel', '/k', '--pmem', 'file=/a', 'file=/b,size=0'], /^--pmem #2: size must be a positive integer/, '--pmem');
  fails(['--kernel', '/k', '--pmem', 'file=/a,size=lots'], /--pmem: bad size "lots" for size/, '--pmem');
  fails(['--kernel', '/k', '--pmem', 'file=/a,discard_writes=maybe'], /--pmem: bad value "maybe" for discard_writes \(expected on or off\)/, '--pmem');
  fails(['--kernel', '/k', '--pmem', 'file=/a,iommu=on'], /^--pmem #1: iommu is not supported/, '--pmem');
  fails(['--kernel', '/k', '--pmem', 'file=/a,pci_segment=1'], /--pmem #1: pci_segment 1 names a PCI segment that does not exist/, '--pmem');
  fails(['--kernel', '/k', '--pmem', 'file=/a,id=x', '--disk', 'path=/d,id=x'], /"x" is already used by/);
  fails(['--kernel', '/k', '--pmem', 'file=/a,mergeable=on'], /--pmem: unknown key "mergeable"/, '--pmem');
  assert.match(usage, /--pmem <file=<path>\[,size=<size>\]\[,iommu=on\|off\]\[,discard_writes=on\|off\]\[,id=<id>\]\[,pci_segment=<n>\]>/);
});
