// Request-body validation against Cloud Hypervisor's OpenAPI 3.0 document
// (src/api/openapi/cloud-hypervisor.yaml), compiled with Ajv from the document itself.
//
// OpenAPI 3.0 schema objects are a dialect of JSON Schema (OpenAPI 3.0.3 section 4.7.24);
// they are converted to draft-07 before compiling:
//   - `$ref: '#/components/schemas/X'` -> `#/definitions/X` of one root schema;
//   - `nullable: true` -> the type (and enum) also admit null;
//   - integer formats (int8..int64, uint8..uint64) -> custom formats checking the range,
//     as serde does when deserializing into a Rust integer of that width;
//   - every object schema with `properties` and no `additionalProperties` gets
//     `additionalProperties: false`, so a value that still has unknown fields fails;
//   - OpenAPI-only keywords (deprecated, example, xml, readOnly, ...) are dropped.
//
// Bodies are first normalized the way Cloud Hypervisor's serde deserialization reads them
// (`SchemaValidator.normalize`): its config structs do not deny unknown fields, so unknown
// fields are dropped (and reported to the caller, who logs them); an optional field
// (`Option<T>` in CH: not in the schema's `required`) given as `null` is absent. A
// required field given as null, and every wrong type or value, still fails validation.
//
// Start-up: `npm run build` generates the validators from the document with Ajv's standalone
// code (validate_codegen.ts -> dist/src/api/openapi_validators.cjs, with the converted schemas
// and the operation list), so a VMM serving the API neither parses the YAML nor compiles
// schemas, and loads neither yaml nor ajv (only the few ajv runtime helpers the generated code
// requires). Without that file (a bare `tsc` build) getValidator() compiles from the document.
// Ajv and yaml are loaded with require() when needed, never at import time.

import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { Ajv, ErrorObject, ValidateFunction } from 'ajv';

const requireHere = createRequire(import.meta.url);

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A (converted or original) schema object. */
export interface SchemaObject {
  [key: string]: unknown;
  type?: string | string[];
  properties?: Record<string, SchemaObject>;
  required?: string[];
  items?: SchemaObject;
  additionalProperties?: boolean | SchemaObject;
  $ref?: string;
  enum?: unknown[];
  format?: string;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  default?: unknown;
  nullable?: boolean;
}

/** The parts of an OpenAPI 3.0 document Stratovisor reads. */
export interface OpenApiDocument {
  openapi: string;
  info: { title: string; version: string };
  paths: Record<string, Record<string, OpenApiOperationObject>>;
  components: { schemas: Record<string, SchemaObject> };
}

interface OpenApiOperationObject {
  summary?: string;
  operationId?: string;
  requestBody?: {
    required?: boolean;
    content?: Record<string, { schema?: SchemaObject }>;
  };
  responses?: Record<string, unknown>;
}

/** One operation (path + method) of the document. */
export interface ApiOperation {
  /** e.g. "/vm.create" (relative to the server URL /api/v1). */
  path: string;
  method: 'GET' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';
  /** Component schema name of the JSON request body, if the operation takes one. */
  bodySchema?: string;
  bodyRequired: boolean;
  /** Documented response status codes, ascending. */
  responses: number[];
  summary?: string;
}

/** One validation problem; `path` is like "cpus.boot_vcpus" or "disks[1].path" ("" = the body). */
export interface ValidationIssue {
  path: string;
  message: string;
}

const DOC_RELATIVE = 'src/api/openapi/cloud-hypervisor.yaml';

/**
 * Where the document is, resolved from this module's location: from the compiled
 * dist/src/api/validate.js the source tree is three levels up; a copy next to the
 * module (./openapi/) is used first if present (e.g. a bundler copied it).
 */
export function openApiDocumentPath(): string {
  const candidates = [
    new URL('./openapi/cloud-hypervisor.yaml', import.meta.url),
    new URL(`../../../${DOC_RELATIVE}`, import.meta.url),
  ];
  for (const url of candidates) {
    const p = fileURLToPath(url);
    if (existsSync(p)) return p;
  }
  throw new Error(`Cloud Hypervisor OpenAPI document not found (looked for ${candidates.map((u) => fileURLToPath(u)).join(', ')})`);
}

let cachedDoc: OpenApiDocument | undefined;

