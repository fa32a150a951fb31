import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
import { mergeCursors } from './cursor.js';
import { RecentIds } from './dedup.js';
import { Emitter } from './emitter.js';
import { PitbossError } from './errors.js';
import {
  CloseCode,
  MAX_REQUEST_BYTES,
  PROTOCOL_VERSION,
  type AckOutcome,
  type ClientFrame,
  type ErrorFrame,
  type MessageFrame,
  type Recovery,
  type RequestId,
  type Role,
  type ServerFrame,
  type SubscribedFrame,
  type WelcomeFrame,
} from './protocol.js';
import { jwtExpiry, jwtTimes, randomUUID, tokenProtocols, utf8Length } from './util.js';

/**
 * What the client needs of a WebSocket: the browser's `WebSocket`, or the `ws` package's
 * (Node 20 has no global one). Event arguments are typed loosely so both fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  /* eslint-disable @typescript-eslint/no-explicit-any */
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  /* eslint-enable @typescript-eslint/no-explicit-any */
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drops the socket without the closing handshake. */
  terminate?: () => void;
}

/** A WebSocket class: the browser's, or the `ws` package's in Node. */
export type WebSocketConstructor = new (url: string, protocols?: string[]) => WebSocketLike;

/** A message as the application gets it. */
export interface PitbossMessage<T = unknown> {
  channel: string;
  /** `push` on player and room channels, `alert` on operator channels. */
  kind: 'push' | 'alert';
  /** The message id (`push_id` / `alert_id`): unique per message, the dedup key. */
  id: string;
  /** The push or alert in its canonical JSON (docs/alerts.md). */
  data: T;
  /** True when sent as part of a (re)subscribe: missed while away, or an unacknowledged alert. */
  replayed: boolean;
  /** The channel's cursor after this message. */
  cursor: string;
}

export type MessageHandler<T = unknown> = (message: PitbossMessage<T>) => void;

export interface SubscribeOptions {
  /**
   * Resume from this cursor (one kept from an earlier session, e.g. in localStorage) instead of
   * starting live. The client keeps the channel's newest cursor from then on: see `cursor()`.
   */
  since?: string;
  /** Called if the gateway refuses the subscription (the `error` event gets it too). */
  onError?: (error: PitbossError) => void;
}

/** The `welcome` frame of the current connection. */
export interface WelcomeInfo {
  protocol: number;
  gateway: string;
  connection: string;
  tenant: string;
  subject: string;
  role: Role;
  /** Token expiry, seconds since the Unix epoch. */
  expiresAt: number;
}

/** How a (re)subscription was recovered: emitted once per `subscribed` frame. */
export interface RecoveryEvent {
  channel: string;
  /**
   * `complete`: nothing was missed (every missed message was delivered, marked `replayed`);
   * `too_old`: the gateway no longer holds everything since the cursor — reload the state the
   * channel feeds (e.g. from storage) and go on live; `none`: a first subscribe, no cursor.
   */
  recovery: Recovery;
  /** Messages the gateway replayed before confirming (duplicates among them are dropped). */
  replayed: number;
  /** The cursor sent as `since`, if any. */
  since: string | undefined;
  /** The channel's cursor now. */
  cursor: string;
  /** True when the subscribe carried a cursor (a resume after a reconnect, or `since`). */
  resumed: boolean;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Whether the client will reconnect by itself… */
  willReconnect: boolean;
  /** …after this many milliseconds. */
  delayMs?: number;
  /** Whether the connection had been welcomed (false: the attempt itself failed). */
  wasOpen: boolean;
}

export interface AckResult {
  alertId: string;
  ackId: string;
}

export interface PresenceResult {
  channel: string;
  /** Connections subscribed to the room, on every gateway instance. */
  connections: number;
  /** Distinct subjects among them (at most 1000). */
  subjects: string[];
  /** Gateway instances with at least one of them. */
  gateways: number;
}

/**
 * How long `token` has left, in ms: by its `exp` on this clock, and — when it has an `iat` and
 * was obtained at `obtainedAt` (this clock) — by its lifetime counted from then, which does not
 * depend on this clock agreeing with the issuer's. A clock ahead makes the first say expired;
 * the second says what is left. `undefined` without `exp`.
 */
function tokenLeftMs(token: string, obtainedAt: number, now: number): number | undefined {
  const { exp, iat } = jwtTimes(token);
  if (exp === undefined) {
    return undefined;
  }
  const byClock = exp * 1000 - now;
  if (iat === undefined || obtainedAt <= 0) {
    return byClock;
  }
  const byLifetime = obtainedAt + (exp - iat) * 1000 - now;
  return byClock > 0 ? Math.min(byClock, byLifetime) : byLifetime;
}

export interface ClientEvents {
  /** The WebSocket opened (the `welcome` frame follows). */
  open: [];
  /** The gateway welcomed the connection; subscriptions are being resumed. */
  welcome: [WelcomeInfo];
  /** A WebSocket closed or a connection attempt failed. */
  close: [CloseInfo];
  /** Something the application should know about (see PitbossError for the codes). */
  error: [PitbossError];
  /** A (re)subscription was confirmed, with how it was recovered. */
  recovery: [RecoveryEvent];
  /** A reconnect is scheduled. */
  reconnecting: [{ attempt: number; delayMs: number }];
  /** The gateway ended a subscription by itself (a refreshed token no longer allows the room). */
  unsubscribed: [{ channel: string; reason: string }];
  /** The token was refreshed on the live connection; `expiresAt` in seconds since the epoch. */
  refreshed: [{ expiresAt: number }];
  /**
   * An alert of a subscribed operator channel was acknowledged — by this client or another
   * operator of the tenant, on any gateway instance — so consoles open at once agree. After a
   * reconnect that resumes (a cursor), it is also emitted for each alert the client had that
   * was acknowledged meanwhile (the gateway sends those acks before `subscribed`); an alert
   * acknowledged before the client saw it is not sent at all.
   */
  alertAcked: [AlertAckedEvent];
}

/** An acknowledgement of an alert, as the `alertAcked` event gives it. */
export interface AlertAckedEvent {
  channel: string;
  alertId: string;
  ackId: string;
  outcome: string;
  operatorId: string;
  /** Milliseconds since the epoch. */
  ackedAt: number;
}

