// The operator console (served by the gateway at /console) in headless Chromium against a real
// `pitboss up --demo`: the page loads with no console errors, the alert feed fills from the
// simulator within seconds, an acknowledgement round-trips to storage (`alert_acks` in the
// embedded store), the figures fill in, bad tokens are refused with a message; a screenshot is
// saved under target/artifacts/ for CI.
//
// Needs: PITBOSS_BIN (a built `pitboss`), Debian `chromium` (CHROMIUM_BIN to override).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { copyFileSync, mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const PITBOSS_BIN = process.env.PITBOSS_BIN || '/var/cache/pitboss/target/debug/pitboss';
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARTIFACTS = resolve(HERE, '../../target/artifacts');

function childEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('PITBOSS_') && k !== 'RUST_LOG') env[k] = v;
  }
  env.RUST_LOG = 'warn';
  return env;
}

function run(args) {
  return new Promise((res, rej) => {
    execFile(PITBOSS_BIN, args, { env: childEnv() }, (err, stdout, stderr) => {
      if (err) rej(new Error(`pitboss ${args.join(' ')}: ${err.message}\n${stderr}`));
      else res(stdout);
    });
  });
}

async function sql(dataDir, query) {
  const out = await run(['sql', '--data-dir', dataDir, '--format', 'json', query]);
  return out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

async function eventually(what, fn, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

let up;
let dataDir;
let rulesDir;
let consoleUrl;
let gatewayBase;
let browser;
let stderr = '';

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'pitboss-console-'));
  // A rules directory (the shipped packs), whose lists the console's Block button changes.
  rulesDir = join(dataDir, 'rules');
  mkdirSync(rulesDir);
  for (const f of ['fraud.toml', 'responsible_gambling.toml', 'scoring.toml']) {
    copyFileSync(resolve(HERE, '../../rules', f), join(rulesDir, f));
  }
  up = spawn(
    PITBOSS_BIN,
    [
      'up', '--demo', '--seed', '7', '--demo-rate', '300', '--demo-players', '3000', '--demo-risky-share', '0.2',
      '--rules', rulesDir,
      '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--gateway-listen', '127.0.0.1:0',
    ],
    { env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
  );
  up.stderr.on('data', (d) => (stderr += d));
  const lines = createInterface({ input: up.stdout });
  consoleUrl = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`pitboss up printed no console link\n${stderr}`)), 60_000);
    up.once('exit', (code) => rej(new Error(`pitboss up exited (${code})\n${stderr}`)));
    lines.on('line', (line) => {
      const m = /console: (http:\/\/\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        res(m[1]);
      }
    });
  });
  gatewayBase = new URL(consoleUrl).origin;
  browser = await chromium.launch({
    executablePath: CHROMIUM_BIN,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
});

