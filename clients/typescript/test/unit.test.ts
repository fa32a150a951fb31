/**
 * Unit tests: the pure parts (backoff, dedup set, cursors) and the client's state machine
 * against a scripted WebSocket (FakeWebSocket), for cases the real gateway cannot be made to
 * produce on demand (a duplicate frame, a drop between an ack and its answer, 1008/1009).
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';

import {
  backoffDelay,
  comparePositions,
  mergeCursors,
  parseCursor,
  PitbossClient,
  PitbossError,
  RecentIds,
  refreshDelay,
  type PitbossClientOptions,
  type PitbossMessage,
  type RecoveryEvent,
} from '../src/index.js';
import { FakeWebSocket } from './support/fake-ws.js';
import { sleep, waitFor } from './support/pitboss.js';

describe('backoffDelay', () => {
  const opts = { initialMs: 100, maxMs: 5000, jitter: 1 };

  it('grows exponentially up to maxMs (the ceiling, with no jitter)', () => {
    const none = { ...opts, jitter: 0 };
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 7, 50, 5000].map((a) => backoffDelay(a, none)),
      [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000],
    );
  });

  it('is full jitter: uniform in [0, ceiling) driven by the random source', () => {
    assert.equal(backoffDelay(3, opts, () => 0), 800);
    assert.equal(backoffDelay(3, opts, () => 0.5), 400);
    assert.equal(backoffDelay(3, opts, () => 0.999999), 0);
    assert.equal(backoffDelay(20, opts, () => 0.25), 3750);
    // Half jitter keeps at least half the ceiling.
    assert.equal(backoffDelay(3, { ...opts, jitter: 0.5 }, () => 1), 400);
  });

  it('spreads clients out: many draws differ and all stay within the ceiling', () => {
    const draws = Array.from({ length: 500 }, () => backoffDelay(4, opts));
    assert.ok(draws.every((d) => d >= 0 && d <= 1600), 'within [0, 1600]');
    assert.ok(new Set(draws).size > 100, `distinct delays: ${new Set(draws).size}`);
    assert.ok(Math.min(...draws) < 400 && Math.max(...draws) > 1200, 'covers the range');
  });
});

describe('refreshDelay', () => {
  it('refreshes refreshBeforeMs before expiry, halfway for short tokens, never in a loop', () => {
    assert.equal(refreshDelay(3_600_000, 60_000), 3_540_000);
    assert.equal(refreshDelay(2_500, 2_000), 1_250, 'halfway through a 2.5 s remainder');
    assert.equal(refreshDelay(-5_000, 60_000), 1_000, 'an expired (or skewed) token: not at once');
  });
});

describe('RecentIds', () => {
  it('says a second add of an id is a duplicate', () => {
    const r = new RecentIds(3);
    assert.equal(r.add('a'), true);
    assert.equal(r.add('b'), true);
    assert.equal(r.add('a'), false);
    assert.equal(r.has('b'), true);
    assert.equal(r.size, 2);
  });

  it('holds at most capacity ids, forgetting the oldest', () => {
    const r = new RecentIds(3);
    for (const id of ['a', 'b', 'c', 'd']) {
      r.add(id);
    }
    assert.equal(r.size, 3);
    assert.equal(r.has('a'), false);
    assert.deepEqual(['b', 'c', 'd'].map((id) => r.has(id)), [true, true, true]);
    assert.equal(r.add('a'), true, 'forgotten, so new again');
    assert.equal(r.has('b'), false);
  });

  it('refuses a capacity below 1', () => {
    assert.throws(() => new RecentIds(0), RangeError);
  });
});

describe('cursors', () => {
  it('parse, and refuse what is not a cursor', () => {
    assert.deepEqual([...parseCursor('0=17,1=5,3=-1')!], [
      [0, '17'],
      [1, '5'],
      [3, '-1'],
    ]);
    assert.deepEqual([...parseCursor('')!], []);
    assert.equal(parseCursor('zero=1'), null);
    assert.equal(parseCursor('1'), null);
  });

  it('compare positions as integers of any size', () => {
    assert.equal(comparePositions('9', '10'), -1);
    assert.equal(comparePositions('-1', '0'), -1);
    assert.equal(comparePositions('007', '7'), 0);
    const seq = '49590338271490256608559692538361571095921575989136588898';
    assert.equal(comparePositions(seq, seq.slice(0, -1) + '9'), -1);
  });

  it('merge to the newest position per partition, keeping every partition', () => {
    assert.equal(mergeCursors(null, '3=4'), '3=4');
    assert.equal(mergeCursors('3=10', '3=4'), '3=10', 'never steps back');
    assert.equal(mergeCursors('3=4', '3=10'), '3=10');
    assert.equal(mergeCursors('0=17,1=5', '1=9,2=3'), '0=17,1=9,2=3');
    assert.equal(mergeCursors('2=-1', '2=0'), '2=0');
    assert.equal(mergeCursors('garbage', '1=2'), '1=2');
  });
});

describe('PitbossClient (scripted gateway)', () => {
  let client: PitbossClient | undefined;
  let errors: PitbossError[];

  beforeEach(() => {
    FakeWebSocket.reset();
    errors = [];
  });

  afterEach(async () => {
    await client?.close();
    client = undefined;
  });

  function make(extra: Partial<PitbossClientOptions> = {}): PitbossClient {
    const c = new PitbossClient({
      url: 'ws://gateway.test/v1/ws',
      token: 'static-token',
      WebSocket: FakeWebSocket,
      backoff: { initialMs: 5, maxMs: 20, jitter: 1 },
      heartbeat: false,
      ...extra,
    });
    c.on('error', (e) => errors.push(e));
    client = c;
    return c;
  }

  /** The n-th socket the client opened (1-based), once it exists. */
  async function socketNo(n: number): Promise<FakeWebSocket> {
    await waitFor(`socket ${n}`, () => FakeWebSocket.instances.length >= n, 5000);
    return FakeWebSocket.instances[n - 1]!;
  }

  function message(channel: string, id: string, cursor: string, replayed = false): Record<string, unknown> {
    return {
      type: 'message',
      channel,
      cursor,
      kind: 'push',
      id,
      ...(replayed ? { replayed: true } : {}),
      data: { push_id: id, title: `t-${id}` },
    };
  }

  it('sends the token as a subprotocol, not in the URL, and resolves connect() on welcome', async () => {
    const c = make();
    const connected = c.connect();
    const ws = await socketNo(1);
    assert.equal(ws.token, 'static-token');
    ws.accept();
    const w = await connected;
    assert.equal(w.tenant, 'demo');
    assert.equal(c.state, 'open');
  });

  it('delivers a message id once even when the gateway sends it again', async () => {
    const c = make();
    const got: PitbossMessage[] = [];
    c.subscribe('player:demo:p1', (m) => got.push(m));
    void c.connect();
    const ws = await socketNo(1);
    ws.accept();
    const sub = ws.sentOf('subscribe')[0]!;
    ws.frame({ type: 'subscribed', id: sub.id, channel: 'player:demo:p1', cursor: '2=-1', recovery: 'none', replayed: 0 });
    ws.frame(message('player:demo:p1', 'm1', '2=0'));
    ws.frame(message('player:demo:p1', 'm2', '2=1'));
    ws.frame(message('player:demo:p1', 'm1', '2=0', true));
    ws.frame(message('player:demo:p1', 'm3', '2=2'));
    assert.deepEqual(got.map((m) => m.id), ['m1', 'm2', 'm3']);
    assert.equal(c.cursor('player:demo:p1'), '2=2');
  });

  it('resubscribes with since = the newest cursor after a drop, and drops replayed duplicates', async () => {
    const c = make();
    const got: PitbossMessage[] = [];
    const recoveries: RecoveryEvent[] = [];
    c.on('recovery', (r) => recoveries.push(r));
    c.subscribe('player:demo:p1', (m) => got.push(m));
    void c.connect();
    let ws = await socketNo(1);
    ws.accept();
    ws.frame({ type: 'subscribed', id: ws.sentOf('subscribe')[0]!.id, channel: 'player:demo:p1', cursor: '2=-1', recovery: 'none', replayed: 0 });
    ws.frame(message('player:demo:p1', 'm1', '2=0'));
    ws.frame({ type: 'cursor', channel: 'player:demo:p1', cursor: '2=5' });
    ws.drop(1006);
    ws = await socketNo(2);
    ws.accept({ connection: 'fake-2' });
    const resub = ws.sentOf('subscribe')[0]!;
    assert.equal(resub.since, '2=5');
    // A gateway whose feed is behind the client confirms an older cursor: kept at the newest.
    ws.frame(message('player:demo:p1', 'm1', '2=0', true));
    ws.frame(message('player:demo:p1', 'm2', '2=6', true));
    ws.frame({ type: 'subscribed', id: resub.id, channel: 'player:demo:p1', cursor: '2=3', recovery: 'complete', replayed: 2 });
    assert.deepEqual(got.map((m) => [m.id, m.replayed]), [
      ['m1', false],
      ['m2', true],
    ]);
    assert.equal(c.cursor('player:demo:p1'), '2=6');
    assert.deepEqual(
      recoveries.map((r) => [r.recovery, r.resumed, r.since]),
      [
        ['none', false, undefined],
        ['complete', true, '2=5'],
      ],
    );
  });

  it('on invalid_cursor subscribes afresh and reports too_old', async () => {
    const c = make();
    const recoveries: RecoveryEvent[] = [];
    c.on('recovery', (r) => recoveries.push(r));
    c.subscribe('player:demo:p1', () => undefined, { since: '9=3' });
    void c.connect();
    const ws = await socketNo(1);
    ws.accept();
    const first = ws.sentOf('subscribe')[0]!;
    assert.equal(first.since, '9=3');
    ws.frame({ type: 'error', id: first.id, code: 'invalid_cursor', message: 'since: partition 9: the topic has 8' });
    const second = ws.sentOf('subscribe')[1]!;
    assert.equal(second.since, undefined);
    ws.frame({ type: 'subscribed', id: second.id, channel: 'player:demo:p1', cursor: '2=7', recovery: 'none', replayed: 0 });
    assert.equal(recoveries.length, 1);
    assert.equal(recoveries[0]!.recovery, 'too_old');
    assert.equal(c.cursor('player:demo:p1'), '2=7');
  });

  it('retries an ack after a reconnect with the same ack_id', async () => {
    const c = make();
    void c.connect();
    let ws = await socketNo(1);
    ws.accept({ role: 'operator', subject: 'ops' });
    const alertId = '0193a1b2-0000-7000-8000-000000000001';
    const acked = c.ack(alertId, 'confirmed', 'called the player');
    const first = ws.sentOf('ack')[0]!;
    assert.match(String(first.ack_id), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(first.outcome, 'confirmed');
    ws.drop(1012, 'gateway restarting: reconnect');
    ws = await socketNo(2);
    ws.accept({ role: 'operator', subject: 'ops' });
    const retry = ws.sentOf('ack')[0]!;
    assert.equal(retry.ack_id, first.ack_id);
    assert.notEqual(retry.id, first.id);
    ws.frame({ type: 'acked', id: retry.id, alert_id: alertId, ack_id: retry.ack_id });
    assert.deepEqual(await acked, { alertId, ackId: first.ack_id });
  });

  it('retries an ack answered bus_unavailable, and rejects other errors with their code', async () => {
    const c = make();
    void c.connect();
    const ws = await socketNo(1);
    ws.accept({ role: 'operator' });
    const ok = c.ack('0193a1b2-0000-7000-8000-000000000002');
    const a1 = ws.sentOf('ack')[0]!;
    ws.frame({ type: 'error', id: a1.id, code: 'bus_unavailable', message: 'retry' });
    await waitFor('the retried ack', () => ws.sentOf('ack').length === 2);
    const a2 = ws.sentOf('ack')[1]!;
    assert.equal(a2.ack_id, a1.ack_id);
    ws.frame({ type: 'acked', id: a2.id, alert_id: a2.alert_id, ack_id: a2.ack_id });
    await ok;
    const bad = c.ack('not-a-uuid');
    const a3 = ws.sentOf('ack')[2]!;
    ws.frame({ type: 'error', id: a3.id, code: 'invalid_ack', message: 'alert_id: expected a UUID' });
    await assert.rejects(bad, (e: PitbossError) => e.code === 'invalid_ack' && e.requestId === a3.id);
  });

  it('paces acks: a first burst at once, the rest as turns come, all of them sent', async () => {
    const c = make({ ackRate: { perSecond: 40, burst: 3 } });
    void c.connect();
    const ws = await socketNo(1);
    ws.accept({ role: 'operator' });
    const ids = Array.from({ length: 8 }, (_, i) => `0193a1b2-0000-7000-8000-00000000010${i}`);
    const acks = ids.map((id) => c.ack(id));
    assert.equal(ws.sentOf('ack').length, 3, 'the burst, no more at once');
    await waitFor('every ack sent', () => ws.sentOf('ack').length === 8, 5000);
    for (const a of ws.sentOf('ack')) {
      ws.frame({ type: 'acked', id: a.id, alert_id: a.alert_id, ack_id: a.ack_id });
    }
    const done = await Promise.all(acks);
    assert.deepEqual(
      done.map((d) => d.alertId),
      ids,
    );
  });

  it('reports an ack once, and on a resume only for an alert it delivered', async () => {
    const c = make();
    const acked: string[] = [];
    c.on('alertAcked', (a) => acked.push(`${a.alertId} ${a.ackId}`));
    c.subscribe('operator:demo', () => {});
    void c.connect();
    let ws = await socketNo(1);
    ws.accept({ role: 'operator' });
    ws.frame({ type: 'subscribed', id: ws.sentOf('subscribe')[0]!.id, channel: 'operator:demo', cursor: '0=-1', recovery: 'none', replayed: 0 });
    const alert = (id: string, cursor: string): Record<string, unknown> => ({
      type: 'message', channel: 'operator:demo', cursor, kind: 'alert', id, data: { alert_id: id },
    });
    const ackFrame = (alertId: string, ackId: string): Record<string, unknown> => ({
      type: 'alert_acked', channel: 'operator:demo', alert_id: alertId, ack_id: ackId,
      outcome: 'confirmed', operator_id: 'dora', acked_at: '2026-12-06T04:00:00Z',
    });
    ws.frame(alert('a1', '0=0'));
    ws.frame(alert('a2', '0=1'));
    // Live: a1 acknowledged by a colleague.
    ws.frame(ackFrame('a1', 'k1'));
    ws.drop(1006);
    ws = await socketNo(2);
    ws.accept({ role: 'operator', connection: 'fake-2' });
    const resub = ws.sentOf('subscribe')[0]!;
    assert.equal(resub.since, '0=1');
    // The resume: the acks of every alert before the cursor — a1's again, a2's (missed while
    // away), and a0's, an alert this client never delivered.
    ws.frame(ackFrame('a1', 'k1'));
    ws.frame(ackFrame('a2', 'k2'));
    ws.frame(ackFrame('a0', 'k0'));
    ws.frame({ type: 'subscribed', id: resub.id, channel: 'operator:demo', cursor: '0=1', recovery: 'complete', replayed: 0 });
    assert.deepEqual(acked, ['a1 k1', 'a2 k2']);
  });

  it('refuses a subscribe over 16 KiB at once, and keeps nothing of it', async () => {
    const c = make();
    assert.throws(
      () => c.subscribe('room:demo:' + 'y'.repeat(17_000), () => {}),
      (e: PitbossError) => e.code === 'frame_too_large',
    );
    assert.deepEqual(c.channels(), []);
  });

  it('connects with getToken tokens when its clock runs ahead of the issuer (no loop)', async () => {
    // The issuer's clock is 10 minutes behind this one: its 5-minute tokens look expired here.
    const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const issuerNow = Math.floor(Date.now() / 1000) - 600;
    let calls = 0;
    const c = make({
      token: undefined,
      getToken: async () => {
        calls += 1;
        return `${b64({ alg: 'HS256' })}.${b64({ sub: 'ops', iat: issuerNow, exp: issuerNow + 300 })}.sig`;
      },
    });
    void c.connect();
    const ws = await socketNo(1);
    ws.accept({ role: 'operator' });
    await waitFor('open', () => c.state === 'open', 5000);
    assert.equal(calls, 1);
    assert.deepEqual(errors, []);
  });

  it('does not send a request over 16 KiB (the gateway would close with 1009)', async () => {
    const c = make();
    void c.connect();
    const ws = await socketNo(1);
    ws.accept({ role: 'operator' });
    await assert.rejects(
      c.ack('0193a1b2-0000-7000-8000-000000000003', 'acknowledged', 'x'.repeat(17_000)),
      (e: PitbossError) => e.code === 'frame_too_large',
    );
    assert.equal(ws.sentOf('ack').length, 0);
  });

  for (const [code, expected] of [
    [1008, 'policy_violation'],
    [1009, 'frame_too_large'],
  ] as const) {
    it(`surfaces a ${code} close as an error and does not reconnect`, async () => {
      const c = make();
      const closes: number[] = [];
      c.on('close', (e) => closes.push(e.code));
      void c.connect().catch(() => undefined);
      const ws = await socketNo(1);
      ws.accept();
      ws.drop(code, 'too many invalid requests');
      assert.equal(c.state, 'closed');
      assert.deepEqual(
        errors.map((e) => [e.code, e.closeCode]),
        [[expected, code]],
      );
      assert.deepEqual(closes, [code]);
      // Far longer than the backoff (5-20 ms): no new connection is made.
      await sleep(200);
      assert.equal(FakeWebSocket.instances.length, 1);
      // The application may try again; subscriptions and cursors are kept.
      const again = c.connect();
      (await socketNo(2)).accept();
      await again;
      assert.equal(FakeWebSocket.instances.length, 2);
    });
  }

  it('on 4001 gets a fresh token with getToken and reconnects', async () => {
    let n = 0;
    const c = make({ token: undefined, getToken: async () => `token-${++n}`, autoRefresh: false });
    void c.connect();
    let ws = await socketNo(1);
    assert.equal(ws.token, 'token-1');
    ws.accept();
    await sleep(1100); // a connection that lasted: reconnect at once
    ws.frame({ type: 'error', code: 'token_expired', message: 'the token expired' });
    ws.drop(4001, 'token expired');
    ws = await socketNo(2);
    assert.equal(ws.token, 'token-2');
    ws.accept();
    assert.equal(c.state, 'open');
    assert.deepEqual(errors, [], 'a handled 4001 is not an error');
  });

  it('on 4001 without getToken stops with token_expired', async () => {
    const c = make();
    void c.connect().catch(() => undefined);
    const ws = await socketNo(1);
    ws.accept();
    ws.drop(4001, 'token expired');
    assert.equal(c.state, 'closed');
    assert.equal(errors[0]?.code, 'token_expired');
    await sleep(100);
    assert.equal(FakeWebSocket.instances.length, 1);
  });

  it('drops a refused subscription and tells its onError and the error event', async () => {
    const c = make();
    const refused: PitbossError[] = [];
    c.subscribe('player:demo:p2', () => assert.fail('no message expected'), { onError: (e) => refused.push(e) });
    void c.connect();
    const ws = await socketNo(1);
    ws.accept();
    const sub = ws.sentOf('subscribe')[0]!;
    ws.frame({ type: 'error', id: sub.id, code: 'forbidden', message: 'the token does not allow player:demo:p2' });
    assert.equal(refused[0]?.code, 'forbidden');
    assert.equal(refused[0]?.channel, 'player:demo:p2');
    assert.equal(errors[0]?.code, 'forbidden');
    assert.deepEqual(c.channels(), []);
  });

  it('forgets a room the gateway unsubscribed after a refresh', async () => {
    const c = make();
    const ended: string[] = [];
    c.on('unsubscribed', (u) => ended.push(u.channel));
    c.subscribe('room:demo:vip', () => undefined);
    void c.connect();
    const ws = await socketNo(1);
    ws.accept();
    ws.frame({ type: 'unsubscribed', channel: 'room:demo:vip', reason: 'the refreshed token does not allow it' });
    assert.deepEqual(ended, ['room:demo:vip']);
    assert.deepEqual(c.channels(), []);
  });

  it('unsubscribes on the wire when the last handler goes', async () => {
    const c = make();
    void c.connect();
    const ws = await socketNo(1);
    ws.accept();
    const off1 = c.subscribe('room:demo:a', () => undefined);
    const off2 = c.subscribe('room:demo:a', () => undefined);
    assert.equal(ws.sentOf('subscribe').length, 1, 'one subscription per channel');
    off1();
    assert.equal(ws.sentOf('unsubscribe').length, 0);
    off2();
    assert.deepEqual(ws.sentOf('unsubscribe').map((f) => f.channel), ['room:demo:a']);
  });

  it('drops a connection that stops answering (heartbeat) and reconnects', async () => {
    const c = make({ heartbeat: { intervalMs: 20, timeoutMs: 30 } });
    const closes: string[] = [];
    c.on('close', (e) => closes.push(e.reason));
    void c.connect();
    (await socketNo(1)).accept(); // then never answers the pings
    await waitFor('a second socket', () => FakeWebSocket.instances.length === 2);
    assert.match(closes[0] ?? '', /heartbeat/);
  });

  it('gives up an attempt that gets no welcome and tries again', async () => {
    const c = make({ connectTimeoutMs: 50 });
    void c.connect();
    const first = await socketNo(1);
    first.readyState = 1; // open, but the welcome never comes
    first.onopen?.({});
    const second = await socketNo(2);
    assert.equal(first.closedByClient?.code, 4000);
    second.accept();
    assert.equal(c.state, 'open');
  });

  it('rejects what waits with closed on close()', async () => {
    const c = make();
    void c.connect();
    (await socketNo(1)).accept();
    const pending = c.ping();
    await c.close();
    await assert.rejects(pending, (e: PitbossError) => e.code === 'closed');
    await assert.rejects(c.ack('0193a1b2-0000-7000-8000-000000000004'), (e: PitbossError) => e.code === 'closed');
  });
});
