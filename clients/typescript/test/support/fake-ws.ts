/**
 * A scripted WebSocket for unit tests: the test plays the gateway (opens, sends frames, closes
 * with a code) and reads what the client sent.
 */
import type { WebSocketLike } from '../../src/index.js';

export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = [];

  static reset(): void {
    FakeWebSocket.instances = [];
  }

  static get last(): FakeWebSocket {
    const ws = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (ws === undefined) {
      throw new Error('no socket yet');
    }
    return ws;
  }

  readyState = 0;
  readonly url: string;
  readonly sent: Record<string, unknown>[] = [];
  closedByClient: { code: number | undefined; reason: string | undefined } | null = null;
  /* eslint-disable @typescript-eslint/no-explicit-any */
  onopen: ((event: any) => void) | null = null;
  onmessage: ((event: any) => void) | null = null;
  onclose: ((event: any) => void) | null = null;
  onerror: ((event: any) => void) | null = null;
  /* eslint-enable @typescript-eslint/no-explicit-any */

  readonly protocols: string[];

  constructor(url: string, protocols?: string[]) {
    this.url = url;
    this.protocols = protocols ?? [];
    FakeWebSocket.instances.push(this);
  }

  /**
   * The token the client offered as a subprotocol (`pitboss.token.<jwt>`, beside `pitboss.v1`);
   * null when it did not offer both, or put a token in the URL.
   */
  get token(): string | null {
    if (new URL(this.url).searchParams.has('token') || !this.protocols.includes('pitboss.v1')) {
      return null;
    }
    const p = this.protocols.find((x) => x.startsWith('pitboss.token.'));
    return p === undefined ? null : p.slice('pitboss.token.'.length);
  }

  send(data: string): void {
    if (this.readyState !== 1) {
      throw new Error('send on a socket that is not open');
    }
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }

  close(code?: number, reason?: string): void {
    if (this.readyState === 3) {
      return;
    }
    this.closedByClient = { code, reason };
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code: code ?? 1005, reason: reason ?? '' }), 0);
  }

  // ------------------------------------------------------------ the gateway's side

  /** Opens and sends `welcome`. */
  accept(welcome: Partial<Record<string, unknown>> = {}): void {
    this.readyState = 1;
    this.onopen?.({});
    this.frame({
      type: 'welcome',
      protocol: 1,
      gateway: 'fake',
      connection: `fake-${FakeWebSocket.instances.indexOf(this) + 1}`,
      tenant: 'demo',
      subject: 'p1',
      role: 'player',
      expires_at: Math.floor(Date.now() / 1000) + 3600,
      ...welcome,
    });
  }

  frame(f: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(f) });
  }

  /** Closes from the gateway's side (a close frame with `code`, or 1006 for a drop). */
  drop(code = 1006, reason = ''): void {
    this.readyState = 3;
    if (code === 1006) {
      this.onerror?.({});
    }
    this.onclose?.({ code, reason });
  }

  /** The frames of `type` the client sent. */
  sentOf(type: string): Record<string, unknown>[] {
    return this.sent.filter((f) => f.type === type);
  }
}