/** Parse the shipped OpenAPI document (cached). */
export function loadOpenApiDocument(): OpenApiDocument {
  if (cachedDoc === undefined) {
    const text = readFileSync(openApiDocumentPath(), 'utf8');
    const { parse } = requireHere('yaml') as typeof import('yaml');
    const doc = parse(text) as OpenApiDocument;
    if (typeof doc !== 'object' || doc === null || typeof doc.paths !== 'object' || typeof doc.components?.schemas !== 'object') {
      throw new Error('the OpenAPI document has no paths or components.schemas');
    }
    cachedDoc = doc;
  }
  return cachedDoc;
}

const SCHEMA_REF_PREFIX = '#/components/schemas/';

/** Component schema name of a `$ref`, or undefined. */
export function refName(ref: string): string | undefined {
  return ref.startsWith(SCHEMA_REF_PREFIX) ? ref.slice(SCHEMA_REF_PREFIX.length) : undefined;
}

/** Every operation of the document, in document order. */
export function listOperations(doc: OpenApiDocument = loadOpenApiDocument()): ApiOperation[] {
  const out: ApiOperation[] = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const m = method.toUpperCase();
      if (m !== 'GET' && m !== 'PUT' && m !== 'POST' && m !== 'PATCH' && m !== 'DELETE') continue;
      const schema = op.requestBody?.content?.['application/json']?.schema;
      const bodySchema = schema?.$ref !== undefined ? refName(schema.$ref) : undefined;
      const responses = Object.keys(op.responses ?? {})
        .map(Number)
        .filter((n) => Number.isInteger(n))
        .sort((a, b) => a - b);
      const entry: ApiOperation = { path, method: m, bodyRequired: op.requestBody?.required === true, responses };
      if (bodySchema !== undefined) entry.bodySchema = bodySchema;
      if (op.summary !== undefined) entry.summary = op.summary;
      out.push(entry);
    }
  }
  return out;
}

/** Integer formats of the document, as [min, max] (int64/uint64 limited by what a JS number holds). */
export const INTEGER_FORMATS: Readonly<Record<string, readonly [number, number]>> = {
  int8: [-128, 127],
  int16: [-32768, 32767],
  int32: [-2147483648, 2147483647],
  int64: [-(2 ** 63), 2 ** 63 - 1],
  uint8: [0, 255],
  uint16: [0, 65535],
  uint32: [0, 4294967295],
  uint64: [0, 2 ** 64 - 1],
};

const OPENAPI_ONLY_KEYWORDS = new Set(['nullable', 'deprecated', 'example', 'xml', 'externalDocs', 'readOnly', 'writeOnly', 'discriminator']);