export interface PitbossClientOptions {
  /** The gateway's WebSocket URL, e.g. `wss://live.example.com/v1/ws`. */
  url: string;
  /** A token; enough for a static one. */
  token?: string;
  /**
   * Fetches a fresh token (from the game's or console's backend). Called to connect when there
   * is no token, before the token expires (`refreshBeforeMs`), after a 4001 close, and after a
   * connection attempt failed before `welcome` (a browser cannot see a 401 on a WebSocket).
   */
  getToken?: () => Promise<string>;
  /** The WebSocket class; `globalThis.WebSocket` by default (pass the `ws` package in Node 20). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect delays: exponential with full jitter by default. */
  backoff?: Partial<BackoffOptions>;
  /**
   * Refresh the token this long before `expires_at` (or halfway through its remaining life if
   * that is later, so a short token is not refreshed in a loop). Default 60 000 ms. Needs
   * `getToken`.
   */
  refreshBeforeMs?: number;
  /** Refresh the token on the live connection (default true when there is a `getToken`). */
  autoRefresh?: boolean;
  /** Recent message ids remembered per channel to drop duplicates (default 10 000). */
  dedupWindow?: number;
  /**
   * An application-level ping this often, and a connection that answers nothing within
   * `timeoutMs` is dropped and reconnected (a half-open TCP connection otherwise goes unnoticed
   * until the gateway's idle timeout). Default {intervalMs: 25 000, timeoutMs: 10 000}; false
   * turns it off.
   */
  heartbeat?: { intervalMs: number; timeoutMs: number } | false;
  /** How long `ping()`, `presence()` and refreshes wait for their answer (default 15 000 ms). */
  requestTimeoutMs?: number;
  /**
   * How long a connection attempt may take, from opening the socket to `welcome`, before it is
   * dropped and retried (default 20 000 ms).
   */
  connectTimeoutMs?: number;
  /** How often an ack answered `bus_unavailable` or `rate_limited` is retried (default 5). */
  ackRetries?: number;
  /**
   * Acks sent per second, after a first burst (defaults 15 and 50: below the gateway's 20 and
   * 100 per connection, docs/gateway.md). Acks past it wait their turn in the client, so an
   * "acknowledge all" of thousands of alerts goes through instead of being refused.
   */
  ackRate?: { perSecond: number; burst: number };
  /** The random source of the backoff jitter (tests). */
  random?: () => number;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

interface Subscription {
  channel: string;
  handlers: Set<MessageHandler<never>>;
  onError: Set<(e: PitbossError) => void>;
  cursor: string | null;
  recent: RecentIds;
  /** The pending subscribe of the current connection. */
  requestId: RequestId | null;
  /** The `since` sent with it. */
  since: string | undefined;
  /** Confirmed on the current connection. */
  active: boolean;
  /** The cursor was refused (`invalid_cursor`): report the fresh subscribe as `too_old`. */
  lostCursor: boolean;
  retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** The last confirmation on the current connection. */
  lastRecovery: RecoveryEvent | null;
  waiters: { resolve: (r: RecoveryEvent) => void; reject: (e: PitbossError) => void }[];
}

interface AckJob {
  frame: Extract<ClientFrame, { type: 'ack' }>;
  resolve: (r: AckResult) => void;
  reject: (e: PitbossError) => void;
  attempts: number;
  requestId: RequestId | undefined;
  retryTimer: ReturnType<typeof setTimeout> | undefined;
}

type Pending =
  | { kind: 'subscribe'; channel: string }
  | { kind: 'unsubscribe'; channel: string }
  | { kind: 'ack'; job: AckJob }
  | {
      kind: 'refresh' | 'presence' | 'ping';
      resolve: (frame: ServerFrame) => void;
      reject: (e: PitbossError) => void;
      timer: ReturnType<typeof setTimeout> | undefined;
    };

interface Queued {
  run: () => void;
  reject: (e: PitbossError) => void;
}

const DEFAULT_HEARTBEAT = { intervalMs: 25_000, timeoutMs: 10_000 };
/** Longest delay setTimeout takes. */
const MAX_TIMER_MS = 2_147_483_647;
/** Codes worth retrying a request for. */
const RETRYABLE = new Set(['bus_unavailable', 'rate_limited']);

/**
 * A connection to the Pitboss edge gateway that survives drops: it reconnects with backoff,
 * resumes every channel from its cursor, drops duplicates, refreshes its token and retries acks.
 * See README.md.
 */
export class PitbossClient extends Emitter<ClientEvents> {
  private readonly url: string;
  private token: string | null;
  private readonly getToken: (() => Promise<string>) | undefined;
  private readonly Ctor: WebSocketConstructor | undefined;
  private readonly backoff: BackoffOptions;
  private readonly refreshBeforeMs: number;
  private readonly autoRefresh: boolean;
  private readonly dedupWindow: number;
  private readonly heartbeat: { intervalMs: number; timeoutMs: number } | false;
  private readonly requestTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly ackRetries: number;
  private readonly random: () => number;

  private _state: ClientState = 'idle';
  /** Bumped for every socket and by close(): events of older sockets are ignored. */
  private gen = 0;
  private ws: WebSocketLike | null = null;
  private welcomeInfo: WelcomeInfo | null = null;
  private welcomedAt = 0;
  private attempt = 0;
  private tokenStale = false;
  private restartAnnounced = false;
  private nextRequestId = 1;
  private expiresAtMs = 0;
  /** When getToken gave the current token (local clock), to estimate expiry without skew. */
  private tokenObtainedAt = 0;
  private lastFrameAt = 0;

  private readonly subs = new Map<string, Subscription>();
  private readonly pending = new Map<RequestId, Pending>();
  private readonly acks = new Set<AckJob>();
  /** Acks waiting for their turn ([`ackRate`]), and the tokens of the pace. */
  private readonly ackQueue = new Set<AckJob>();
  private ackTokens: number;
  private ackTokensAt = Date.now();
  private ackDrainTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly ackRate: { perSecond: number; burst: number };
  /** Acks reported by `alertAcked` (alert and ack id): each is reported once. */
  private readonly reportedAcks = new RecentIds(20_000);
  private queued: Queued[] = [];
  private connectWaiters: { resolve: (w: WelcomeInfo) => void; reject: (e: PitbossError) => void }[] =
    [];

  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private heartbeatDeadline: ReturnType<typeof setTimeout> | undefined;

