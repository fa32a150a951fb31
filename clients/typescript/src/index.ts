/**
 * @pitboss/client — the client of the Pitboss edge gateway (docs/gateway.md, protocol v1) for
 * game clients and operator consoles: pushes and alerts over one WebSocket, resumed from cursors
 * after any drop, each delivered once; acks; token refresh; presence. No runtime dependencies.
 */
export {
  PitbossClient,
  refreshDelay,
  type AckResult,
  type AlertAckedEvent,
  type ClientEvents,
  type ClientState,
  type CloseInfo,
  type MessageHandler,
  type PitbossClientOptions,
  type PitbossMessage,
  type PresenceResult,
  type RecoveryEvent,
  type SubscribeOptions,
  type WebSocketConstructor,
  type WebSocketLike,
  type WelcomeInfo,
} from './client.js';
export { PitbossError } from './errors.js';
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
export { RecentIds } from './dedup.js';
export { comparePositions, formatCursor, mergeCursors, parseCursor } from './cursor.js';
export { Emitter } from './emitter.js';
export {
  channels,
  CloseCode,
  MAX_REQUEST_BYTES,
  PROTOCOL_VERSION,
  type AckOutcome,
  type AlertData,
  type ClientFrame,
  type PushData,
  type Recovery,
  type RequestId,
  type Role,
  type ServerFrame,
} from './protocol.js';
