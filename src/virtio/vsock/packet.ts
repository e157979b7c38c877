// virtio-vsock wire format (virtio 1.2, 5.10): the packet header, its operations and flags.

/** Queues (5.10.2). */
export const VSOCK_RX = 0;
export const VSOCK_TX = 1;
export const VSOCK_EVENT = 2;

/** Well-known CIDs (5.10.4): the host is 2; 0, 1 and 0xffffffff are reserved. */
export const VMADDR_CID_HOST = 2;
export const MIN_GUEST_CID = 3;

/** Configuration layout (5.10.4, struct virtio_vsock_config): le64 guest_cid. */
export const VSOCK_CONFIG_SIZE = 8;

/** struct virtio_vsock_hdr (5.10.6), little-endian, byte offsets. */
export const Hdr = {
  srcCid: 0, // le64
  dstCid: 8, // le64
  srcPort: 16, // le32
  dstPort: 20, // le32
  len: 24, // le32
  type: 28, // le16
  op: 30, // le16
  flags: 32, // le32
  bufAlloc: 36, // le32
  fwdCnt: 40, // le32
  size: 44,
} as const;

/** struct virtio_vsock_event id (5.10.6.6): the device's connections are gone (after migration). */
export const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0;

/** type (5.10.6). */
export const VIRTIO_VSOCK_TYPE_STREAM = 1;

/** op (5.10.6). */
export const Op = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;

/** SHUTDOWN flags (5.10.6.5): the sender will receive / send no more. */
export const VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE = 1;
export const VIRTIO_VSOCK_SHUTDOWN_F_SEND = 2;

/** Largest payload of one packet (Linux VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); larger ones are refused. */
export const MAX_PKT_PAYLOAD = 64 * 1024;