after(async () => {
  await browser?.close();
  if (up && up.exitCode === null) {
    const exited = new Promise((r) => up.once('exit', (code, signal) => r({ code, signal })));
    up.kill('SIGTERM');
    // The demo stops with the rest: a clean drain and exit 0.
    assert.deepEqual(await exited, { code: 0, signal: null }, stderr);
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

function watchErrors(page) {
  const errors = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => errors.push(`page: ${e.message}`));
  return errors;
}

test('the console fills with live alerts and an acknowledgement reaches storage', async () => {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = watchErrors(page);
  // The socket's URL carries no token (proxies and load balancers log URLs): it goes as a
  // subprotocol.
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(consoleUrl);
  // The token leaves the address bar (and history) at once.
  assert.equal(new URL(page.url()).hash, '');
  await page.getByTestId('status').filter({ hasText: 'live' }).waitFor({ timeout: 30_000 });
  assert.equal(await page.getByTestId('tenant').textContent(), 'demo');
  assert.ok(sockets.length >= 1, 'a socket opened');
  for (const url of sockets) {
    assert.equal(new URL(url).search, '', `no token in the socket's URL: ${url}`);
  }

  // The simulator injects a pattern every few hundred milliseconds at this rate.
  const alerts = page.locator('#alerts li.alert');
  await eventually('three alerts in the feed', async () => (await alerts.count()) >= 3, 60_000);
  // New alerts come on top as they arrive: pin one card by its id.
  const alertId = await alerts.first().getAttribute('data-alert-id');
  const first = page.locator(`#alerts li[data-alert-id="${alertId}"]`);
  const reason = await first.locator('.why').textContent();
  assert.ok(reason && reason.length > 10, `an alert says why: ${reason}`);
  // A second console of the same tenant, open at the same time.
  const other = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const otherErrors = watchErrors(other);
  await other.goto(consoleUrl);
  await other.getByTestId('status').filter({ hasText: 'live' }).waitFor({ timeout: 30_000 });
  const otherCard = other.locator(`#alerts li[data-alert-id="${alertId}"]`);
  await otherCard.waitFor({ timeout: 30_000 });

  // Acknowledge it as a false positive: the gateway answers `acked` once it is on the bus, and
  // the card says which outcome was recorded…
  await first.getByRole('button', { name: 'False positive' }).click();
  await first.locator('.ack-status', { hasText: 'false positive' }).waitFor({ timeout: 30_000 });
  assert.match(await first.getAttribute('class'), /acked/);
  // …with the command that snoozes its rule for the alert's key, to copy (docs/rules.md).
  const rule = await first.getAttribute('data-rule');
  assert.equal(
    await first.locator('.snooze-hint code').textContent(),
    `pitboss rules snooze --rules DIR --alert ${alertId} --for 30d --reason "…"`,
  );
  const groupBy = (await first.getAttribute('data-group-by')).replace(/_/g, ' ');
  assert.ok(groupBy, 'the card knows what its alert is grouped by');
  assert.ok((await first.locator('.snooze-hint').textContent()).startsWith(`To silence ${rule} for this ${groupBy}: `));
  // …the other console hears of it at once, with who…
  await otherCard.locator('.ack-status', { hasText: 'false positive by console' }).waitFor({ timeout: 30_000 });
  assert.match(await otherCard.getAttribute('class'), /acked/);
  // The outcome recorded is the one button off: the conclusion can still change.
  assert.equal(await otherCard.getByRole('button', { name: 'False positive' }).isDisabled(), true);
  assert.equal(await otherCard.getByRole('button', { name: 'Confirm' }).isDisabled(), false);
  // …and the processor stores it.
  const rows = await eventually('the ack in alert_acks', async () => {
    const r = await sql(dataDir, `SELECT alert_id, outcome, operator_id, ack_id FROM alert_acks WHERE alert_id = '${alertId}'`);
    return r.length > 0 ? r : null;
  });
  // Changed on second thoughts: escalated. A new ack (its own id) that supersedes the first;
  // both consoles say what it replaced, and the store's latest ack of the alert is it.
  await first.getByRole('button', { name: 'Escalate' }).click();
  await first.locator('.ack-status', { hasText: /^escalated by console at .+ \(was false positive by console\)$/ }).waitFor({ timeout: 30_000 });
  await otherCard.locator('.ack-status', { hasText: /^escalated by console at .+ \(was false positive by console\)$/ }).waitFor({ timeout: 30_000 });
  assert.equal(await first.getByRole('button', { name: 'Escalate' }).isDisabled(), true);
  assert.equal(await first.getByRole('button', { name: 'False positive' }).isDisabled(), false);
  assert.equal(await first.locator('.snooze-hint').count(), 0, 'no longer a false positive: no hint');
  assert.deepEqual(otherErrors, []);
  await other.close();
  const latest = await eventually('the second ack in alert_acks', async () => {
    const r = await sql(dataDir, `SELECT outcome, ack_id FROM alert_acks WHERE alert_id = '${alertId}' ORDER BY acked_at_ms DESC, ack_id DESC`);
    return r.length === 2 ? r : null;
  });
  assert.equal(latest[0].outcome, 'escalated');
  assert.notEqual(latest[0].ack_id, rows[0].ack_id, 'another outcome is another ack');
  const ackId = rows[0].ack_id;
  assert.match(ackId, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'the console chooses a UUIDv7');
  delete rows[0].ack_id;
  assert.deepEqual(rows, [{ alert_id: alertId, outcome: 'false_positive', operator_id: 'console' }]);

  // A finding on a shared device, confirmed: the card gives the command that puts the device
  // on the tenant's block list (docs/rules.md, "Lists"); concluded otherwise, it goes.
  const unconcluded = page.locator('#alerts li.alert[data-group-by="device"]:not(.acked)').first();
  await unconcluded.waitFor({ timeout: 120_000 });
  // Pinned by its id (once concluded, the selector above no longer finds it).
  const device = page.locator(`#alerts li[data-alert-id="${await unconcluded.getAttribute('data-alert-id')}"]`);
  const deviceKey = await device.getAttribute('data-group-key');
  assert.ok(deviceKey, 'the card knows its key');
  await device.getByRole('button', { name: 'Confirm' }).click();
  const blockHint = device.locator('.block-hint');
  await blockHint.waitFor({ timeout: 30_000 });
  assert.equal(
    await blockHint.locator('code').textContent(),
    `pitboss rules list add --rules DIR --list blocked_devices --tenant demo ${deviceKey}`,
  );
  assert.ok((await blockHint.textContent()).startsWith('To block this device for tenant demo: '));
  assert.equal(await device.locator('.snooze-hint').count(), 0);
  // This gateway runs beside the rules directory: the Block button puts the device on the
  // tenant's list itself (POST /v1/lists/blocked_devices/add), in the directory's lists.toml.
  await blockHint.getByRole('button', { name: 'Block' }).click();
  await eventually('the block answered', async () => /^(blocked|not blocked)/.test(await blockHint.locator('.block-status').textContent()), 30_000);
  assert.equal(
    await blockHint.locator('.block-status').textContent(),
    'blocked: added 1 value to list blocked_devices for tenant "demo": lists.toml',
  );
  assert.ok(await blockHint.getByRole('button', { name: 'Block' }).isDisabled(), 'done: the button stays off');
  const lists = readFileSync(join(rulesDir, 'lists.toml'), 'utf8');
  assert.ok(lists.includes('name = "blocked_devices"\ntenant = "demo"') && lists.includes(JSON.stringify(deviceKey)), lists);
  await device.getByRole('button', { name: 'False positive' }).click();
  await device.locator('.snooze-hint').waitFor({ timeout: 30_000 });
  assert.equal(await device.locator('.block-hint').count(), 0, 'no longer confirmed: no block hint');
  // And the Snooze button silences the card's rule for its device, in snoozes.toml, by the
  // console's operator (POST /v1/snoozes, docs/gateway.md "Snoozes").
  const deviceRule = await device.getAttribute('data-rule');
  await device.locator('.snooze-hint').getByRole('button', { name: 'Snooze 30 days' }).click();
  const snoozed = device.locator('.snooze-hint .snooze-status');
  await eventually('the snooze answered', async () => /^(snoozed|not snoozed)/.test(await snoozed.textContent()), 30_000);
  assert.match(
    await snoozed.textContent(),
    new RegExp(`^snoozed: snoozed ${deviceRule.replace(/\./g, '\\.')} for tenant "demo", key ${JSON.stringify(deviceKey)}, until \\S+: snoozes\\.toml:\\d+$`),
  );
  const snoozes = readFileSync(join(rulesDir, 'snoozes.toml'), 'utf8');
  assert.ok(snoozes.includes(`key = ${JSON.stringify(deviceKey)}`) && snoozes.includes('by = "console"') && snoozes.includes(`alert = "${await device.getAttribute('data-alert-id')}"`), snoozes);

  // The figures fill in from /v1/stats: events/s, GGR by game, time to notify.
  await eventually('events/s', async () => /\d/.test(await page.getByTestId('events-per-second').textContent()));
  await eventually('GGR rows', async () => (await page.locator('#ggr tbody tr').count()) > 0);
  await eventually('time to notify', async () => /ms$/.test(await page.getByTestId('time-to-notify').textContent()));
  await eventually('a push to a player', async () => (await page.locator('#pushes li').count()) > 0);

  // A reload keeps the session (the tab's storage) and replays the unacknowledged alerts.
  await page.reload();
  await page.getByTestId('status').filter({ hasText: 'live' }).waitFor({ timeout: 30_000 });
  await eventually('alerts after a reload', async () => (await alerts.count()) >= 1, 30_000);
  assert.equal(await page.locator(`#alerts li[data-alert-id="${alertId}"]`).count(), 0, 'the acknowledged alert is not redelivered');
  // The replay comes partition by partition; the feed is newest first all the same.
  const times = (await alerts.evaluateAll((cards) => cards.map((c) => Number(c.dataset.detected))));
  assert.deepEqual(times, [...times].sort((a, b) => b - a), 'cards in detection order, newest first');
  assert.match(await page.locator('#alert-count').textContent(), /^\(\d+ open\)$/);
  assert.equal(await alerts.first().getByRole('button', { name: 'Escalate' }).count(), 1);
  // Amounts with their currency's digits (the GGR table divided every currency by 100).
  assert.deepEqual(
    await page.evaluate(() => { const { amount } = window.pitbossConsole; return [amount(15000, 'JPY'), amount(15000, 'KWD'), amount(15000, 'EUR'), amount(15000, 'HUF')]; }),
    ['15,000', '15.000', '150.00', '150.00'],
  );

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, 'console.png'), fullPage: true });

  // A resume that is not complete (away longer than the gateway's history) replays every alert
  // still open: a card it leaves out was closed meanwhile by another operator, and says so
  // (it stayed open with live buttons).
  const resumed = await page.evaluate(() => {
    const { state, onFrame } = window.pitbossConsole;
    const card = document.querySelector('#alerts li.alert:not(.acked)');
    state.replayed = new Set(); // a subscribe whose replay did not hold this card
    onFrame({ type: 'subscribed', channel: 'operator:demo', cursor: state.cursor, recovery: 'too_old', replayed: 0 });
    return [card.classList.contains('acked'), card.querySelector('.ack-status').textContent];
  });
  assert.deepEqual(resumed, [true, 'closed while this console was away']);
  // Sent again as open (a replay cut short, an instance a moment behind): open again.
  const reopened = await page.evaluate(() => {
    const { addAlert, onFrame, state } = window.pitbossConsole;
    const [id, card] = [...state.alerts].find(([, c]) => c.dataset.away === '1');
    addAlert({ alert_id: id });
    const open = [card.classList.contains('acked'), card.querySelector('button').disabled];
    // (closed for the steps below)
    onFrame({ type: 'alert_acked', channel: 'operator:demo', alert_id: id, ack_id: 'x', outcome: 'acknowledged', operator_id: 'test', acked_at: new Date().toISOString() });
    return open;
  });
  assert.deepEqual(reopened, [false, false]);
  // Past the cards kept, the oldest open alerts are counted, not dropped without a word.
  const header = await page.evaluate(() => {
    const { addAlert } = window.pitbossConsole;
    const t0 = Date.parse('2026-01-01T00:00:00Z');
    for (let i = 0; i < 1005; i++) {
      addAlert({ alert_id: 'synthetic-' + i, rule_id: 'test.rule', severity: 'low', detected_at: new Date(t0 + i * 1000).toISOString(), player_id: 'p' + i, score: 1, total_score: 1, recommendation: 'review', reason: 'synthetic' });
    }
    return document.getElementById('alert-count').textContent;
  });
  assert.equal(header, '(1005 open; the 5 oldest not shown)');
  // Two operators who conclude differently both see it: the later ack says what it replaced.
  const changed = await page.evaluate(() => {
    const { addAlert, onFrame, state } = window.pitbossConsole;
    addAlert({ alert_id: 'conflict-1', rule_id: 'test.rule', severity: 'low', detected_at: new Date().toISOString(), player_id: 'p', score: 1, total_score: 1, recommendation: 'review', reason: 'synthetic' });
    const acked = (outcome, by) => ({ type: 'alert_acked', channel: 'operator:demo', alert_id: 'conflict-1', ack_id: by, outcome, operator_id: by, acked_at: new Date().toISOString() });
    onFrame(acked('confirmed', 'opA'));
    onFrame(acked('false_positive', 'opB'));
    return state.alerts.get('conflict-1').querySelector('.ack-status').textContent;
  });
  assert.match(changed, /^false positive by opB at .+ \(was confirmed by opA\)$/);
  // An ack stored whose answer was lost (the connection dropped) and heard of on resume: its
  // id is forgotten, so choosing that outcome again after a change is a new ack, not a retry
  // the gateway would answer without storing; a card closed while away offers no change.
  const afterLoss = await page.evaluate(() => {
    const { addAlert, onFrame, state } = window.pitbossConsole;
    addAlert({ alert_id: 'lost-1', rule_id: 'test.rule', severity: 'low', detected_at: new Date().toISOString(), player_id: 'p', score: 1, total_score: 1, recommendation: 'review', reason: 'synthetic' });
    state.ackIds.set('lost-1 false_positive', 'stored-before-the-drop');
    onFrame({ type: 'alert_acked', channel: 'operator:demo', alert_id: 'lost-1', ack_id: 'stored-before-the-drop', outcome: 'false_positive', operator_id: 'console', acked_at: new Date().toISOString() });
    const card = state.alerts.get('lost-1');
    const off = [...card.querySelectorAll('button')].filter((b) => b.disabled).map((b) => b.dataset.outcome);
    return [state.ackIds.has('lost-1 false_positive'), off];
  });
  assert.deepEqual(afterLoss, [false, ['false_positive']]);
  assert.deepEqual(errors, []);
  await page.close();
});

