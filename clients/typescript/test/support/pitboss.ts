/**
 * Runs the real gateway for the tests: `pitboss up --no-rules` on loopback with ports picked by
 * the kernel, each test in its own data directory; tokens from `pitboss token`; pushes through
 * `POST /v1/publish`.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const PITBOSS_BIN = process.env.PITBOSS_BIN || '/var/cache/pitboss/target/debug/pitboss';

/** The environment of child processes, without PITBOSS_* settings that would override flags. */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('PITBOSS_') && k !== 'RUST_LOG') {
      env[k] = v;
    }
  }
  env.RUST_LOG = 'warn';
  return env;
}

const live = new Set<ChildProcess>();
const dirs = new Set<string>();

// A test run that dies leaves no gateway behind.
process.on('exit', () => {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {
      // gone
    }
  }
});

/** A fresh temporary directory, removed by `cleanup()`. */
export function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'pitboss-ts-client-'));
  dirs.add(d);
  return d;
}

/** Kills every gateway still running and removes the temporary directories. */
export async function cleanup(): Promise<void> {
  await Promise.all([...live].map((p) => killProcess(p, 'SIGKILL')));
  for (const d of dirs) {
    rmSync(d, { recursive: true, force: true });
  }
  dirs.clear();
}

async function killProcess(p: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) {
    live.delete(p);
    return;
  }
  const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
  p.kill(signal);
  await exited;
  live.delete(p);
}

/** One `pitboss up` process. */
export class Pitboss {
  private constructor(
    readonly dataDir: string,
    readonly proc: ChildProcess,
    /** host:port of the HTTP API. */
    readonly httpAddr: string,
    /** host:port of the gateway. */
    readonly gatewayAddr: string,
    private readonly stderrTail: () => string,
  ) {}

  get gatewayPort(): number {
    return Number(this.gatewayAddr.split(':').pop());
  }

  /** The WebSocket URL (without a token). */
  get wsUrl(): string {
    return `ws://${this.gatewayAddr}/v1/ws`;
  }

  /**
   * Starts `pitboss up` on `dataDir`; with `gatewayPort`, the gateway listens there (a restart
   * on the port the first run got: retried while the port is still busy).
   */
  static async start(dataDir: string, gatewayPort = 0, options: { rules?: boolean } = {}): Promise<Pitboss> {
    let lastError: unknown;
    for (let attempt = 0; attempt < 40; attempt++) {
      try {
        return await Pitboss.startOnce(dataDir, gatewayPort, options.rules ?? false);
      } catch (e) {
        lastError = e;
        if (!(e instanceof PortBusy)) {
          throw e;
        }
        await sleep(250);
      }
    }
    throw lastError;
  }

