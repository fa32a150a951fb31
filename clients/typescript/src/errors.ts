import type { RequestId } from './protocol.js';

/**
 * An error of the client or the gateway. `code` is the gateway's error code (`forbidden`,
 * `invalid_ack`, `rate_limited`, `token_expired`, …, docs/gateway.md) or one of the client's:
 *
 * - `closed`: the client was closed (or never connected) while the request waited;
 * - `disconnected`: the connection dropped before the answer (pings, presence, refreshes;
 *   acks are retried instead);
 * - `timeout`: no answer in `requestTimeoutMs`;
 * - `frame_too_large`: the request is over 16 KiB (not sent; the gateway would close with 1009);
 * - `policy_violation`: the gateway closed the connection with 1008 (too many bad requests);
 * - `token_missing`, `token_unavailable` (getToken failed), `token_expired`;
 * - `handler_error`: a message handler threw (the error is in `cause`);
 * - `protocol`: a frame the client could not read;
 * - `connect_failed`: the WebSocket could not be created (bad URL).
 */
export class PitbossError extends Error {
  readonly code: string;
  /** The id of the request it answers, if any. */
  readonly requestId: RequestId | undefined;
  /** The channel it concerns, if any. */
  readonly channel: string | undefined;
  /** The WebSocket close code, for errors that closed the connection. */
  readonly closeCode: number | undefined;
  override readonly cause: unknown;

  constructor(
    code: string,
    message: string,
    details: { requestId?: RequestId; channel?: string; closeCode?: number; cause?: unknown } = {},
  ) {
    super(message);
    this.name = 'PitbossError';
    this.code = code;
    this.requestId = details.requestId;
    this.channel = details.channel;
    this.closeCode = details.closeCode;
    this.cause = details.cause;
  }
}