  constructor(options: PitbossClientOptions) {
    super();
    if (typeof options.url !== 'string' || options.url === '') {
      throw new TypeError('PitbossClient: `url` is required');
    }
    if (options.token === undefined && options.getToken === undefined) {
      throw new TypeError('PitbossClient: give `token` or `getToken`');
    }
    this.url = options.url;
    this.token = options.token ?? null;
    this.getToken = options.getToken;
    this.Ctor =
      options.WebSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket ??
      undefined;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.refreshBeforeMs = options.refreshBeforeMs ?? 60_000;
    this.autoRefresh = (options.autoRefresh ?? true) && options.getToken !== undefined;
    this.dedupWindow = options.dedupWindow ?? 10_000;
    this.heartbeat = options.heartbeat === undefined ? DEFAULT_HEARTBEAT : options.heartbeat;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 15_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 20_000;
    this.ackRetries = options.ackRetries ?? 5;
    this.random = options.random ?? Math.random;
    const rate = options.ackRate ?? { perSecond: 15, burst: 50 };
    this.ackRate = { perSecond: Math.max(0.1, rate.perSecond), burst: Math.max(1, Math.floor(rate.burst)) };
    this.ackTokens = this.ackRate.burst;
  }

  /** `idle` (before connect), `connecting`, `open` (welcomed), `reconnecting`, `closed`. */
  get state(): ClientState {
    return this._state;
  }

  /** The current connection's `welcome`, or null when not connected. */
  get welcome(): WelcomeInfo | null {
    return this.welcomeInfo;
  }

  /** The channels subscribed to (by the application; confirmed or not). */
  channels(): string[] {
    return [...this.subs.keys()];
  }

  /** The newest cursor seen on `channel` (keep it to resume in a later session). */
  cursor(channel: string): string | undefined {
    return this.subs.get(channel)?.cursor ?? undefined;
  }

  /**
   * Forgets the cursors (of `channel`, or of every channel): the next (re)subscribe starts live
   * (`recovery: "none"`). For a bus that was wiped and recreated, whose positions started over
   * (docs/gateway.md, "Not yet"): a cursor from before would make the gateway skip messages up
   * to it.
   */
  resetCursors(channel?: string): void {
    for (const sub of this.subs.values()) {
      if (channel === undefined || sub.channel === channel) {
        sub.cursor = null;
      }
    }
  }

  /**
   * Connects (and keeps reconnecting until `close()`): resolves on the first `welcome`; rejects
   * only if the client gives up (`close()`, 1008/1009, an expired token without `getToken`).
   * Subscriptions made before it are sent once connected.
   */
  connect(): Promise<WelcomeInfo> {
    if (this._state === 'open' && this.welcomeInfo !== null) {
      return Promise.resolve(this.welcomeInfo);
    }
    const p = new Promise<WelcomeInfo>((resolve, reject) => {
      this.connectWaiters.push({ resolve, reject });
    });
    if (this._state === 'idle' || this._state === 'closed') {
      this.attempt = 0;
      void this.openSocket();
    }
    return p;
  }

  /**
   * Subscribes `handler` to `channel` (`player:<tenant>:<player>`, `room:<tenant>:<room>`,
   * `operator:<tenant>`). Each message is delivered once, in order, including those missed
   * while disconnected (`replayed: true`). Returns a function that unsubscribes this handler.
   */
  subscribe<T = unknown>(
    channel: string,
    handler: MessageHandler<T>,
    options: SubscribeOptions = {},
  ): () => void {
    // Never sent over the gateway's frame limit (it would close the connection with 1009, and
    // every reconnect would send it again): refused here, before it is kept.
    const tooBig = this.checkSize({
      type: 'subscribe',
      id: Number.MAX_SAFE_INTEGER,
      channel,
      ...(options.since === undefined ? {} : { since: options.since }),
    });
    if (tooBig !== null) {
      throw tooBig;
    }
    let sub = this.subs.get(channel);
    const isNew = sub === undefined;
    if (sub === undefined) {
      sub = {
        channel,
        handlers: new Set(),
        onError: new Set(),
        cursor: options.since ?? null,
        recent: new RecentIds(this.dedupWindow),
        requestId: null,
        since: undefined,
        active: false,
        lostCursor: false,
        retryTimer: undefined,
        lastRecovery: null,
        waiters: [],
      };
      this.subs.set(channel, sub);
    }
    const s = sub;
    const h = handler as MessageHandler<never>;
    s.handlers.add(h);
    const onError = options.onError;
    if (onError !== undefined) {
      s.onError.add(onError);
    }
    if (isNew && this.isWelcomed()) {
      this.sendSubscribe(s);
    }
    let done = false;
    return () => {
      if (done) {
        return;
      }
      done = true;
      s.handlers.delete(h);
      if (onError !== undefined) {
        s.onError.delete(onError);
      }
      if (s.handlers.size === 0 && this.subs.get(channel) === s) {
        this.dropSubscription(s);
        if (this.isWelcomed() && (s.active || s.requestId !== null)) {
          const id = this.newRequestId();
          this.pending.set(id, { kind: 'unsubscribe', channel });
          this.sendFrame({ type: 'unsubscribe', id, channel });
        }
      }
    };
  }

  /**
   * Resolves once `channel` is subscribed on the current connection (at once if it is), with
   * how it was recovered. A subscribe without a cursor delivers what the gateway gets after it
   * confirms: await this before relying on receiving something published next. Rejects if the
   * gateway refuses the subscription, or the client is closed.
   */
  whenSubscribed(channel: string): Promise<RecoveryEvent> {
    const sub = this.subs.get(channel);
    if (sub === undefined) {
      return Promise.reject(new PitbossError('not_subscribed', `not subscribed to ${channel}`, { channel }));
    }
    if (sub.active && sub.lastRecovery !== null) {
      return Promise.resolve(sub.lastRecovery);
    }
    return new Promise((resolve, reject) => sub.waiters.push({ resolve, reject }));
  }