test('the console refuses tokens it cannot use, with a reason', async () => {
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await page.goto(`${gatewayBase}/console`);
  await page.locator('#login').waitFor({ state: 'visible' });
  const tokenBox = page.getByLabel('operator token');

  await tokenBox.fill('not-a-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  assert.match(await page.locator('#login-error').textContent(), /not a JWT/);

  const player = (await run(['token', '--data-dir', dataDir, '--role', 'player', '--subject', 'p-000001'])).trim();
  await tokenBox.fill(player);
  await page.getByRole('button', { name: 'Sign in' }).click();
  assert.match(await page.locator('#login-error').textContent(), /not an operator/);

  // Signed by another key: the gateway refuses it and the console says so.
  const parts = (await run(['token', '--data-dir', dataDir, '--role', 'operator', '--subject', 'ops'])).trim().split('.');
  const forged = `${parts[0]}.${parts[1]}.${'A'.repeat(43)}`;
  const before = errors.length;
  await tokenBox.fill(forged);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#login-error', { hasText: 'refused' }).waitFor({ timeout: 15_000 });
  // The browser logs the refused WebSocket handshake and request itself (wording varies by
  // version); those are the refusal, not faults of the page.
  const refusals = errors.splice(before);
  assert.ok(refusals.every((e) => /401|Authentication failed|v1\/ws|v1\/stats/.test(e)), refusals.join('\n'));

  const operator = (await run(['token', '--data-dir', dataDir, '--role', 'operator', '--subject', 'ops', '--tenant', 'northbet'])).trim();
  await tokenBox.fill(operator);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByTestId('status').filter({ hasText: 'live' }).waitFor({ timeout: 30_000 });
  assert.equal(await page.getByTestId('tenant').textContent(), 'northbet');
  assert.deepEqual(errors, []);
  await page.close();
});
