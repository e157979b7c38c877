export * from './guest_memory.js';