  /**
   * Acknowledges an alert (operators): resolves once the gateway answers `acked` (the ack is
   * on the bus). The ack carries a UUID `ack_id` that is reused when it is retried after a
   * reconnect or a `bus_unavailable`, so a retry is the same ack. Rejects with the gateway's
   * code (`forbidden`, `invalid_ack`, …).
   */
  ack(alertId: string, outcome?: AckOutcome, note?: string): Promise<AckResult> {
    if (this._state === 'idle' || this._state === 'closed') {
      return Promise.reject(new PitbossError('closed', 'the client is not connected: call connect()'));
    }
    const frame: AckJob['frame'] = { type: 'ack', alert_id: alertId, ack_id: randomUUID() };
    if (outcome !== undefined) {
      frame.outcome = outcome;
    }
    if (note !== undefined) {
      frame.note = note;
    }
    const tooBig = this.checkSize({ ...frame, id: Number.MAX_SAFE_INTEGER });
    if (tooBig !== null) {
      return Promise.reject(tooBig);
    }
    return new Promise<AckResult>((resolve, reject) => {
      const job: AckJob = {
        frame,
        resolve,
        reject,
        attempts: 0,
        requestId: undefined,
        retryTimer: undefined,
      };
      this.acks.add(job);
      if (this.isWelcomed()) {
        this.sendAck(job);
      }
    });
  }

  /**
   * Who is in a room, across every gateway instance. `room` is a room id of the token's tenant or a
   * full `room:<tenant>:<room>` channel name.
   */
  presence(room: string): Promise<PresenceResult> {
    return this.request('presence', (id) => ({
      type: 'presence',
      id,
      channel: room.startsWith('room:') ? room : `room:${this.welcomeInfo?.tenant ?? ''}:${room}`,
    })).then((f) => {
      const p = f as Extract<ServerFrame, { type: 'presence' }>;
      return {
        channel: p.channel,
        connections: p.connections,
        subjects: p.subjects,
        gateways: p.gateways,
      };
    });
  }

  /** An application-level ping; resolves with the round trip in milliseconds. */
  ping(): Promise<number> {
    const started = Date.now();
    return this.request('ping', (id) => ({ type: 'ping', id })).then(() => Date.now() - started);
  }

  /**
   * Gets a fresh token with `getToken` and hands it to the live connection (`refresh`); resolves
   * with the new `expires_at` (seconds). Done by itself before expiry unless `autoRefresh` is
   * false.
   */
  async refresh(): Promise<number> {
    if (this.getToken === undefined) {
      throw new PitbossError('token_unavailable', 'refresh() needs the getToken option');
    }
    let token: string;
    try {
      token = await this.getToken();
    } catch (e) {
      throw new PitbossError('token_unavailable', `getToken failed: ${String(e)}`, { cause: e });
    }
    this.token = token;
    this.tokenObtainedAt = Date.now();
    const f = await this.request('refresh', (id) => ({ type: 'refresh', id, token }));
    return (f as Extract<ServerFrame, { type: 'refreshed' }>).expires_at;
  }

  /**
   * Closes the connection and stops reconnecting. Pending requests and acks are rejected with
   * `closed`. Subscriptions and cursors are kept: `connect()` again resumes them.
   */
  close(): Promise<void> {
    const ws = this.ws;
    const wasActive = this._state !== 'idle' && this._state !== 'closed';
    const closed = new PitbossError('closed', 'the client was closed');
    this.gen++;
    this.teardownConnection(closed);
    this.clearTimer('reconnectTimer');
    this._state = 'closed';
    this.failEverything(closed);
    if (wasActive) {
      this.emit('close', {
        code: 1000,
        reason: 'closed by the client',
        willReconnect: false,
        wasOpen: ws !== null,
      });
    }
    if (ws === null) {
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      let finished = false;
      const finish = (): void => {
        if (!finished) {
          finished = true;
          clearTimeout(timer);
          resolve();
        }
      };
      // Waits for the closing handshake a little; then drops the socket.
      const timer = setTimeout(() => {
        ws.terminate?.();
        finish();
      }, 1000);
      ws.onclose = finish;
      try {
        ws.close(1000, 'client closing');
      } catch {
        finish();
      }
      if (ws.readyState === 3) {
        finish();
      }
    });
  }

  // ---------------------------------------------------------------- connection

  private isWelcomed(): boolean {
    return this._state === 'open' && this.ws !== null;
  }

  private async openSocket(): Promise<void> {
    const gen = ++this.gen;
    this._state = 'connecting';
    let token: string;
    try {
      token = await this.tokenForConnect();
    } catch (e) {
      if (gen !== this.gen) {
        return;
      }
      const err =
        e instanceof PitbossError
          ? e
          : new PitbossError('token_unavailable', `getToken failed: ${String(e)}`, { cause: e });
      if (this.getToken === undefined) {
        this.giveUp(err, 1000, err.message, false);
        return;
      }
      this.emit('error', err);
      this.scheduleReconnect(backoffDelay(this.attempt++, this.backoff, this.random));
      return;
    }
    if (gen !== this.gen) {
      return;
    }
    const Ctor = this.Ctor;
    if (Ctor === undefined) {
      this.giveUp(
        new PitbossError('connect_failed', 'no WebSocket: pass the `WebSocket` option (e.g. the ws package in Node)'),
        1000,
        'no WebSocket',
        false,
      );
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new Ctor(this.url, tokenProtocols(token));
    } catch (e) {
      this.giveUp(
        new PitbossError('connect_failed', `cannot open ${this.url}: ${String(e)}`, { cause: e }),
        1000,
        'connect failed',
        false,
      );
      return;
    }
    this.ws = ws;
    this.restartAnnounced = false;
    ws.onopen = () => {
      if (gen === this.gen) {
        this.lastFrameAt = Date.now();
        this.emit('open');
      }
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (gen === this.gen) {
        this.onText(ev.data);
      }
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      if (gen === this.gen) {
        this.onSocketClosed(ev.code ?? CloseCode.ABNORMAL, ev.reason ?? '');
      }
    };
    ws.onerror = () => {
      // A close event follows; its code says what to do.
    };
    // A handshake that hangs (a black-holed SYN, a proxy that never answers) is given up.
    this.connectTimer = setTimeout(() => {
      this.connectTimer = undefined;
      if (gen === this.gen && this.welcomeInfo === null) {
        this.gen++;
        detach(ws);
        drop(ws);
        this.onSocketClosed(CloseCode.ABNORMAL, `no welcome within ${this.connectTimeoutMs} ms`);
      }
    }, this.connectTimeoutMs);
  }

