import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { test } from 'node:test';
import { nextVmState, type VmAction, type VmState } from './controller.js';
import { request, startTestServer } from './test_server.fixture.js';
import { getValidator, listOperations, loadOpenApiDocument, openApiDocumentPath, pointerToPath, SchemaValidator, toJsonSchema, type OpenApiDocument } from './validate.js';
import { SUPPORTED_VM_CONFIG_FIELDS, vmConfigFromBody } from './vm_config_body.js';

test('the document ships in the source tree and is found from the compiled module', () => {
  const p = openApiDocumentPath();
  assert.ok(existsSync(p));
  assert.match(p, /src\/api\/openapi\/cloud-hypervisor\.yaml$/);
  // This test runs from dist/: the loader must not depend on the working directory.
  assert.match(new URL(import.meta.url).pathname, /\/dist\/src\/api\//);
  const doc = loadOpenApiDocument();
  assert.equal(doc.info.title, 'Cloud Hypervisor API');
  const ops = listOperations(doc);
  assert.ok(ops.length >= 30);
  const create = ops.find((o) => o.path === '/vm.create')!;
  assert.deepEqual([create.method, create.bodySchema, create.bodyRequired], ['PUT', 'VmConfig', true]);
  assert.deepEqual(ops.find((o) => o.path === '/vm.pause')!.responses, [204, 404, 405]);
});

test('OpenAPI 3.0 -> JSON Schema conversion', () => {
  assert.deepEqual(toJsonSchema({ $ref: '#/components/schemas/X' }), { $ref: '#/definitions/X' });
  assert.deepEqual(toJsonSchema({ type: 'string', nullable: true, enum: ['a'] }), { type: ['string', 'null'], enum: ['a', null] });
  assert.deepEqual(toJsonSchema({ type: 'object', properties: { a: { type: 'integer', format: 'uint8', deprecated: true } } }), {
    type: 'object',
    properties: { a: { type: 'integer', format: 'uint8' } },
    additionalProperties: false,
  });
  // Free-form maps keep their additionalProperties.
  assert.deepEqual(toJsonSchema({ type: 'object', additionalProperties: { type: 'integer', format: 'int64' } }), {
    type: 'object',
    additionalProperties: { type: 'integer', format: 'int64' },
  });
  assert.throws(() => toJsonSchema({ $ref: 'other.yaml#/X' }), /unsupported \$ref/);
});

test('nullable and formats are honoured by the compiled validator', () => {
  const doc: OpenApiDocument = {
    openapi: '3.0.1',
    info: { title: 't', version: '1' },
    paths: {},
    components: {
      schemas: {
        A: { type: 'object', required: ['n'], properties: { n: { type: 'integer', format: 'int16', nullable: true }, b: { $ref: '#/components/schemas/B' } } },
        B: { type: 'string', enum: ['x', 'y'] },
      },
    },
  };
  const v = new SchemaValidator(doc);
  assert.deepEqual(v.validate('A', { n: null }), []);
  assert.deepEqual(v.validate('A', { n: -32768, b: 'y' }), []);
  assert.deepEqual(v.validate('A', { n: 32768 }), [{ path: 'n', message: 'must be an integer in int16 range -32768..32767, got 32768' }]);
  assert.deepEqual(v.validate('A', { n: 1, b: 'z', c: 1 }), [
    { path: 'c', message: 'unknown field' },
    { path: 'b', message: 'must be one of "x", "y", got "z"' },
  ]);
  assert.throws(() => v.validate('Nope', {}), /no schema Nope/);
});

test('every component schema of the document compiles', () => {
  const v = getValidator();
  for (const name of Object.keys(v.definitions)) v.validate(name, {});
});

test('pointerToPath', () => {
  assert.equal(pointerToPath(''), '');
  assert.equal(pointerToPath('/disks/0/path'), 'disks[0].path');
  assert.equal(pointerToPath('/a~1b/c~0d', 'e'), 'a/b.c~d.e');
});

test("Stratovisor's supported VmConfig fields all exist in the document's VmConfig", () => {
  const v = getValidator();
  const walk = (shape: unknown, schema: { $ref?: string }, at: string) => {
    if (shape === true) return;
    const s = v.resolve(schema);
    if (Array.isArray(shape)) {
      assert.ok(s.items, `${at} is an array in the document`);
      walk(shape[0], s.items!, `${at}[]`);
      return;
    }
    for (const [k, sub] of Object.entries(shape as Record<string, unknown>)) {
      assert.ok(s.properties?.[k], `${at}.${k} is in the document`);
      walk(sub, s.properties![k]!, `${at}.${k}`);
    }
  };
  walk(SUPPORTED_VM_CONFIG_FIELDS, { $ref: '#/definitions/VmConfig' }, 'VmConfig');
});

test('vmConfigFromBody applies defaults and reports unsupported features by path', () => {
  const v = getValidator();
  const r = vmConfigFromBody({ payload: { kernel: '/k' }, fs: [{ tag: 'x', socket: '/s', pci_device_id: 5 }] }, v);
  assert.deepEqual(r, { ok: false, issues: [{ path: 'fs[0].pci_device_id', message: 'not supported yet in Stratovisor' }] });
  // Disks and NICs take their device number (CH's pci_device_id): 1..31.
  const placed = vmConfigFromBody({ payload: { kernel: '/k' }, net: [{ tap: 't0', pci_device_id: 5 }], disks: [{ path: '/d', pci_device_id: 31 }] }, v);
  assert.ok(placed.ok);
  if (placed.ok) assert.deepEqual([placed.config.net?.[0]?.pci_device_id, placed.config.disks?.[0]?.pci_device_id], [5, 31]);
  assert.deepEqual(vmConfigFromBody({ payload: { kernel: '/k' }, disks: [{ path: '/d', pci_device_id: 0 }] }, v),
    { ok: false, issues: [{ path: 'disks[0].pci_device_id', message: 'must be a device number in 1..31 (0 is the host bridge), got 0' }] });
  const ok = vmConfigFromBody({ payload: { kernel: '/k' }, net: [{ tap: 't0', vhost_mode: 'Client' }] }, v);
  assert.ok(ok.ok);
  if (ok.ok) {
    assert.equal(ok.config.net![0]!.num_queues, 2);
    assert.equal(ok.config.memory.size, 512 * 1024 * 1024);
    assert.equal(ok.config.serial.mode, 'Null');
  }
});

test('deeply nested and huge values are rejected, not crashed on', async () => {
  const t = await startTestServer();
  try {
    const deep = `{"payload":${'['.repeat(100000)}${']'.repeat(100000)}}`;
    let r = await request(t.socketPath, 'PUT', 'vm.create', deep);
    assert.equal(r.status, 400);
    r = await request(t.socketPath, 'PUT', 'vm.create', JSON.stringify({ payload: { kernel: '/k' }, serial: { mode: 'x'.repeat(500000) } }));
    assert.equal(r.status, 400);
    assert.ok(r.text.length < 1000, 'the error message quotes a bounded excerpt');
  } finally {
    await t.close();
  }
});

test('nextVmState: the lifecycle table', () => {
  const states: (VmState | undefined)[] = [undefined, 'Created', 'Running', 'Paused', 'Shutdown'];
  const actions: VmAction[] = ['create', 'boot', 'pause', 'resume', 'shutdown', 'reboot', 'power-button', 'delete', 'info', 'counters'];
  const table: Record<string, (string | number)[]> = {
    //               none  Created  Running    Paused     Shutdown
    create: [        'Created', 409, 409, 409, 409],
    boot: [          404, 'Running', 405, 405, 'Running'],
    pause: [         404, 405, 'Paused', 405, 405],
    resume: [        404, 405, 405, 'Running', 405],
    shutdown: [      404, 405, 'Shutdown', 'Shutdown', 405],
    reboot: [        404, 405, 'Running', 'Running', 405],
    'power-button': [404, 405, 'Running', 'Paused', 405],
    delete: [        'none', 'none', 'none', 'none', 'none'],
    info: [          404, 'Created', 'Running', 'Paused', 'Shutdown'],
    counters: [      404, 405, 'Running', 'Paused', 405],
  };
  for (const a of actions) {
    states.forEach((s, i) => {
      const want = table[a]![i]!;
      let got: string | number;
      try {
        got = nextVmState(s, a) ?? 'none';
      } catch (e) {
        got = (e as { status: number }).status;
      }
      assert.equal(got, want, `${a} from ${String(s)}`);
    });
  }
});

test('the build-time validators (Ajv standalone code) judge bodies as the run-time compiled ones do', async () => {
  const { generateValidatorModule, documentHash } = await import('./validate_codegen.js');
  const { createRequire } = await import('node:module');
  // Evaluated as CommonJS with a require() from here (where ajv's runtime helpers resolve).
  const exportsObj = {};
  new Function('exports', 'require', generateValidatorModule())(exportsObj, createRequire(import.meta.url));
  const pre = exportsObj as import('./validate.js').PrecompiledSchemas;
  assert.equal(pre.source, documentHash());
  const doc = loadOpenApiDocument();
  const live = new SchemaValidator(doc);
  const gen = new SchemaValidator(pre);
  assert.deepEqual(gen.operations, listOperations(doc));
  assert.deepEqual(gen.definitions, live.definitions);
  const bodies: Array<[string, unknown]> = [
    ['VmConfig', {}],
    ['VmConfig', { payload: { kernel: '/k' }, cpus: { boot_vcpus: 'two' } }],
    ['VmConfig', { payload: { kernel: '/k' }, cpus: { boot_vcpus: 300, max_vcpus: 1 }, memory: { size: -1 } }],
    ['VmConfig', { payload: { kernel: '/k' }, disks: [{ path: 1 }, { path: '/d', readonly: 'yes' }], extra: true }],
    ['VmConfig', { payload: { kernel: '/k' }, serial: { mode: 'Nope' }, memory: { size: 2 ** 64 } }],
    ['VmResize', { desired_vcpus: 1.5 }],
    ['DiskConfig', { path: '/d', num_queues: 70000 }],
    ['NetConfig', { mac: 12, mtu: null }],
  ];
  for (const [name, body] of bodies) {
    assert.deepEqual(gen.validate(name, body), live.validate(name, body), `${name} ${JSON.stringify(body)}`);
    assert.deepEqual(gen.normalize(name, body), live.normalize(name, body));
  }
  for (const name of Object.keys(live.definitions)) assert.deepEqual(gen.validate(name, {}), live.validate(name, {}), name);
});

test('a build that generated validators generated them from the shipped document', async (t) => {
  const { loadPrecompiled } = await import('./validate.js');
  const pre = loadPrecompiled();
  if (pre === undefined) {
    t.skip('no dist/src/api/openapi_validators.cjs (a bare tsc build: npm run build generates it)');
    return;
  }
  const { documentHash } = await import('./validate_codegen.js');
  assert.equal(pre.source, documentHash(), 'openapi_validators.cjs is stale: run npm run build');
  assert.ok(getValidator().validate('VmConfig', {}).length > 0);
});

test('rate_limiter_config and rate_limit_groups from a vm.create body: accepted as the document has them; bad numbers named', () => {
  const v = getValidator();
  const body = {
    payload: { kernel: '/k' },
    disks: [
      { path: '/a', rate_limiter_config: { bandwidth: { size: 1048576, refill_time: 100 }, ops: { size: 100, one_time_burst: 10, refill_time: 1000 } } },
      { path: '/b', rate_limit_group: 'g0' },
    ],
    net: [{ tap: 't0', rate_limiter_config: { bandwidth: { size: 1000, refill_time: 10 } } }],
    rate_limit_groups: [{ id: 'g0', rate_limiter_config: { ops: { size: 5, refill_time: 50 } } }],
  };
  assert.deepEqual(v.validate('VmConfig', body), []);
  const ok = vmConfigFromBody(body, v);
  assert.ok(ok.ok, JSON.stringify(ok));
  if (ok.ok) {
    assert.deepEqual(ok.config.disks![0]!.rate_limiter_config, body.disks[0]!.rate_limiter_config);
    assert.equal(ok.config.disks![1]!.rate_limit_group, 'g0');
    assert.deepEqual(ok.config.net![0]!.rate_limiter_config, body.net[0]!.rate_limiter_config);
    assert.deepEqual(ok.config.rate_limit_groups, body.rate_limit_groups);
  }
  // The document's own rules: size and refill_time required, minimum 0.
  const neg = v.validate('VmConfig', { ...body, net: [{ tap: 't0', rate_limiter_config: { bandwidth: { size: -1, refill_time: 10 } } }] });
  assert.ok(neg.some((i) => i.path === 'net[0].rate_limiter_config.bandwidth.size'), JSON.stringify(neg));
  const missing = v.validate('VmConfig', { ...body, net: [{ tap: 't0', rate_limiter_config: { ops: { size: 1 } } }] });
  assert.ok(missing.some((i) => i.path.startsWith('net[0].rate_limiter_config.ops')), JSON.stringify(missing));
  // Ours: a bucket that never refills, an unknown group, a group and a limiter together.
  const bad = vmConfigFromBody({
    ...body,
    disks: [{ path: '/a', rate_limiter_config: { bandwidth: { size: 10, refill_time: 0 } } }, { path: '/b', rate_limit_group: 'nope' }],
  }, v);
  assert.deepEqual(bad.ok ? [] : bad.issues.map((i) => i.path), ['disks[0].rate_limiter_config.bandwidth.refill_time', 'disks[1].rate_limit_group']);
  const both = vmConfigFromBody({ ...body, disks: [{ path: '/a', rate_limit_group: 'g0', rate_limiter_config: { ops: { size: 1, refill_time: 1 } } }] }, v);
  assert.deepEqual(both.ok ? [] : both.issues, [{ path: 'disks[0].rate_limit_group', message: 'and rate_limiter_config are mutually exclusive' }]);
});

test('vm.create pmem: PmemConfig fields and defaults; pci_device_id refused by path; bad size named', () => {
  const v = getValidator();
  const ok = vmConfigFromBody({ payload: { kernel: '/k' }, pmem: [{ file: '/img', size: 64 << 20, discard_writes: true, id: 'p0', pci_segment: 0 }, { file: '/b' }] }, v);
  assert.ok(ok.ok, JSON.stringify(ok));
  if (ok.ok) {
    assert.deepEqual(ok.config.pmem, [
      { file: '/img', size: 64 << 20, iommu: false, discard_writes: true, id: 'p0', pci_segment: 0 },
      { file: '/b', iommu: false, discard_writes: false },
    ]);
  }
  assert.deepEqual(vmConfigFromBody({ payload: { kernel: '/k' }, pmem: [{ file: '/img', pci_device_id: 3 }] }, v), { ok: false, issues: [{ path: 'pmem[0].pci_device_id', message: 'not supported yet in Stratovisor' }] });
  const bad = vmConfigFromBody({ payload: { kernel: '/k' }, pmem: [{ file: '/img', size: 3 << 20 }] }, v);
  assert.deepEqual(bad, { ok: false, issues: [{ path: 'pmem[0].size', message: '3145728 is not a multiple of 2 MiB (virtio-pmem regions are mapped in 2 MiB units)' }] });
});

test('vm.create memory.hotplug_method: VirtioMem and Acpi taken, anything else named', () => {
  const v = getValidator();
  const ok = vmConfigFromBody({ payload: { kernel: '/k' }, memory: { size: 512 << 20, hotplug_size: 512 << 20, hotplug_method: 'VirtioMem' } }, v);
  assert.ok(ok.ok, JSON.stringify(ok));
  if (ok.ok) assert.deepEqual([ok.config.memory.hotplug_method, ok.config.memory.hotplug_size], ['VirtioMem', 512 << 20]);
  const acpi = vmConfigFromBody({ payload: { kernel: '/k' }, memory: { size: 512 << 20, hotplug_size: 512 << 20, hotplug_method: 'Acpi' } }, v);
  assert.ok(acpi.ok, JSON.stringify(acpi));
  const bad = vmConfigFromBody({ payload: { kernel: '/k' }, memory: { size: 512 << 20, hotplug_method: 'VirtioMem' } }, v);
  assert.deepEqual(bad, { ok: false, issues: [{ path: 'memory.hotplug_size', message: 'is required with hotplug_method "VirtioMem" (the size of the virtio-mem region, e.g. hotplug_size=1G)' }] });
  const unknown = vmConfigFromBody({ payload: { kernel: '/k' }, memory: { size: 512 << 20, hotplug_method: 'Dimm' } }, v);
  assert.deepEqual(unknown, { ok: false, issues: [{ path: 'memory.hotplug_method', message: 'must be one of "Acpi", "VirtioMem", got "Dimm"' }] });
});
