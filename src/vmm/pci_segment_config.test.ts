// --platform num_pci_segments=N and pci_segment=K: the configuration rules (config.ts), the CLI
// (one line naming the problem, non-zero exit) and the API (400 naming the field).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createVmConfig, numPciSegments, pciSegmentIssue, validateVmConfig, type VmConfigInput } from './config.js';
import { parseArgs, CliError } from '../cli/args.js';
import { MINIMAL_VM, request, startTestServer } from '../api/test_server.fixture.js';

const issues = (input: VmConfigInput) => validateVmConfig(createVmConfig({ payload: { kernel: '/k' }, ...input }));

test('num_pci_segments: default 1, 1..16 accepted, 0 and 17 rejected naming the field', () => {
  const def = createVmConfig({ payload: { kernel: '/k' } });
  assert.equal(def.platform, undefined, 'nothing changes for a VM that does not ask');
  assert.equal(numPciSegments(def), 1);
  assert.equal(createVmConfig({ payload: { kernel: '/k' }, platform: {} }).platform?.num_pci_segments, 1);
  for (const n of [1, 2, 16]) assert.deepEqual(issues({ platform: { num_pci_segments: n } }), []);
  for (const n of [0, 17, -1, 2.5]) {
    const got = issues({ platform: { num_pci_segments: n } });
    assert.equal(got.length, 1, JSON.stringify(got));
    assert.equal(got[0]!.path, 'platform.num_pci_segments');
    assert.match(got[0]!.message, /must be an integer in 1\.\.16/);
  }
  assert.throws(() => createVmConfig({ payload: { kernel: '/k' }, platform: 3 } as unknown as VmConfigInput), /platform: must be an object/);
});

test('pci_segment must name an existing segment: disks, net and rng, with the field in the message', () => {
  assert.deepEqual(issues({ platform: { num_pci_segments: 2 }, disks: [{ path: '/a' }, { path: '/b', pci_segment: 1 }], net: [{ pci_segment: 1 }], rng: { pci_segment: 0 } }), []);
  const got = issues({ platform: { num_pci_segments: 2 }, disks: [{ path: '/a' }, { path: '/b', pci_segment: 5 }], net: [{ pci_segment: 2 }], rng: { pci_segment: 3 } });
  assert.deepEqual(got.map((i) => i.path), ['disks[1].pci_segment', 'net[0].pci_segment', 'rng.pci_segment']);
  assert.match(got[0]!.message, /^5 names a PCI segment that does not exist: platform\.num_pci_segments is 2 \(segments 0\.\.1\)$/);
  // Without --platform there is one segment: pci_segment=1 is an error, pci_segment=0 is fine.
  assert.deepEqual(issues({ disks: [{ path: '/a', pci_segment: 1 }] }).map((i) => i.path), ['disks[0].pci_segment']);
  assert.deepEqual(issues({ disks: [{ path: '/a', pci_segment: 0 }] }), []);
  // The helper for the other device configs (fs, vsock, pmem, ...).
  assert.equal(pciSegmentIssue({ platform: { num_pci_segments: 4 } }, 'fs[0].pci_segment', 3), undefined);
  assert.deepEqual(pciSegmentIssue({}, 'vsock.pci_segment', 1)?.path, 'vsock.pci_segment');
  assert.match(pciSegmentIssue({}, 'pmem[0].pci_segment', 'x')?.message ?? '', /must be an integer >= 0, got x/);
});