  /** The token to connect with, fetching a fresh one when needed. */
  private async tokenForConnect(): Promise<string> {
    const now = Date.now();
    if (this.getToken !== undefined) {
      const left = this.token === null ? undefined : tokenLeftMs(this.token, this.tokenObtainedAt, now);
      const expiring = left !== undefined && left < 2000;
      if (this.token === null || this.tokenStale || expiring) {
        const t = await this.getToken();
        if (typeof t !== 'string' || t === '') {
          throw new PitbossError('token_unavailable', 'getToken returned no token');
        }
        this.token = t;
        this.tokenObtainedAt = Date.now();
        this.tokenStale = false;
        // Judged with its `iat` too: a token just issued for 5 minutes is not expired because
        // this clock runs 10 minutes ahead of the issuer's (that looped on getToken).
        const tleft = tokenLeftMs(t, this.tokenObtainedAt, Date.now());
        if (tleft !== undefined && tleft <= 0) {
          throw new PitbossError('token_expired', 'getToken returned an expired token');
        }
      }
    }
    if (this.token === null) {
      throw new PitbossError('token_missing', 'no token');
    }
    if (this.getToken === undefined) {
      const exp = jwtExpiry(this.token);
      // The gateway allows 5 s of leeway at the upgrade, then closes at once with 4001.
      if (exp !== undefined && exp * 1000 <= now) {
        throw new PitbossError('token_expired', 'the token has expired and there is no getToken to renew it');
      }
    }
    return this.token;
  }

  private onSocketClosed(code: number, reason: string): void {
    const wasOpen = this.welcomeInfo !== null;
    const lived = wasOpen ? Date.now() - this.welcomedAt : 0;
    this.gen++;
    this.teardownConnection();
    if (this._state === 'closed') {
      return;
    }
    switch (code) {
      case CloseCode.POLICY:
        this.giveUp(
          new PitbossError(
            'policy_violation',
            `the gateway closed the connection (1008: ${reason || 'too many invalid requests'}); not reconnecting — call connect() to try again`,
            { closeCode: code },
          ),
          code,
          reason,
          wasOpen,
        );
        return;
      case CloseCode.TOO_BIG:
        this.giveUp(
          new PitbossError(
            'frame_too_large',
            `the gateway closed the connection (1009: ${reason || 'frame too large'}); not reconnecting — call connect() to try again`,
            { closeCode: code },
          ),
          code,
          reason,
          wasOpen,
        );
        return;
      case CloseCode.TOKEN_EXPIRED: {
        if (this.getToken === undefined) {
          this.giveUp(
            new PitbossError('token_expired', 'the token expired (4001) and there is no getToken to renew it', {
              closeCode: code,
            }),
            code,
            reason,
            wasOpen,
          );
          return;
        }
        this.tokenStale = true;
        // At once with a fresh token; with backoff if the last one did not last a second.
        const delay = lived >= 1000 ? 0 : backoffDelay(this.attempt++, this.backoff, this.random);
        this.emit('close', { code, reason, willReconnect: true, delayMs: delay, wasOpen });
        this.scheduleReconnect(delay);
        return;
      }
      default: {
        if (!wasOpen && this.getToken !== undefined) {
          // A refused upgrade (401) looks like 1006 in a browser: try a fresh token next time.
          this.tokenStale = true;
        }
        if (code === CloseCode.RESTART || this.restartAnnounced) {
          this.attempt = 0;
        }
        const delay = backoffDelay(this.attempt++, this.backoff, this.random);
        this.emit('close', { code, reason, willReconnect: true, delayMs: delay, wasOpen });
        this.scheduleReconnect(delay);
      }
    }
  }

