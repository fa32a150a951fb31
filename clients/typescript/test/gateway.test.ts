/**
 * The client against the real gateway: `pitboss up --no-rules` (PITBOSS_BIN), one process and
 * data directory per test, killed and removed afterwards.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, afterEach, describe, it } from 'node:test';
import WebSocket from 'ws';

import {
  PitbossClient,
  type AlertAckedEvent,
  type CloseInfo,
  type PitbossClientOptions,
  type PitbossError,
  type PitbossMessage,
  type PushData,
  type RecoveryEvent,
  type WelcomeInfo,
} from '../src/index.js';
import { blackhole, cleanup, Pitboss, sleep, tempDir, token, waitFor, type PublishResult } from './support/pitboss.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const P1 = 'player:demo:p1';

/** What a client did, for assertions. */
class Recorder {
  readonly messages: PitbossMessage<PushData>[] = [];
  readonly recoveries: RecoveryEvent[] = [];
  readonly closes: CloseInfo[] = [];
  readonly welcomes: WelcomeInfo[] = [];
  readonly errors: PitbossError[] = [];
  readonly refreshes: number[] = [];

  constructor(readonly client: PitbossClient) {
    client.on('recovery', (r) => this.recoveries.push(r));
    client.on('close', (c) => this.closes.push(c));
    client.on('welcome', (w) => this.welcomes.push(w));
    client.on('error', (e) => this.errors.push(e));
    client.on('refreshed', (r) => this.refreshes.push(r.expiresAt));
  }

  subscribe(channel: string): void {
    this.client.subscribe<PushData>(channel, (m) => this.messages.push(m));
  }

  titles(): string[] {
    return this.messages.map((m) => m.data.title);
  }

  /** Fails if a message id was delivered more than once. */
  assertNoDuplicates(): void {
    const seen = new Map<string, number>();
    for (const m of this.messages) {
      seen.set(m.id, (seen.get(m.id) ?? 0) + 1);
    }
    const dups = [...seen].filter(([, n]) => n > 1);
    assert.deepEqual(dups, [], 'no message delivered twice');
  }
}

const clients: PitbossClient[] = [];

function newClient(options: Partial<PitbossClientOptions> & { url: string }): Recorder {
  const c = new PitbossClient({
    WebSocket: WebSocket as unknown as PitbossClientOptions['WebSocket'],
    backoff: { initialMs: 50, maxMs: 500, jitter: 1 },
    ...options,
  });
  clients.push(c);
  return new Recorder(c);
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
});

after(async () => {
  await cleanup();
});

async function upWithOperator(options: { rules?: boolean } = {}): Promise<{ pb: Pitboss; dir: string; op: string }> {
  const dir = tempDir();
  const pb = await Pitboss.start(dir, 0, options);
  const op = await pb.token({ role: 'operator', subject: 'ops' });
  return { pb, dir, op };
}

/** Publishes `titles` to player p1, one after the other; their publish answers. */
async function publishAll(pb: Pitboss, op: string, titles: string[]): Promise<PublishResult[]> {
  const out: PublishResult[] = [];
  for (const t of titles) {
    out.push(await pb.publish(op, { player: 'p1' }, t));
  }
  return out;
}

const range = (prefix: string, n: number): string[] => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);