test('CLI: --platform num_pci_segments=N and pci_segment= on --disk/--net/--rng (Cloud Hypervisor syntax)', () => {
  const r = parseArgs(['--kernel', '/k', '--platform', 'num_pci_segments=2', '--disk', 'path=/a', 'path=/b,pci_segment=1', '--net', 'tap=t0,pci_segment=1', '--rng', 'src=/dev/urandom,pci_segment=1']);
  assert.equal(r.kind, 'run');
  if (r.kind !== 'run') return;
  assert.deepEqual(r.config?.platform, { num_pci_segments: 2 });
  assert.deepEqual(r.config?.disks?.map((d) => d.pci_segment), [undefined, 1]);
  assert.equal(r.config?.net?.[0]?.pci_segment, 1);
  assert.equal(r.config?.rng.pci_segment, 1);
  const err = (args: string[], re: RegExp) => assert.throws(() => parseArgs(['--kernel', '/k', ...args]), (e: unknown) => e instanceof CliError && re.test(e.message) && !e.message.includes('\n'));
  err(['--platform', 'num_pci_segments=0'], /^--platform: num_pci_segments must be an integer in 1\.\.16, got 0$/);
  err(['--platform', 'num_pci_segments=17'], /^--platform: num_pci_segments must be an integer in 1\.\.16, got 17$/);
  err(['--platform', 'num_pci_segments=two'], /--platform: bad number "two" for num_pci_segments/);
  err(['--platform', 'iommu_segments=[1]'], /--platform: unknown key "iommu_segments"/);
  err(['--platform', 'num_pci_segments=2', '--disk', 'path=/a', 'path=/b,pci_segment=5'], /^--disk #2: pci_segment 5 names a PCI segment that does not exist: platform\.num_pci_segments is 2/);
  err(['--net', 'tap=t0,pci_segment=1'], /^--net #1: pci_segment 1 names a PCI segment that does not exist/);
});

test('the stratovisor binary: bad --platform / pci_segment exit non-zero with one line', () => {
  const main = fileURLToPath(new URL('../cli/main.js', import.meta.url));
  for (const [args, re] of [
    [['--platform', 'num_pci_segments=0'], /num_pci_segments must be an integer in 1\.\.16, got 0/],
    [['--platform', 'num_pci_segments=17'], /num_pci_segments must be an integer in 1\.\.16, got 17/],
    [['--platform', 'num_pci_segments=2', '--disk', 'path=/a.img', 'path=/b.img,pci_segment=5'], /--disk #2: pci_segment 5 names a PCI segment that does not exist/],
  ] as Array<[string[], RegExp]>) {
    const r = spawnSync(process.execPath, [main, '--kernel', '/nonexistent/vmlinux', ...args], { encoding: 'utf8', timeout: 30_000 });
    assert.notEqual(r.status, 0, args.join(' '));
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /^stratovisor: error: /);
    assert.match(lines[0]!, re);
  }
});

test('API vm.create: platform.num_pci_segments and pci_segment are accepted, bad values answer 400 naming the field', async () => {
  const t = await startTestServer();
  try {
    const create = (body: object) => request(t.socketPath, 'PUT', 'vm.create', JSON.stringify({ ...MINIMAL_VM, ...body }));
    let r = await create({ platform: { num_pci_segments: 2, tdx: false }, disks: [{ path: '/a' }, { path: '/b', pci_segment: 1 }] });
    assert.equal(r.status, 204, r.text);
    r = await request(t.socketPath, 'GET', 'vm.info');
    const cfg = (r.json as { config: { platform?: { num_pci_segments: number }; disks: Array<{ pci_segment?: number }> } }).config;
    assert.deepEqual(cfg.platform, { num_pci_segments: 2 });
    assert.equal(cfg.disks[1]!.pci_segment, 1);
    assert.equal((await request(t.socketPath, 'PUT', 'vm.delete')).status, 204);
    for (const [body, re] of [
      [{ platform: { num_pci_segments: 0 } }, /platform\.num_pci_segments: must be an integer in 1\.\.16, got 0/],
      [{ platform: { num_pci_segments: 17 } }, /platform\.num_pci_segments: must be an integer in 1\.\.16, got 17/],
      [{ platform: { num_pci_segments: 2 }, disks: [{ path: '/a', pci_segment: 5 }] }, /disks\[0\]\.pci_segment: 5 names a PCI segment that does not exist/],
      [{ net: [{ pci_segment: 1 }] }, /net\[0\]\.pci_segment: 1 names a PCI segment that does not exist/],
      [{ platform: { num_pci_segments: 2, iommu_segments: [1] } }, /platform\.iommu_segments: not supported yet/],
    ] as Array<[object, RegExp]>) {
      r = await create(body);
      assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
      assert.match((r.json as string[]).join(' | '), re);
    }
  } finally {
    await t.close();
  }
});
