/**
 * Frames of protocol v1 (docs/gateway.md, "Protocol v1"). JSON text frames with a `type`.
 */

export const PROTOCOL_VERSION = 1;

/** Largest request the gateway reads; a larger one closes the connection with 1009. */
export const MAX_REQUEST_BYTES = 16 * 1024;

/** A request id: the client's; answers echo it. */
export type RequestId = number | string;

/** How a subscribe was recovered. */
export type Recovery = 'complete' | 'too_old' | 'none';

/** What an operator says of an alert. */
export type AckOutcome = 'acknowledged' | 'false_positive' | 'confirmed' | 'escalated';

export type Role = 'player' | 'operator';

/** Close codes the gateway uses. */
export const CloseCode = {
  /** Nothing received for the idle timeout. */
  IDLE: 1001,
  /** No close frame: the connection dropped (network, process killed). */
  ABNORMAL: 1006,
  /** Too many invalid or rate-limited requests. */
  POLICY: 1008,
  /** A request larger than 16 KiB. */
  TOO_BIG: 1009,
  /** The gateway is restarting: reconnect with cursors. */
  RESTART: 1012,
  /** The token expired on the live connection. */
  TOKEN_EXPIRED: 4001,
  /** Slow consumer: the client did not read and its queue filled. */
  SLOW_CONSUMER: 4008,
} as const;

export interface WelcomeFrame {
  type: 'welcome';
  protocol: number;
  gateway: string;
  connection: string;
  tenant: string;
  subject: string;
  role: Role;
  /** Token expiry, seconds since the Unix epoch. */
  expires_at: number;
}

export interface MessageFrame {
  type: 'message';
  channel: string;
  cursor: string;
  kind: 'push' | 'alert';
  id: string;
  replayed?: boolean;
  data: unknown;
}

export interface SubscribedFrame {
  type: 'subscribed';
  id?: RequestId;
  channel: string;
  cursor: string;
  recovery: Recovery;
  replayed: number;
}

export interface CursorFrame {
  type: 'cursor';
  channel: string;
  cursor: string;
}

export interface UnsubscribedFrame {
  type: 'unsubscribed';
  id?: RequestId;
  channel: string;
  reason?: string;
}

export interface AckedFrame {
  type: 'acked';
  id?: RequestId;
  alert_id: string;
  ack_id: string;
}

/** An alert of an operator channel was acknowledged, by any operator of the tenant. */
export interface AlertAckedFrame {
  type: 'alert_acked';
  channel: string;
  alert_id: string;
  ack_id: string;
  /** `acknowledged`, `false_positive`, `confirmed` or `escalated`. */
  outcome: string;
  operator_id: string;
  /** RFC 3339. */
  acked_at: string;
}

export interface RefreshedFrame {
  type: 'refreshed';
  id?: RequestId;
  expires_at: number;
}

export interface PresenceFrame {
  type: 'presence';
  id?: RequestId;
  channel: string;
  /** Connections in the room, on every gateway instance. */
  connections: number;
  /** Distinct subjects among them (at most 1000). */
  subjects: string[];
  /** Gateway instances with at least one of them. */
  gateways: number;
}

export interface PongFrame {
  type: 'pong';
  id?: RequestId;
}

export interface ErrorFrame {
  type: 'error';
  id?: RequestId;
  code: string;
  message: string;
}

export interface ReconnectFrame {
  type: 'reconnect';
  reason: string;
}

export type ServerFrame =
  | WelcomeFrame
  | MessageFrame
  | SubscribedFrame
  | CursorFrame
  | UnsubscribedFrame
  | AckedFrame
  | AlertAckedFrame
  | RefreshedFrame
  | PresenceFrame
  | PongFrame
  | ErrorFrame
  | ReconnectFrame;

export type ClientFrame =
  | { type: 'subscribe'; id?: RequestId; channel: string; since?: string }
  | { type: 'unsubscribe'; id?: RequestId; channel: string }
  | {
      type: 'ack';
      id?: RequestId;
      alert_id: string;
      outcome?: AckOutcome;
      note?: string;
      ack_id?: string;
    }
  | { type: 'refresh'; id?: RequestId; token: string }
  | { type: 'presence'; id?: RequestId; channel: string }
  | { type: 'ping'; id?: RequestId };

/** A push's canonical JSON (docs/schema/push.schema.json). */
export interface PushData {
  push_id: string;
  tenant_id: string;
  target: { player: string } | { room: string };
  kind: string;
  title: string;
  body: string;
  data?: Record<string, unknown>;
  source: unknown;
  event_time: string;
  received_at: string;
  created_at: string;
  expires_at?: string;
  [key: string]: unknown;
}

/** An alert's canonical JSON (docs/schema/alert.schema.json); the fields a console needs most. */
export interface AlertData {
  alert_id: string;
  tenant_id: string;
  player_id?: string | null;
  rule_id: string;
  rule_version: number;
  category: string;
  severity: string;
  score: number;
  total_score: number;
  recommendation: string;
  reason: string;
  detected_at: string;
  [key: string]: unknown;
}

/** Channel names (docs/gateway.md, "Channels and rights"). */
export const channels = {
  player: (tenant: string, player: string): string => `player:${tenant}:${player}`,
  room: (tenant: string, room: string): string => `room:${tenant}:${room}`,
  operator: (tenant: string): string => `operator:${tenant}`,
};
