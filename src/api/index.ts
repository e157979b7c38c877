// Public surface of Stratovisor's HTTP API layer (Cloud Hypervisor-compatible).

export * from './controller.js';
export { EventMonitor, parseEventMonitorArg, withLifecycleEvents } from './events.js';
export type { EventMonitorEvents, EventMonitorTarget, LifecycleEvent, VmEventName, VmmEventName } from './events.js';
export { API_ROOT, ApiServer, parseApiSocketArg } from './server.js';
export type { ApiServerEvents, ApiServerOptions, ApiSocketTarget } from './server.js';
export { formatIssues, getValidator, listOperations, loadOpenApiDocument, openApiDocumentPath, SchemaValidator, toJsonSchema } from './validate.js';
export type { ApiOperation, OpenApiDocument, SchemaObject, ValidationIssue } from './validate.js';
export { SUPPORTED_VM_CONFIG_FIELDS, vmConfigFromBody } from './vm_config_body.js';