describe('PitbossClient against pitboss up', () => {
  it('receives pushes live on player and room channels, answers presence and ping', async () => {
    const { pb, op } = await upWithOperator();
    const pt = await pb.token({ role: 'player', subject: 'p1', rooms: ['a', 'b'] });
    const r = newClient({ url: pb.wsUrl, token: pt });
    r.subscribe(P1);
    r.subscribe('room:demo:a');
    const welcome = await r.client.connect();
    assert.equal(welcome.tenant, 'demo');
    assert.equal(welcome.subject, 'p1');
    assert.equal(welcome.role, 'player');
    await waitFor('both subscriptions', () => r.recoveries.length === 2);
    assert.deepEqual(r.recoveries.map((x) => [x.recovery, x.resumed]).sort(), [
      ['none', false],
      ['none', false],
    ]);

    const published: PublishResult[] = [];
    published.push(await pb.publish(op, { player: 'p1' }, 'p-0'));
    published.push(await pb.publish(op, { room: 'a' }, 'room-0'));
    published.push(await pb.publish(op, { player: 'p1' }, 'p-1'));
    published.push(await pb.publish(op, { player: 'p2' }, 'not-for-p1'));
    published.push(await pb.publish(op, { room: 'b' }, 'room-b-unsubscribed'));
    published.push(await pb.publish(op, { player: 'p1' }, 'p-2'));
    await waitFor('4 pushes', () => r.messages.length >= 4);
    await r.client.ping(); // a round trip: anything else would be here by now
    // In order within each channel; the two channels' keys are on different partitions, read
    // independently, so their interleaving is not promised (docs/gateway.md).
    const on = (channel: string) =>
      r.messages.filter((m) => m.channel === channel).map((m) => m.data.title);
    assert.deepEqual(on(P1), ['p-0', 'p-1', 'p-2']);
    assert.deepEqual(on('room:demo:a'), ['room-0']);
    assert.equal(r.messages.length, 4);
    r.assertNoDuplicates();
    for (const m of r.messages) {
      assert.equal(m.kind, 'push');
      assert.equal(m.replayed, false);
      assert.equal(m.id, m.data.push_id);
    }
    const last = published[5]!;
    assert.equal(last.channel, P1);
    assert.equal(r.client.cursor(P1), `${last.partition}=${last.position}`);

    const presence = await r.client.presence('a');
    assert.deepEqual(presence, {
      channel: 'room:demo:a',
      connections: 1,
      subjects: ['p1'],
      gateways: 1,
    });
    assert.ok((await r.client.ping()) >= 0);
    assert.deepEqual(r.errors, []);
  });

  it('after a SIGKILL and a restart on the same port, gets what was published while it was away, once', async () => {
    const { pb, dir, op } = await upWithOperator();
    const pt = await pb.token({ role: 'player', subject: 'p1' });
    // The client's network: while the gate is shut, its connections go to a port that drops
    // them, as if the gateway were still down.
    const hole = await blackhole();
    let gateOpen = true;
    let refusedAttempts = 0;
    class GatedWebSocket extends WebSocket {
      constructor(url: string, protocols?: string[]) {
        const u = new URL(url);
        if (!gateOpen) {
          refusedAttempts++;
          u.host = `127.0.0.1:${hole.port}`;
        }
        super(u.toString(), protocols);
      }
    }
    try {
      const r = newClient({
        url: pb.wsUrl,
        token: pt,
        WebSocket: GatedWebSocket as unknown as PitbossClientOptions['WebSocket'],
      });
      r.subscribe(P1);
      await r.client.connect();
      await r.client.whenSubscribed(P1);
      await publishAll(pb, op, range('before', 3));
      await waitFor('3 live pushes', () => r.messages.length === 3);
      const cursorBefore = r.client.cursor(P1);
      assert.match(cursorBefore ?? '', /^\d+=2$/);

      gateOpen = false;
      await pb.kill();
      // The first close is the SIGKILL's; a refused attempt at the blackhole can add another within
      // one poll (backoff from 0-50 ms), so wait for at least one and look at the first.
      await waitFor('the close', () => r.closes.length >= 1);
      assert.equal(r.closes[0]!.code, 1006);
      assert.equal(r.closes[0]!.willReconnect, true);

      const pb2 = await Pitboss.start(dir, pb.gatewayPort);
      assert.equal(pb2.gatewayAddr, pb.gatewayAddr);
      const missed = await publishAll(pb2, op, range('missed', 5));
      // Published while the client could not connect: it was backing off.
      await waitFor('a refused reconnect attempt', () => refusedAttempts >= 1);
      assert.notEqual(r.client.state, 'open');
      assert.equal(r.messages.length, 3);

      gateOpen = true;
      await waitFor('the resume', () => r.recoveries.length === 2);
      const resume = r.recoveries[1]!;
      assert.equal(resume.recovery, 'complete');
      assert.equal(resume.resumed, true);
      assert.equal(resume.since, cursorBefore);
      assert.equal(resume.replayed, 5);
      await waitFor('8 pushes', () => r.messages.length === 8);
      assert.deepEqual(
        r.messages.slice(3).map((m) => [m.id, m.replayed]),
        missed.map((p) => [p.push_id, true]),
      );

      await publishAll(pb2, op, range('after', 3));
      await waitFor('11 pushes', () => r.messages.length >= 11);
      await r.client.ping();
      assert.deepEqual(r.titles(), [...range('before', 3), ...range('missed', 5), ...range('after', 3)]);
      assert.deepEqual(r.messages.slice(8).map((m) => m.replayed), [false, false, false]);
      r.assertNoDuplicates();
      assert.equal(r.welcomes.length, 2);
      assert.deepEqual(r.errors, []);
    } finally {
      await hole.close();
    }
  });

  it('after a SIGKILL, pushes published while it reconnects arrive exactly once, in order', async () => {
    const { pb, dir, op } = await upWithOperator();
    const pt = await pb.token({ role: 'player', subject: 'p1' });
    const r = newClient({ url: pb.wsUrl, token: pt, backoff: { initialMs: 100, maxMs: 800, jitter: 1 } });
    r.subscribe(P1);
    await r.client.connect();
    await r.client.whenSubscribed(P1);
    const before = await publishAll(pb, op, range('before', 2));
    await waitFor('2 live pushes', () => r.messages.length === 2);

    await pb.kill();
    await waitFor('the close', () => r.closes.length >= 1);
    const pb2 = await Pitboss.start(dir, pb.gatewayPort);
    // Straight away: some land before the client is back, some after.
    const during = await publishAll(pb2, op, range('during', 20));
    const sentinel = await pb2.publish(op, { player: 'p1' }, 'sentinel');
    await waitFor('every push', () => r.messages.some((m) => m.id === sentinel.push_id));
    await waitFor('the resume', () => r.recoveries.length >= 2);
    await r.client.ping();

    r.assertNoDuplicates();
    assert.deepEqual(
      r.messages.map((m) => m.id),
      [...before, ...during, sentinel].map((p) => p.push_id),
    );
    const resume = r.recoveries[r.recoveries.length - 1]!;
    assert.equal(resume.recovery, 'complete');
    assert.equal(resume.resumed, true);
    assert.deepEqual(r.errors, []);
  });

  it('on a graceful restart (SIGTERM: reconnect frame, 1012) resumes completely', async () => {
    const { pb, dir, op } = await upWithOperator();
    const pt = await pb.token({ role: 'player', subject: 'p1' });
    const r = newClient({ url: pb.wsUrl, token: pt });
    r.subscribe(P1);
    await r.client.connect();
    await r.client.whenSubscribed(P1);
    await publishAll(pb, op, range('before', 2));
    await waitFor('2 pushes', () => r.messages.length === 2);
    await pb.terminate();
    await waitFor('the close', () => r.closes.length >= 1);
    assert.equal(r.closes[0]!.code, 1012);
    assert.equal(r.closes[0]!.willReconnect, true);
    const pb2 = await Pitboss.start(dir, pb.gatewayPort);
    await publishAll(pb2, op, range('after', 2));
    await waitFor('4 pushes', () => r.messages.length >= 4);
    await waitFor('the resume', () => r.recoveries.length >= 2);
    await r.client.ping();
    assert.deepEqual(r.titles(), [...range('before', 2), ...range('after', 2)]);
    r.assertNoDuplicates();
    assert.equal(r.recoveries[r.recoveries.length - 1]!.recovery, 'complete');
  });

  it('refreshes its token on the live connection and stays connected past the first expiry', async () => {
    const { pb, op } = await upWithOperator();
    let calls = 0;
    const getToken = (): Promise<string> => {
      calls++;
      return pb.token({ role: 'player', subject: 'p1', ttlSecs: 3 });
    };
    const r = newClient({ url: pb.wsUrl, getToken, refreshBeforeMs: 2000 });
    r.subscribe(P1);
    const first = await r.client.connect();
    // Well past the first token's expiry (3 s, and the gateway closes with 4001 at expiry).
    await sleep(7000);
    assert.deepEqual(r.closes, [], 'never closed');
    assert.equal(r.welcomes.length, 1, 'one connection all along');
    assert.ok(r.refreshes.length >= 2, `refreshed ${r.refreshes.length} times`);
    assert.ok(calls >= 3, `getToken called ${calls} times`);
    assert.ok(r.client.welcome!.expiresAt > first.expiresAt);
    assert.equal(r.client.welcome!.connection, first.connection);
    await pb.publish(op, { player: 'p1' }, 'still-here');
    await waitFor('the push', () => r.messages.length === 1);
    assert.deepEqual(r.errors, []);
  });

  it('on 4001 (token expired on the live connection) gets a fresh token and resumes', async () => {
    const { pb, op } = await upWithOperator();
    let calls = 0;
    const getToken = (): Promise<string> => {
      calls++;
      return pb.token({ role: 'player', subject: 'p1', ttlSecs: calls === 1 ? 2 : 3600 });
    };
    const r = newClient({ url: pb.wsUrl, getToken, autoRefresh: false });
    r.subscribe(P1);
    await r.client.connect();
    await r.client.whenSubscribed(P1);
    await pb.publish(op, { player: 'p1' }, 'first');
    await waitFor('the first push', () => r.messages.length === 1);
    await waitFor('the 4001 close', () => r.closes.length >= 1, 15_000);
    assert.equal(r.closes[0]!.code, 4001);
    assert.equal(r.closes[0]!.willReconnect, true);
    await waitFor('the second connection', () => r.welcomes.length === 2);
    await waitFor('the resume', () => r.recoveries.length === 2);
    assert.equal(r.recoveries[1]!.recovery, 'complete');
    await pb.publish(op, { player: 'p1' }, 'second');
    await waitFor('the second push', () => r.messages.length === 2);
    assert.deepEqual(r.titles(), ['first', 'second']);
    assert.equal(calls, 2);
    assert.deepEqual(r.errors, [], 'handled, not an error');
  });

  it('after a refused upgrade (bad token) asks getToken for a new one', async () => {
    const { pb } = await upWithOperator();
    const other = tempDir();
    const stranger = await Pitboss.start(other); // another secret
    const wrong = await stranger.token({ role: 'player', subject: 'p1' });
    await stranger.kill();
    const tokens = [wrong, await pb.token({ role: 'player', subject: 'p1' })];
    let calls = 0;
    const r = newClient({ url: pb.wsUrl, getToken: async () => tokens[Math.min(calls++, 1)]! });
    const w = await r.client.connect();
    assert.equal(w.subject, 'p1');
    assert.equal(calls, 2);
    assert.equal(r.closes[0]!.wasOpen, false);
    assert.equal(r.closes[0]!.code, 1006);
  });

  it('surfaces a forbidden subscribe and keeps the connection and other channels', async () => {
    const { pb, op } = await upWithOperator();
    const pt = await pb.token({ role: 'player', subject: 'p1' });
    const r = newClient({ url: pb.wsUrl, token: pt });
    const refused: PitbossError[] = [];
    r.subscribe(P1);
    r.client.subscribe('player:demo:p2', () => assert.fail('p1 must not get p2 pushes'), {
      onError: (e) => refused.push(e),
    });
    r.client.subscribe('room:demo:vip', () => assert.fail('not in the token'));
    await r.client.connect();
    await r.client.whenSubscribed(P1);
    await assert.rejects(r.client.whenSubscribed('player:demo:p2'), (e: PitbossError) => e.code === 'forbidden' || e.code === 'not_subscribed');
    await waitFor('two refusals', () => r.errors.length === 2);
    assert.deepEqual(
      r.errors.map((e) => [e.code, e.channel]).sort(),
      [
        ['forbidden', 'player:demo:p2'],
        ['forbidden', 'room:demo:vip'],
      ],
    );
    assert.equal(refused.length, 1);
    assert.match(refused[0]!.message, /does not allow player:demo:p2/);
    assert.deepEqual(r.client.channels(), [P1]);
    await pb.publish(op, { player: 'p2' }, 'for-p2');
    await pb.publish(op, { player: 'p1' }, 'for-p1');
    await waitFor('the p1 push', () => r.messages.length === 1);
    assert.equal(r.client.state, 'open');
    await assert.rejects(r.client.presence('vip'), (e: PitbossError) => e.code === 'forbidden');
  });

  it('acks: an operator gets acked with its ack_id; a player is refused with forbidden', async () => {
    const { pb } = await upWithOperator({ rules: true });
    const ops = newClient({ url: pb.wsUrl, token: await pb.token({ role: 'operator', subject: 'ops' }) });
    ops.subscribe('operator:demo');
    await ops.client.connect();
    await waitFor('the operator subscription', () => ops.recoveries.length === 1);
    assert.equal(ops.recoveries[0]!.recovery, 'none');

    // A second console of the tenant hears of every ack (alertAcked), with who and the outcome.
    const other = newClient({ url: pb.wsUrl, token: await pb.token({ role: 'operator', subject: 'marina' }) });
    const heard: AlertAckedEvent[] = [];
    other.client.on('alertAcked', (e) => heard.push(e));
    other.subscribe('operator:demo');
    await other.client.connect();
    await waitFor('the other subscription', () => other.recoveries.length === 1);

    // A real alert (the gateway refuses an ack of an alert it does not hold: unknown_alert).
    await assert.rejects(ops.client.ack(randomUUID()), (e: PitbossError) => e.code === 'unknown_alert');
    await pb.betBurst('p-burst');
    await waitFor('an alert', () => ops.messages.length >= 1);
    const alertId = (ops.messages[0]!.data as unknown as { alert_id: string }).alert_id;
    const acked = await ops.client.ack(alertId, 'false_positive', 'checked with the player');
    await waitFor('the other console hears of the ack', () => heard.length === 1);
    assert.deepEqual(
      [heard[0]!.channel, heard[0]!.alertId, heard[0]!.ackId, heard[0]!.outcome, heard[0]!.operatorId],
      ['operator:demo', alertId, acked.ackId, 'false_positive', 'ops'],
    );
    assert.ok(Math.abs(heard[0]!.ackedAt - Date.now()) < 60_000, `${heard[0]!.ackedAt}`);
    assert.equal(acked.alertId, alertId);
    assert.match(acked.ackId, UUID);
    const again = await ops.client.ack(alertId);
    assert.notEqual(again.ackId, acked.ackId, 'a new ack, a new ack_id');
    await assert.rejects(ops.client.ack('not-a-uuid'), (e: PitbossError) => e.code === 'invalid_ack');

    const player = newClient({ url: pb.wsUrl, token: await token(pb.dataDir, { role: 'player', subject: 'p1' }) });
    await player.client.connect();
    await assert.rejects(player.client.ack(randomUUID()), (e: PitbossError) => {
      assert.equal(e.code, 'forbidden');
      assert.match(e.message, /only operators/);
      return true;
    });
  });

  it('an ack made while the gateway is down is sent when it is back', async () => {
    const { pb, dir } = await upWithOperator({ rules: true });
    const ops = newClient({ url: pb.wsUrl, token: await pb.token({ role: 'operator', subject: 'ops' }) });
    ops.subscribe('operator:demo');
    await ops.client.connect();
    await pb.betBurst('p-burst');
    await waitFor('an alert', () => ops.messages.length >= 1);
    const alertId = (ops.messages[0]!.data as unknown as { alert_id: string }).alert_id;
    await pb.kill();
    await waitFor('the close', () => ops.closes.length >= 1);
    const pending = ops.client.ack(alertId, 'escalated');
    await Pitboss.start(dir, pb.gatewayPort, { rules: true });
    const acked = await pending;
    assert.equal(acked.alertId, alertId);
    assert.match(acked.ackId, UUID);
    assert.equal(ops.welcomes.length, 2);
  });
});