  private scheduleReconnect(delay: number): void {
    if (this._state === 'closed') {
      return;
    }
    this._state = 'reconnecting';
    this.clearTimer('reconnectTimer');
    this.emit('reconnecting', { attempt: this.attempt, delayMs: delay });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this._state === 'reconnecting') {
        void this.openSocket();
      }
    }, delay);
  }

  /** Stops for good (until connect()): rejects what waits, emits error and close. */
  private giveUp(error: PitbossError, code: number, reason: string, wasOpen: boolean): void {
    this.gen++;
    this.teardownConnection(error);
    this.clearTimer('reconnectTimer');
    this._state = 'closed';
    this.failEverything(error);
    this.emit('error', error);
    this.emit('close', { code, reason, willReconnect: false, wasOpen });
  }

  /** Forgets the socket and what belonged to it; keeps subscriptions and acks for the next. */
  private teardownConnection(
    error: PitbossError = new PitbossError('disconnected', 'the connection dropped before the answer'),
  ): void {
    const ws = this.ws;
    this.ws = null;
    this.welcomeInfo = null;
    if (ws !== null) {
      detach(ws);
    }
    this.clearTimer('refreshTimer');
    this.clearTimer('connectTimer');
    this.stopHeartbeat();
    // A new connection has a fresh pace at the gateway; what waited is sent after its welcome.
    if (this.ackDrainTimer !== undefined) {
      clearTimeout(this.ackDrainTimer);
      this.ackDrainTimer = undefined;
    }
    this.ackQueue.clear();
    this.ackTokens = this.ackRate.burst;
    this.ackTokensAt = Date.now();
    for (const [, p] of this.pending) {
      switch (p.kind) {
        case 'ack':
          p.job.requestId = undefined;
          break;
        case 'subscribe':
        case 'unsubscribe':
          break;
        default:
          if (p.timer !== undefined) {
            clearTimeout(p.timer);
          }
          p.reject(error);
      }
    }
    this.pending.clear();
    for (const sub of this.subs.values()) {
      sub.requestId = null;
      sub.active = false;
      sub.lastRecovery = null;
      if (sub.retryTimer !== undefined) {
        clearTimeout(sub.retryTimer);
        sub.retryTimer = undefined;
      }
    }
  }

  private failEverything(error: PitbossError): void {
    if (this.ackDrainTimer !== undefined) {
      clearTimeout(this.ackDrainTimer);
      this.ackDrainTimer = undefined;
    }
    this.ackQueue.clear();
    for (const job of this.acks) {
      if (job.retryTimer !== undefined) {
        clearTimeout(job.retryTimer);
      }
      job.reject(error);
    }
    this.acks.clear();
    const queued = this.queued;
    this.queued = [];
    for (const q of queued) {
      q.reject(error);
    }
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) {
      w.reject(error);
    }
    for (const sub of this.subs.values()) {
      const subWaiters = sub.waiters;
      sub.waiters = [];
      for (const w of subWaiters) {
        w.reject(error);
      }
    }
  }

  private clearTimer(name: 'reconnectTimer' | 'refreshTimer' | 'connectTimer'): void {
    const t = this[name];
    if (t !== undefined) {
      clearTimeout(t);
      this[name] = undefined;
    }
  }

  // ---------------------------------------------------------------- frames

  private onText(data: unknown): void {
    this.lastFrameAt = Date.now();
    if (typeof data !== 'string') {
      this.emit('error', new PitbossError('protocol', 'a binary frame from the gateway'));
      return;
    }
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch (e) {
      this.emit('error', new PitbossError('protocol', `a frame that is not JSON: ${String(e)}`));
      return;
    }
    switch (frame.type) {
      case 'welcome':
        this.onWelcome(frame);
        break;
      case 'message':
        this.onMessage(frame);
        break;
      case 'subscribed':
        this.onSubscribed(frame);
        break;
      case 'cursor': {
        const sub = this.subs.get(frame.channel);
        if (sub !== undefined) {
          sub.cursor = mergeCursors(sub.cursor, frame.cursor);
        }
        break;
      }
      case 'unsubscribed': {
        const p = frame.id === undefined ? undefined : this.pending.get(frame.id);
        if (p !== undefined) {
          this.pending.delete(frame.id!);
          break;
        }
        // Not asked for: the gateway ended it (a refreshed token no longer allows the room).
        const sub = this.subs.get(frame.channel);
        if (sub !== undefined) {
          this.dropSubscription(sub);
        }
        this.emit('unsubscribed', {
          channel: frame.channel,
          reason: frame.reason ?? 'ended by the gateway',
        });
        break;
      }
      case 'acked': {
        const p = frame.id === undefined ? undefined : this.pending.get(frame.id);
        if (p?.kind === 'ack') {
          this.pending.delete(frame.id!);
          this.acks.delete(p.job);
          p.job.resolve({ alertId: frame.alert_id, ackId: frame.ack_id });
        }
        break;
      }
      case 'alert_acked': {
        // Each ack once (a resume sends again the ack of every alert before its cursor, and
        // the gateway cannot tell which a client was told of); on a resume, only for an alert
        // this client delivered (the gateway cannot tell which alerts a client had).
        if (!this.reportedAcks.add(`${frame.alert_id} ${frame.ack_id}`)) {
          break;
        }
        const sub = this.subs.get(frame.channel);
        const resuming = sub !== undefined && sub.requestId !== null && sub.since !== undefined;
        if (resuming && !sub.recent.has(frame.alert_id)) {
          break;
        }
        this.emit('alertAcked', {
          channel: frame.channel,
          alertId: frame.alert_id,
          ackId: frame.ack_id,
          outcome: frame.outcome,
          operatorId: frame.operator_id,
          ackedAt: Date.parse(frame.acked_at),
        });
        break;
      }
      case 'refreshed': {
        this.expiresAtMs = frame.expires_at * 1000;
        if (this.welcomeInfo !== null) {
          this.welcomeInfo = { ...this.welcomeInfo, expiresAt: frame.expires_at };
        }
        this.scheduleRefresh();
        this.answer(frame.id, frame);
        this.emit('refreshed', { expiresAt: frame.expires_at });
        break;
      }
      case 'presence':
      case 'pong':
        this.answer(frame.id, frame);
        break;
      case 'error':
        this.onError(frame);
        break;
      case 'reconnect':
        // A 1012 close follows: reconnect promptly, with the cursors.
        this.restartAnnounced = true;
        break;
      default:
        // A frame type newer than this client: ignored.
        break;
    }
  }

  private onWelcome(f: WelcomeFrame): void {
    this.welcomeInfo = {
      protocol: f.protocol,
      gateway: f.gateway,
      connection: f.connection,
      tenant: f.tenant,
      subject: f.subject,
      role: f.role,
      expiresAt: f.expires_at,
    };
    this.welcomedAt = Date.now();
    this.clearTimer('connectTimer');
    this._state = 'open';
    this.attempt = 0;
    this.tokenStale = false;
    this.expiresAtMs = f.expires_at * 1000;
    if (f.protocol !== PROTOCOL_VERSION) {
      this.emit(
        'error',
        new PitbossError('protocol', `the gateway speaks protocol ${f.protocol}; this client ${PROTOCOL_VERSION}`),
      );
    }
    // Resume every channel from its cursor, then what waited for a connection.
    for (const sub of this.subs.values()) {
      this.sendSubscribe(sub);
    }
    for (const job of this.acks) {
      if (job.requestId === undefined && job.retryTimer === undefined) {
        this.sendAck(job);
      }
    }
    const queued = this.queued;
    this.queued = [];
    for (const q of queued) {
      q.run();
    }
    this.scheduleRefresh();
    this.startHeartbeat();
    const info = this.welcomeInfo;
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) {
      w.resolve(info);
    }
    this.emit('welcome', info);
  }

  private onMessage(f: MessageFrame): void {
    const sub = this.subs.get(f.channel);
    if (sub === undefined) {
      return;
    }
    if (typeof f.cursor === 'string') {
      sub.cursor = mergeCursors(sub.cursor, f.cursor);
    }
    if (!sub.recent.add(f.id)) {
      return; // delivered already
    }
    const msg: PitbossMessage<never> = {
      channel: f.channel,
      kind: f.kind,
      id: f.id,
      data: f.data as never,
      replayed: f.replayed === true,
      cursor: sub.cursor ?? f.cursor,
    };
    for (const h of [...sub.handlers]) {
      try {
        h(msg);
      } catch (e) {
        this.emit(
          'error',
          new PitbossError('handler_error', `a handler of ${f.channel} threw: ${String(e)}`, {
            channel: f.channel,
            cause: e,
          }),
        );
      }
    }
  }

  private onSubscribed(f: SubscribedFrame): void {
    let sub: Subscription | undefined;
    if (f.id !== undefined) {
      const p = this.pending.get(f.id);
      this.pending.delete(f.id);
      sub = p?.kind === 'subscribe' ? this.subs.get(p.channel) : undefined;
      if (sub !== undefined && sub.requestId !== f.id) {
        sub = undefined; // an answer to an older subscribe of the channel
      }
    } else {
      sub = this.subs.get(f.channel);
    }
    if (sub === undefined) {
      return;
    }
    sub.cursor = mergeCursors(sub.cursor, f.cursor);
    sub.requestId = null;
    sub.active = true;
    const recovery: Recovery = sub.lostCursor ? 'too_old' : f.recovery;
    sub.lostCursor = false;
    const event: RecoveryEvent = {
      channel: sub.channel,
      recovery,
      replayed: f.replayed,
      since: sub.since,
      cursor: sub.cursor,
      resumed: sub.since !== undefined,
    };
    sub.lastRecovery = event;
    const waiters = sub.waiters;
    sub.waiters = [];
    for (const w of waiters) {
      w.resolve(event);
    }
    this.emit('recovery', event);
  }

  private onError(f: ErrorFrame): void {
    const p = f.id === undefined ? undefined : this.pending.get(f.id);
    const err = new PitbossError(f.code, f.message, f.id === undefined ? {} : { requestId: f.id });
    if (p === undefined) {
      if (f.code === 'token_expired' && this.getToken !== undefined) {
        return; // a 4001 close follows; the client reconnects with a fresh token
      }
      this.emit('error', err);
      return;
    }
    this.pending.delete(f.id!);
    switch (p.kind) {
      case 'subscribe': {
        const sub = this.subs.get(p.channel);
        if (sub === undefined || sub.requestId !== f.id) {
          return;
        }
        sub.requestId = null;
        if (f.code === 'invalid_cursor') {
          // The gateway cannot read the cursor (a wiped bus, another deployment): start over
          // live and tell the application to reload.
          sub.cursor = null;
          sub.lostCursor = true;
          this.emit('error', new PitbossError(f.code, f.message, { requestId: f.id!, channel: p.channel }));
          this.sendSubscribe(sub);
          return;
        }
        if (RETRYABLE.has(f.code)) {
          const delay = Math.max(1000, backoffDelay(1, this.backoff, this.random));
          sub.retryTimer = setTimeout(() => {
            sub.retryTimer = undefined;
            if (this.isWelcomed() && this.subs.get(p.channel) === sub && sub.requestId === null && !sub.active) {
              this.sendSubscribe(sub);
            }
          }, delay);
          return;
        }
        // forbidden, invalid_channel, too_many_subscriptions, …: the subscription is dropped.
        const e = new PitbossError(f.code, f.message, { requestId: f.id!, channel: p.channel });
        this.dropSubscription(sub, e);
        for (const cb of sub.onError) {
          try {
            cb(e);
          } catch {
            // the application's callback
          }
        }
        this.emit('error', e);
        return;
      }
      case 'unsubscribe':
        return; // not_subscribed: nothing to undo
      case 'ack': {
        const job = p.job;
        job.requestId = undefined;
        if (RETRYABLE.has(f.code) && job.attempts < this.ackRetries) {
          const delay = backoffDelay(job.attempts++, this.backoff, this.random);
          job.retryTimer = setTimeout(() => {
            job.retryTimer = undefined;
            if (this.isWelcomed() && this.acks.has(job) && job.requestId === undefined) {
              this.sendAck(job);
            }
          }, delay);
          return;
        }
        this.acks.delete(job);
        job.reject(err);
        return;
      }
      case 'refresh':
        if (p.timer !== undefined) {
          clearTimeout(p.timer);
        }
        p.reject(err);
        return;
      default:
        if (p.timer !== undefined) {
          clearTimeout(p.timer);
        }
        p.reject(err);
    }
  }

  private answer(id: RequestId | undefined, frame: ServerFrame): void {
    if (id === undefined) {
      return;
    }
    const p = this.pending.get(id);
    if (p === undefined || p.kind === 'subscribe' || p.kind === 'unsubscribe' || p.kind === 'ack') {
      return;
    }
    this.pending.delete(id);
    if (p.timer !== undefined) {
      clearTimeout(p.timer);
    }
    p.resolve(frame);
  }

  // ---------------------------------------------------------------- requests

  private newRequestId(): number {
    return this.nextRequestId++;
  }

  private checkSize(frame: ClientFrame): PitbossError | null {
    const n = utf8Length(JSON.stringify(frame));
    if (n > MAX_REQUEST_BYTES) {
      return new PitbossError(
        'frame_too_large',
        `the request is ${n} bytes; the gateway reads at most ${MAX_REQUEST_BYTES}`,
      );
    }
    return null;
  }

  private sendFrame(frame: ClientFrame): boolean {
    const ws = this.ws;
    if (ws === null || ws.readyState !== 1) {
      return false;
    }
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false; // the close event follows
    }
  }

  private sendSubscribe(sub: Subscription): void {
    const id = this.newRequestId();
    sub.requestId = id;
    sub.since = sub.cursor ?? undefined;
    this.pending.set(id, { kind: 'subscribe', channel: sub.channel });
    const frame: ClientFrame = { type: 'subscribe', id, channel: sub.channel };
    if (sub.cursor !== null) {
      frame.since = sub.cursor;
    }
    this.sendFrame(frame);
  }

  private dropSubscription(
    sub: Subscription,
    error: PitbossError = new PitbossError('not_subscribed', `unsubscribed from ${sub.channel}`, {
      channel: sub.channel,
    }),
  ): void {
    const waiters = sub.waiters;
    sub.waiters = [];
    for (const w of waiters) {
      w.reject(error);
    }
    if (sub.retryTimer !== undefined) {
      clearTimeout(sub.retryTimer);
      sub.retryTimer = undefined;
    }
    if (this.subs.get(sub.channel) === sub) {
      this.subs.delete(sub.channel);
    }
  }

  private sendAck(job: AckJob): void {
    if (!this.takeAckToken()) {
      this.ackQueue.add(job);
      this.scheduleAckDrain();
      return;
    }
    const id = this.newRequestId();
    job.requestId = id;
    this.pending.set(id, { kind: 'ack', job });
    this.sendFrame({ ...job.frame, id });
  }

  /** One ack's turn, if the pace has one now. */
  private takeAckToken(): boolean {
    const now = Date.now();
    const { perSecond, burst } = this.ackRate;
    this.ackTokens = Math.min(burst, this.ackTokens + ((now - this.ackTokensAt) / 1000) * perSecond);
    this.ackTokensAt = now;
    if (this.ackTokens >= 1) {
      this.ackTokens -= 1;
      return true;
    }
    return false;
  }

  /** Sends the queued acks as their turns come. */
  private scheduleAckDrain(): void {
    if (this.ackDrainTimer !== undefined || this.ackQueue.size === 0) {
      return;
    }
    const wait = Math.max(1, Math.ceil(((1 - this.ackTokens) / this.ackRate.perSecond) * 1000));
    this.ackDrainTimer = setTimeout(() => {
      this.ackDrainTimer = undefined;
      if (!this.isWelcomed()) {
        return; // sent again after the next welcome
      }
      // In the order they came (a Set iterates in insertion order).
      for (const job of this.ackQueue) {
        if (!this.acks.has(job) || job.requestId !== undefined || job.retryTimer !== undefined) {
          this.ackQueue.delete(job);
          continue;
        }
        if (!this.takeAckToken()) {
          break;
        }
        this.ackQueue.delete(job);
        const id = this.newRequestId();
        job.requestId = id;
        this.pending.set(id, { kind: 'ack', job });
        this.sendFrame({ ...job.frame, id });
      }
      this.scheduleAckDrain();
    }, wait);
  }

  /** A request answered by one frame; waits for a connection if there is none yet. */
  private request(
    kind: 'refresh' | 'presence' | 'ping',
    build: (id: number) => ClientFrame,
  ): Promise<ServerFrame> {
    if (this._state === 'idle' || this._state === 'closed') {
      return Promise.reject(new PitbossError('closed', 'the client is not connected: call connect()'));
    }
    return new Promise<ServerFrame>((resolve, reject) => {
      const run = (): void => {
        const id = this.newRequestId();
        const frame = build(id);
        const tooBig = this.checkSize(frame);
        if (tooBig !== null) {
          reject(tooBig);
          return;
        }
        const timer = setTimeout(() => {
          if (this.pending.get(id) !== undefined) {
            this.pending.delete(id);
            reject(new PitbossError('timeout', `no answer to ${kind} in ${this.requestTimeoutMs} ms`, { requestId: id }));
          }
        }, this.requestTimeoutMs);
        this.pending.set(id, { kind, resolve, reject, timer });
        this.sendFrame(frame);
      };
      if (this.isWelcomed()) {
        run();
      } else {
        this.queued.push({ run, reject });
      }
    });
  }

  // ---------------------------------------------------------------- token refresh, heartbeat

  private scheduleRefresh(): void {
    this.clearTimer('refreshTimer');
    if (!this.autoRefresh || this.expiresAtMs === 0) {
      return;
    }
    const delay = Math.min(MAX_TIMER_MS, refreshDelay(this.remainingMs(), this.refreshBeforeMs));
    const gen = this.gen;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      if (gen !== this.gen || !this.isWelcomed()) {
        return;
      }
      this.refresh().catch((e: unknown) => {
        if (gen !== this.gen || this._state === 'closed') {
          return;
        }
        const err = e instanceof PitbossError ? e : new PitbossError('token_unavailable', String(e), { cause: e });
        if (err.code === 'disconnected' || err.code === 'closed') {
          return; // the next connection gets the fresh token
        }
        this.emit('error', err);
        // Try again while the token still holds; a 4001 close is handled otherwise.
        const left = this.remainingMs();
        if (left > 0 && this.isWelcomed() && this.refreshTimer === undefined) {
          this.refreshTimer = setTimeout(() => {
            this.refreshTimer = undefined;
            this.scheduleRefresh();
          }, Math.max(500, left / 4));
        }
      });
    }, delay);
  }

  /**
   * How long the token of the connection has left. `expires_at` is on the gateway's clock; with
   * the token's `iat`, the time since getToken gave it also tells (on this clock), which keeps a
   * client whose clock is ahead by more than a token's life from refreshing in a loop.
   */
  private remainingMs(): number {
    const now = Date.now();
    const byClock = this.expiresAtMs - now;
    const { exp, iat } = this.token === null ? {} : jwtTimes(this.token);
    const bySkewFree =
      exp !== undefined && iat !== undefined && this.tokenObtainedAt > 0 && exp * 1000 === this.expiresAtMs
        ? this.tokenObtainedAt + (exp - iat) * 1000 - now
        : undefined;
    if (bySkewFree === undefined) {
      return byClock;
    }
    return byClock > 0 ? Math.min(byClock, bySkewFree) : bySkewFree;
  }

  private startHeartbeat(): void {
    this.stopHeartbeat();
    const hb = this.heartbeat;
    if (hb === false) {
      return;
    }
    const gen = this.gen;
    this.heartbeatTimer = setInterval(() => {
      if (gen !== this.gen || !this.isWelcomed() || this.heartbeatDeadline !== undefined) {
        return;
      }
      const sentAt = Date.now();
      const id = this.newRequestId();
      this.pending.set(id, {
        kind: 'ping',
        resolve: () => undefined,
        reject: () => undefined,
        timer: undefined,
      });
      this.sendFrame({ type: 'ping', id });
      this.heartbeatDeadline = setTimeout(() => {
        this.heartbeatDeadline = undefined;
        this.pending.delete(id);
        if (gen !== this.gen || this.lastFrameAt >= sentAt) {
          return; // something came: alive
        }
        // Nothing for timeoutMs: the connection is gone without a close. Drop it.
        const ws = this.ws;
        this.gen++;
        if (ws !== null) {
          detach(ws);
          drop(ws);
        }
        this.onSocketClosed(CloseCode.ABNORMAL, 'heartbeat timeout: no answer from the gateway');
      }, hb.timeoutMs);
    }, hb.intervalMs);
  }

  private stopHeartbeat(): void {
    if (this.heartbeatTimer !== undefined) {
      clearInterval(this.heartbeatTimer);
      this.heartbeatTimer = undefined;
    }
    if (this.heartbeatDeadline !== undefined) {
      clearTimeout(this.heartbeatDeadline);
      this.heartbeatDeadline = undefined;
    }
  }
}

const noop = (): void => undefined;

/** Stops listening to a socket (an error listener stays: `ws` throws on an unheard error). */
function detach(ws: WebSocketLike): void {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = noop;
}

/** Drops a socket without waiting for the closing handshake where the WebSocket allows it. */
function drop(ws: WebSocketLike): void {
  try {
    if (ws.terminate !== undefined) {
      ws.terminate();
    } else {
      ws.close(4000, 'client dropping the connection');
    }
  } catch {
    // already closed
  }
}

/** Shortest wait before a refresh, so nothing can make the client refresh in a tight loop. */
const MIN_REFRESH_DELAY_MS = 1000;

/**
 * When to refresh a token with `remainingMs` left: `refreshBeforeMs` before expiry, or halfway
 * through what is left if that is later (a token shorter than `refreshBeforeMs`), and not
 * sooner than a second.
 */
export function refreshDelay(remainingMs: number, refreshBeforeMs: number): number {
  return Math.max(MIN_REFRESH_DELAY_MS, remainingMs - refreshBeforeMs, remainingMs / 2);
}