  private static startOnce(dataDir: string, gatewayPort: number, rules: boolean): Promise<Pitboss> {
    const args = [
      'up',
      ...(rules ? [] : ['--no-rules']),
      '--data-dir',
      dataDir,
      '--listen',
      '127.0.0.1:0',
      '--admin-listen',
      '127.0.0.1:0',
      '--gateway-listen',
      `127.0.0.1:${gatewayPort}`,
    ];
    const proc = spawn(PITBOSS_BIN, args, { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(proc);
    let stderr = '';
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-8000);
    });
    const tail = (): string => stderr;
    return new Promise<Pitboss>((resolve, reject) => {
      let httpAddr: string | undefined;
      let settled = false;
      const lines = createInterface({ input: proc.stdout! });
      const fail = (e: Error): void => {
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          reject(e);
        }
      };
      const timer = setTimeout(() => {
        void killProcess(proc, 'SIGKILL');
        fail(new Error(`pitboss up did not start in 60 s; stderr:\n${tail()}`));
      }, 60_000);
      lines.on('line', (line) => {
        if (settled) {
          return;
        }
        const up = /^Pitboss is up: http:\/\/(\S+)/.exec(line);
        if (up !== null) {
          httpAddr = up[1];
          return;
        }
        const ws = /^\s*live:\s.*ws:\/\/([^/\s]+)\/v1\/ws/.exec(line);
        if (ws !== null && httpAddr !== undefined) {
          settled = true;
          clearTimeout(timer);
          resolve(new Pitboss(dataDir, proc, httpAddr, ws[1]!, tail));
        }
      });
      proc.once('exit', (code, signal) => {
        live.delete(proc);
        const text = tail();
        if (/binding|address already in use|os error 98/i.test(text)) {
          fail(new PortBusy(text));
        } else {
          fail(new Error(`pitboss up exited (${code ?? signal}) before it was up; stderr:\n${text}`));
        }
      });
      proc.once('error', (e) => fail(e));
    });
  }

  /** SIGKILL: no `reconnect` frame, no close frame — the clients see the TCP connection drop. */
  kill(): Promise<void> {
    return killProcess(this.proc, 'SIGKILL');
  }

  /** SIGTERM: the gateway drains (a `reconnect` frame and a 1012 close for every client). */
  terminate(): Promise<void> {
    return killProcess(this.proc, 'SIGTERM');
  }

  stderr(): string {
    return this.stderrTail();
  }

  /** A token signed with this data dir's secret. */
  token(options: TokenOptions): Promise<string> {
    return token(this.dataDir, options);
  }

  /**
   * Sends 30 bets of `player` within a second through ingest (the demo tenant's key): with the
   * rules running (`start(…, { rules: true })`), `fraud.bet_velocity` raises an alert — a real
   * one, which the gateway lets an operator acknowledge.
   */
  async betBurst(player: string): Promise<void> {
    const key = readFileSync(join(this.dataDir, 'demo-api-key'), 'utf8').trim();
    const now = new Date().toISOString();
    const events = Array.from({ length: 30 }, (_, i) => ({
      tenant_id: 'demo',
      player_id: player,
      type: 'bet_placed',
      occurred_at: now,
      payload: { bet_id: `${player}-bet-${i}`, game_id: 'roulette', stake: { amount_minor: 500, currency: 'EUR' } },
    }));
    const res = await fetch(`http://${this.httpAddr}/v1/events`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify(events),
    });
    if (!res.ok) {
      throw new Error(`ingest answered ${res.status}: ${await res.text()}`);
    }
  }

  /** Publishes a push as an operator; retried on network errors (same push_id: idempotent). */
  async publish(operatorToken: string, target: { player: string } | { room: string }, title: string): Promise<PublishResult> {
    const body = JSON.stringify({
      target,
      kind: 'operator.message',
      title,
      body: `body of ${title}`,
      push_id: uuidv7(),
    });
    let lastError: unknown;
    for (let attempt = 0; attempt < 20; attempt++) {
      try {
        const res = await fetch(`http://${this.gatewayAddr}/v1/publish`, {
          method: 'POST',
          headers: { authorization: `Bearer ${operatorToken}`, 'content-type': 'application/json' },
          body,
        });
        const text = await res.text();
        if (res.status !== 202) {
          throw new Error(`publish answered ${res.status}: ${text}`);
        }
        return JSON.parse(text) as PublishResult;
      } catch (e) {
        lastError = e;
        if (e instanceof Error && e.message.startsWith('publish answered')) {
          throw e;
        }
        await sleep(100);
      }
    }
    throw lastError;
  }
}

class PortBusy extends Error {}

export interface PublishResult {
  push_id: string;
  channel: string;
  partition: number;
  position: string;
}

export interface TokenOptions {
  role: 'player' | 'operator';
  subject: string;
  rooms?: string[];
  ttlSecs?: number;
  tenant?: string;
}

/** `pitboss token --data-dir <dir> …`. */
export function token(dataDir: string, o: TokenOptions): Promise<string> {
  const args = ['token', '--data-dir', dataDir, '--role', o.role, '--subject', o.subject];
  if (o.rooms !== undefined) {
    args.push('--rooms', o.rooms.join(','));
  }
  if (o.ttlSecs !== undefined) {
    args.push('--ttl-secs', String(o.ttlSecs));
  }
  if (o.tenant !== undefined) {
    args.push('--tenant', o.tenant);
  }
  return new Promise((resolve, reject) => {
    execFile(PITBOSS_BIN, args, { env: childEnv() }, (err, stdout, stderr) => {
      if (err !== null) {
        reject(new Error(`pitboss token failed: ${err.message}\n${stderr}`));
      } else {
        resolve(stdout.trim());
      }
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits until `predicate` holds (polling); fails with `what` after `timeoutMs`. */
export async function waitFor(what: string, predicate: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await sleep(10);
  }
}

/**
 * A TCP port where connections are accepted and dropped at once: a WebSocket pointed there
 * fails like one to a gateway that is down (the "network" of a gated client).
 */
export async function blackhole(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) {
          s.destroy();
        }
        server.close(() => resolve());
      }),
  };
}

/** A UUIDv7 (RFC 9562: 48-bit Unix ms, version 7, variant, random): an operator push's own id
 * must be one (docs/gateway.md). */
export function uuidv7(): string {
  const b = randomBytes(16);
  let ms = BigInt(Date.now());
  for (let i = 5; i >= 0; i--) {
    b[i] = Number(ms & 0xffn);
    ms >>= 8n;
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