/** Convert one OpenAPI 3.0 schema object to draft-07 JSON Schema (see the file comment). */
export function toJsonSchema(schema: SchemaObject): SchemaObject {
  if (typeof schema !== 'object' || schema === null) return schema;
  if (typeof schema.$ref === 'string') {
    const name = refName(schema.$ref);
    if (name === undefined) throw new Error(`unsupported $ref ${schema.$ref}`);
    return { $ref: `#/definitions/${name}` };
  }
  const out: SchemaObject = {};
  for (const [k, v] of Object.entries(schema)) {
    if (OPENAPI_ONLY_KEYWORDS.has(k)) continue;
    if (k === 'properties' && typeof v === 'object' && v !== null) {
      const props: Record<string, SchemaObject> = {};
      for (const [name, sub] of Object.entries(v as Record<string, SchemaObject>)) props[name] = toJsonSchema(sub);
      out.properties = props;
    } else if (k === 'items' || (k === 'additionalProperties' && typeof v === 'object' && v !== null)) {
      out[k] = toJsonSchema(v as SchemaObject);
    } else if (k === 'format') {
      // Only the integer formats are checked; others (none in the document today) are annotations.
      if (typeof v === 'string' && v in INTEGER_FORMATS) out.format = v;
    } else {
      out[k] = v;
    }
  }
  if (schema.nullable === true) {
    if (typeof out.type === 'string') out.type = [out.type, 'null'];
    if (Array.isArray(out.enum) && !out.enum.includes(null)) out.enum = [...out.enum, null];
  }
  if (out.properties !== undefined && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

export const ROOT_ID = 'cloud-hypervisor';

/** Ajv options shared by the run-time compiler and the build-time code generator. */
export const AJV_OPTIONS = { allErrors: true, strict: false, validateFormats: true } as const;

/** Converted component schemas by name, from a document. */
export function convertSchemas(doc: OpenApiDocument): Record<string, SchemaObject> {
  const definitions: Record<string, SchemaObject> = {};
  for (const [name, s] of Object.entries(doc.components.schemas)) definitions[name] = toJsonSchema(s);
  return definitions;
}

/** An Ajv instance with the integer formats and the converted schemas under ROOT_ID. */
export function makeAjv(definitions: Record<string, SchemaObject>, extra: Record<string, unknown> = {}): Ajv {
  const { Ajv: AjvClass } = requireHere('ajv') as typeof import('ajv');
  const ajv = new AjvClass({ ...AJV_OPTIONS, ...extra });
  for (const [name, [min, max]] of Object.entries(INTEGER_FORMATS)) {
    ajv.addFormat(name, { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= min && n <= max });
  }
  ajv.addSchema({ $id: ROOT_ID, definitions });
  return ajv;
}

/** What the build generates from the document (openapi_validators.cjs). */
export interface PrecompiledSchemas {
  /** Hash of the document text it was generated from. */
  source: string;
  operations: ApiOperation[];
  definitions: Record<string, SchemaObject>;
  /** One standalone validator per component schema, by name. */
  validators: Record<string, ValidateFunction>;
}

/** File name of the generated validators, next to the compiled validate.js. */
export const PRECOMPILED_FILE = 'openapi_validators.cjs';

/** The generated validators, or undefined when the build made none (a bare tsc build). */
export function loadPrecompiled(): PrecompiledSchemas | undefined {
  const p = fileURLToPath(new URL(`./${PRECOMPILED_FILE}`, import.meta.url));
  if (!existsSync(p)) return undefined;
  return requireHere(p) as PrecompiledSchemas;
}

/** Validates request bodies against the document's component schemas. */
export class SchemaValidator {
  /** The document's operations (routes of the API server). */
  readonly operations: ApiOperation[];
  /** Converted component schemas, by name. */
  readonly definitions: Record<string, SchemaObject>;
  private readonly ajv: Ajv | null;
  private readonly compiled = new Map<string, ValidateFunction>();

  /** From a document (compiled with Ajv now) or from the build's generated validators. */
  constructor(source: OpenApiDocument | PrecompiledSchemas = loadOpenApiDocument()) {
    if ('validators' in source) {
      this.operations = source.operations;
      this.definitions = source.definitions;
      this.ajv = null;
      for (const [name, fn] of Object.entries(source.validators)) this.compiled.set(name, fn);
    } else {
      this.operations = listOperations(source);
      this.definitions = convertSchemas(source);
      this.ajv = makeAjv(this.definitions);
    }
  }

  /** Whether the document defines a component schema of that name. */
  has(name: string): boolean {
    return Object.prototype.hasOwnProperty.call(this.definitions, name);
  }

  /** Resolve a converted schema's `$ref` (one level at a time) to its definition. */
  resolve(schema: SchemaObject): SchemaObject {
    let s = schema;
    for (let i = 0; i < 16 && typeof s.$ref === 'string'; i++) {
      const name = s.$ref.slice('#/definitions/'.length);
      const d = this.definitions[name];
      if (d === undefined) throw new Error(`unknown schema ${name}`);
      s = d;
    }
    return s;
  }

  /**
   * `value` as Cloud Hypervisor's deserializer reads it against component schema `name`:
   * a copy without unknown fields and without optional fields set to null (see the file
   * comment). `ignored` lists the dropped unknown fields by path ("serial.iommu").
   * Values of the wrong shape are left as they are, for `validate` to report.
   */
  normalize(name: string, value: unknown): { value: unknown; ignored: string[] } {
    if (!this.has(name)) throw new Error(`the OpenAPI document has no schema ${name}`);
    const ignored: string[] = [];
    const out = this.normalizeAt({ $ref: `#/definitions/${name}` }, value, '', ignored, 0);
    return { value: out, ignored };
  }

  private normalizeAt(schema: SchemaObject, value: unknown, path: string, ignored: string[], depth: number): unknown {
    // Deeper than any document schema nests: leave it to the validator (and its limits).
    if (depth > 64) return value;
    const s = this.resolve(schema);
    if (Array.isArray(value)) {
      if (s.items === undefined) return value;
      const items = s.items;
      return value.map((el, i) => this.normalizeAt(items, el, `${path}[${i}]`, ignored, depth + 1));
    }
    if (typeof value !== 'object' || value === null) return value;
    const props = s.properties;
    const extra = s.additionalProperties;
    if (props === undefined && (typeof extra !== 'object' || extra === null)) return value;
    const required = new Set(s.required ?? []);
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      const at = path === '' ? k : `${path}.${k}`;
      const sub = props !== undefined && Object.prototype.hasOwnProperty.call(props, k) ? props[k] : typeof extra === 'object' && extra !== null ? extra : undefined;
      if (sub === undefined) {
        // serde without deny_unknown_fields: an unknown field is skipped.
        if (extra !== true) {
          ignored.push(at);
          continue;
        }
        out[k] = v;
        continue;
      }
      // Option<T>: null deserializes to None, i.e. as if the field were absent.
      if (v === null && !required.has(k) && !admitsNull(this.resolve(sub))) continue;
      out[k] = this.normalizeAt(sub, v, at, ignored, depth + 1);
    }
    return out;
  }

  /** Problems of `value` against component schema `name` (empty when valid). */
  validate(name: string, value: unknown): ValidationIssue[] {
    let fn = this.compiled.get(name);
    if (fn === undefined) {
      if (!this.has(name)) throw new Error(`the OpenAPI document has no schema ${name}`);
      const got = this.ajv?.getSchema(`${ROOT_ID}#/definitions/${name}`);
      if (got === undefined) throw new Error(`cannot compile schema ${name}`);
      fn = got;
      this.compiled.set(name, fn);
    }
    if (fn(value)) return [];
    return describeErrors(fn.errors ?? [], value);
  }
}

/** Whether a converted schema accepts null itself (OpenAPI `nullable: true`). */
function admitsNull(s: SchemaObject): boolean {
  return Array.isArray(s.type) ? s.type.includes('null') : s.type === 'null';
}

let cachedValidator: SchemaValidator | undefined;

/** The validator for the shipped document (the build's generated one, else compiled now; cached). */
export function getValidator(): SchemaValidator {
  cachedValidator ??= new SchemaValidator(loadPrecompiled() ?? loadOpenApiDocument());
  return cachedValidator;
}

/** "/disks/0/path" -> "disks[0].path" (JSON Pointer, RFC 6901). */
export function pointerToPath(pointer: string, extra?: string): string {
  const parts = pointer === '' ? [] : pointer.slice(1).split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (extra !== undefined) parts.push(extra);
  let out = '';
  for (const p of parts) {
    if (/^\d+$/.test(p)) out += `[${p}]`;
    else out += out === '' ? p : `.${p}`;
  }
  return out;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

/** A value for an error message, cut to a readable length. */
function shown(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function valueAt(root: unknown, pointer: string): unknown {
  if (pointer === '') return root;
  let v: unknown = root;
  for (const raw of pointer.slice(1).split('/')) {
    const k = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (typeof v !== 'object' || v === null) return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}

/** Turn Ajv errors into messages that name the field and the problem (at most 10). */
export function describeErrors(errors: readonly ErrorObject[], root: unknown): ValidationIssue[] {
  const out: ValidationIssue[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    let issue: ValidationIssue;
    const p = e.params as Record<string, unknown>;
    switch (e.keyword) {
      case 'required':
        issue = { path: pointerToPath(e.instancePath, String(p.missingProperty)), message: 'missing required field' };
        break;
      case 'additionalProperties':
        issue = { path: pointerToPath(e.instancePath, String(p.additionalProperty)), message: 'unknown field' };
        break;
      case 'type':
        issue = {
          path: pointerToPath(e.instancePath),
          message: `must be ${Array.isArray(p.type) ? p.type.join(' or ') : String(p.type)}, got ${typeName(valueAt(root, e.instancePath))}`,
        };
        break;
      case 'enum':
        issue = {
          path: pointerToPath(e.instancePath),
          message: `must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}, got ${shown(valueAt(root, e.instancePath))}`,
        };
        break;
      case 'format': {
        const range = INTEGER_FORMATS[String(p.format)];
        issue = {
          path: pointerToPath(e.instancePath),
          message: range
            ? `must be an integer in ${String(p.format)} range ${range[0]}..${range[1]}, got ${shown(valueAt(root, e.instancePath))}`
            : `must match format ${String(p.format)}`,
        };
        break;
      }
      case 'minimum':
      case 'maximum':
        issue = {
          path: pointerToPath(e.instancePath),
          message: `must be ${e.keyword === 'minimum' ? '>=' : '<='} ${String(p.limit)}, got ${shown(valueAt(root, e.instancePath))}`,
        };
        break;
      default:
        issue = { path: pointerToPath(e.instancePath), message: e.message ?? `fails ${e.keyword}` };
    }
    const key = `${issue.path}\0${issue.message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(issue);
    if (out.length >= 10) break;
  }
  return out;
}

/** "cpus.boot_vcpus: must be integer, got string; payload: missing required field". */
export function formatIssues(issues: readonly ValidationIssue[]): string {
  return issues.map((i) => (i.path === '' ? i.message : `${i.path}: ${i.message}`)).join('; ');
}
