// Pitboss operator console: alerts live over the gateway's WebSocket (protocol v1,
// docs/gateway.md) with acknowledgements, and the tenant's figures from /v1/stats.
// Plain browser JavaScript, no build step; every value from the server is set as text.

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'pitboss.console.token';
// Cards kept: acknowledged ones go first; past this many open ones, the oldest are counted in
// the header instead of shown (the gateway keeps up to 10,000 open per tenant).
const MAX_ALERTS = 1000;

const state = {
  token: null,
  claims: null,
  ws: null,
  cursor: null,
  attempt: 0,
  nextId: 1,
  pendingAcks: new Map(), // request id -> { alertId, outcome }
  ackIds: new Map(), // alert id + outcome -> ack_id (a retry is the same ack; another outcome is a new one)
  alerts: new Map(), // alert id -> element
  hidden: new Set(), // open alerts past MAX_ALERTS, not shown
  replayed: null, // during a subscribe: the ids of the alerts it replays
  statsTimer: null,
  lists: false, // the gateway changes lists (/v1/stats `lists`): the Block button
  snoozes: false, // and snoozes (`snoozes`): the Snooze button
  reconnectTimer: null,
  stopped: false,
};

function decodeClaims(token) {
  const parts = token.split('.');
  if (parts.length !== 3) throw new Error('not a JWT (expected three dot-separated parts)');
  const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
  const json = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  const claims = JSON.parse(json);
  if (claims.role !== 'operator') throw new Error('this token is for a ' + claims.role + ', not an operator');
  if (typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now()) throw new Error('this token has expired');
  return claims;
}

// A currency's minor-unit digits as the platform counts amounts (ISO 4217, the same table as
// crates/model/src/currency.rs, kept equal by a test in edge-gateway/src/console.rs): 2 unless
// listed. Not the browser's display digits, which differ for HUF, COP, IDR, IQD and others.
const MINOR_DIGITS = {
  BIF: 0, CLP: 0, DJF: 0, GNF: 0, ISK: 0, JPY: 0, KMF: 0, KRW: 0, PYG: 0, RWF: 0, UGX: 0, UYI: 0, VND: 0, VUV: 0, XAF: 0, XOF: 0, XPF: 0,
  XAU: 0, XAG: 0, XPD: 0, XPT: 0, XDR: 0, XBA: 0, XBB: 0, XBC: 0, XBD: 0, XSU: 0, XUA: 0,
  BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3,
  CLF: 4, UYW: 4,
};

function exponent(currency) {
  return MINOR_DIGITS[currency] ?? 2;
}

// An amount in minor units, in major units with the currency's own digits.
function amount(minor, currency) {
  const digits = currency ? exponent(currency) : 2;
  return (Number(minor) / 10 ** digits).toLocaleString(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

// Today's times as the time of day; older ones with their date; the zone is the browser's
// (the title gives the UTC instant).
function time(ms) {
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

// A UUIDv7 (RFC 9562): time-ordered, as docs/alerts.md says the console's ack ids are.
function uuidv7() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function setStatus(text, live) {
  const s = $('status');
  s.textContent = text;
  s.classList.toggle('live', !!live);
  // Figures and alerts shown while the gateway is away are the last known, not current.
  $('app').classList.toggle('stale', !live);
}

const OUTCOMES = { acknowledged: 'acknowledged', false_positive: 'false positive', confirmed: 'confirmed', escalated: 'escalated' };

// ------------------------------------------------------------------ sign in / out

function showLogin(message) {
  $('app').hidden = true;
  $('who').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
}

function signIn(token) {
  let claims;
  try {
    claims = decodeClaims(token.trim());
  } catch (e) {
    showLogin('Cannot use this token: ' + e.message);
    return;
  }
  state.token = token.trim();
  state.claims = claims;
  state.stopped = false;
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $('login').hidden = true;
  $('app').hidden = false;
  $('who').hidden = false;
  $('tenant').textContent = claims.tenant;
  $('operator').textContent = claims.sub;
  connect();
  pollStats();
}

function signOut(message) {
  state.stopped = true;
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(state.statsTimer);
  clearTimeout(state.reconnectTimer);
  if (state.ws) state.ws.close(1000, 'signed out');
  state.ws = null;
  state.token = null;
  state.cursor = null;
  state.alerts.clear();
  state.hidden.clear();
  $('alerts').replaceChildren();
  showLogin(message);
}

// ------------------------------------------------------------------ live alerts

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function connect() {
  if (state.stopped) return;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  // The token goes as a subprotocol, not in the URL (proxies and load balancers log URLs).
  const ws = new WebSocket(scheme + '://' + location.host + '/v1/ws', ['pitboss.v1', 'pitboss.token.' + state.token]);
  state.ws = ws;
  setStatus('connecting', false);
  ws.onmessage = (ev) => {
    let f;
    try {
      f = JSON.parse(ev.data);
    } catch {
      return;
    }
    onFrame(f);
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    state.ws = null;
    // Acks in flight have no answer coming: let the operator send them again (same ack_id).
    for (const { alertId } of state.pendingAcks.values()) {
      const card = state.alerts.get(alertId);
      if (card && !card.classList.contains('acked')) {
        card.querySelector('.ack-status').textContent = 'not confirmed: connection lost, try again';
        setButtons(card);
      } else if (card) {
        // A change of conclusion in flight: the recorded one stands (shown again) until it is
        // sent again.
        card.querySelector('.ack-status').textContent = card.dataset.shown + ' (change not confirmed: connection lost, try again)';
        setButtons(card);
      }
    }
    state.pendingAcks.clear();
    if (state.stopped) return;
    if (ev.code === 4001) {
      signOut('The token expired: sign in with a fresh one.');
      return;
    }
    // Backoff with full jitter, up to 15 s; resume from the cursor.
    const delay = Math.random() * Math.min(15000, 500 * 2 ** state.attempt);
    state.attempt += 1;
    setStatus('reconnecting', false);
    state.reconnectTimer = setTimeout(connect, delay);
  };
}

function onFrame(f) {
  switch (f.type) {
    case 'welcome': {
      state.attempt = 0;
      $('status').title = 'gateway ' + f.gateway + ', connection ' + f.connection;
      const sub = { type: 'subscribe', id: state.nextId++, channel: 'operator:' + state.claims.tenant };
      if (state.cursor) sub.since = state.cursor;
      state.replayed = new Set();
      send(sub);
      break;
    }
    case 'subscribed': {
      // The subscription's whole cursor (replayed messages carry older ones).
      state.cursor = f.cursor || state.cursor;
      // Not a complete resume (away too long, or a gateway that lost its history): the replay
      // was every alert still open, so a card it left out was closed meanwhile — by another
      // operator, whose `alert_acked` this console could not be sent.
      if (f.recovery && f.recovery !== 'complete' && state.replayed) {
        for (const [alertId, card] of state.alerts) {
          if (!card.classList.contains('acked') && !state.replayed.has(alertId)) {
            markAcked(alertId, CLOSED_AWAY);
            card.dataset.away = '1';
          }
        }
        for (const alertId of state.hidden) if (!state.replayed.has(alertId)) state.hidden.delete(alertId);
        countOpen();
      }
      state.replayed = null;
      // Messages of a send that failed while offline are stale now.
      for (const card of state.alerts.values()) {
        const st = card.querySelector('.ack-status');
        if (st.textContent.startsWith('offline')) st.textContent = card.classList.contains('acked') ? card.dataset.shown : '';
      }
      setStatus('live', true);
      break;
    }
    case 'cursor':
      state.cursor = f.cursor;
      break;
    case 'message':
      // A replayed message's cursor is of when it was read (an open alert's may be hours
      // old): the `subscribed` frame after the replay carries the subscription's.
      if (f.cursor && !f.replayed) state.cursor = f.cursor;
      if (f.kind === 'alert' && f.data) {
        if (f.replayed && state.replayed) state.replayed.add(f.data.alert_id);
        addAlert(f.data);
      }
      break;
    case 'acked': {
      const pending = state.pendingAcks.get(f.id);
      state.pendingAcks.delete(f.id);
      const alertId = (pending && pending.alertId) || f.alert_id;
      const outcome = pending && pending.outcome;
      // On the bus: choosing this outcome again later (after another) is a new ack, not a
      // retry of this one (the gateway keeps a superseded ack_id to its own ack).
      if (outcome) state.ackIds.delete(alertId + ' ' + outcome);
      const card = state.alerts.get(alertId);
      // `alert_acked` (with who and when) may have come first, and says more (who, when, what
      // it replaced).
      if (card && (!card.classList.contains('acked') || card.querySelector('.ack-status').textContent === 'saving…')) {
        markAcked(alertId, OUTCOMES[outcome] || 'acknowledged', outcome);
      }
      break;
    }
    case 'alert_acked': {
      const acked = state.alerts.get(f.alert_id);
      if (acked) delete acked.dataset.away;
      // Any operator of the tenant, this console included, on any gateway instance. A later
      // conclusion that differs from the one shown says what it replaced (two operators who
      // disagree both see it).
      if (state.hidden.delete(f.alert_id)) countOpen();
      let text = (OUTCOMES[f.outcome] || f.outcome) + ' by ' + f.operator_id + ' at ' + time(Date.parse(f.acked_at));
      const card = state.alerts.get(f.alert_id);
      if (card && card.dataset.outcome && card.dataset.outcome !== f.outcome) {
        text += ' (was ' + (OUTCOMES[card.dataset.outcome] || card.dataset.outcome) + ' by ' + card.dataset.by + ')';
      }
      if (card) {
        card.dataset.outcome = f.outcome;
        card.dataset.by = f.operator_id;
      }
      // Its ack ids of outcomes not in flight name stored acks now: choosing one of those
      // outcomes again later is a new ack (a retry of a stored one would change nothing, and
      // the console would show it as the conclusion).
      forgetAckIds(f.alert_id);
      markAcked(f.alert_id, text, f.outcome);
      break;
    }
    case 'error': {
      const pending = state.pendingAcks.get(f.id);
      const alertId = pending && pending.alertId;
      if (alertId) {
        state.pendingAcks.delete(f.id);
        const card = state.alerts.get(alertId);
        if (card) {
          card.querySelector('.ack-status').textContent = 'not saved: ' + f.message;
          setButtons(card);
        }
      } else if (f.code && f.code.startsWith('token_')) {
        signOut('The gateway refused the token: ' + f.message);
      }
      break;
    }
    case 'reconnect':
      setStatus('reconnecting', false);
      break;
    default:
      break;
  }
}

const CLOSED_AWAY = 'closed while this console was away';

function addAlert(a) {
  if (!a || !a.alert_id) return;
  const known = state.alerts.get(a.alert_id);
  if (known && known.dataset.away === '1') {
    // Inferred closed after a resume that was not complete, and sent again as open (a replay
    // cut short, or an instance a moment behind): open again.
    delete known.dataset.away;
    known.classList.remove('acked');
    setButtons(known);
    known.querySelector('.ack-status').textContent = '';
    countOpen();
    return;
  }
  if (known || state.hidden.has(a.alert_id)) return;
  const li = el('li', 'alert ' + (a.severity || ''));
  li.dataset.alertId = a.alert_id;
  li.dataset.rule = a.rule_id;
  li.dataset.groupBy = a.group_by || '';
  li.dataset.groupKey = a.group_key || '';
  li.dataset.tenant = a.tenant_id || '';
  const detected = a.detected_at ? Date.parse(a.detected_at) : Date.now();
  li.dataset.detected = String(detected);
  const top = el('div', 'top');
  const left = el('div');
  left.append(el('span', 'sev', a.severity), document.createTextNode(' '), el('span', 'rule', a.rule_id));
  const when = el('span', 'meta', time(detected));
  when.title = new Date(detected).toISOString();
  top.append(left, when);
  const subject = a.player_id ? 'player ' + a.player_id : (a.group_key || '');
  const who = el('div', 'meta', subject + ' · score ' + a.score + ' (total ' + a.total_score + ') · ' + a.recommendation);
  const linked = Array.isArray(a.related_player_ids) && a.related_player_ids.length > 0
    ? el('div', 'meta', 'linked players: ' + a.related_player_ids.join(', '))
    : null;
  const why = el('div', 'why', a.reason);
  const actions = el('div', 'actions');
  for (const [label, outcome] of [['Acknowledge', 'acknowledged'], ['False positive', 'false_positive'], ['Confirm', 'confirmed'], ['Escalate', 'escalated']]) {
    const b = el('button', null, label);
    b.type = 'button';
    b.dataset.outcome = outcome;
    b.addEventListener('click', () => ack(a.alert_id, outcome));
    actions.append(b);
  }
  actions.append(el('span', 'ack-status meta'));
  li.append(...[top, who, linked, why, actions].filter(Boolean));
  state.alerts.set(a.alert_id, li);
  // Newest first by detection time: a replay comes partition by partition, not in time order.
  let before = $('alerts').firstElementChild;
  while (before && Number(before.dataset.detected) > detected) before = before.nextElementSibling;
  $('alerts').insertBefore(li, before);
  while (state.alerts.size > MAX_ALERTS) {
    // The oldest acknowledged card goes first; an open one only when none is acknowledged,
    // and it is counted in the header (not dropped without a word).
    const acked = $('alerts').querySelectorAll('li.alert.acked');
    const last = acked.length > 0 ? acked[acked.length - 1] : $('alerts').lastElementChild;
    if (!last) break;
    if (!last.classList.contains('acked')) state.hidden.add(last.dataset.alertId);
    state.alerts.delete(last.dataset.alertId);
    last.remove();
  }
  countOpen();
}

// The header counts the open alerts: the cards shown, and the oldest ones past MAX_ALERTS.
function countOpen() {
  let open = 0;
  for (const card of state.alerts.values()) if (!card.classList.contains('acked')) open += 1;
  const hidden = state.hidden.size;
  $('alert-count').textContent = hidden === 0
    ? '(' + open + ' open)'
    : '(' + (open + hidden) + ' open; the ' + hidden + ' oldest not shown)';
}

function ack(alertId, outcome) {
  const id = state.nextId++;
  const card = state.alerts.get(alertId);
  // One ack_id per alert and outcome: a retry after a lost answer is the same ack; another
  // outcome is a new ack (the gateway refuses an ack_id reused with another outcome).
  const key = alertId + ' ' + outcome;
  if (!state.ackIds.has(key)) state.ackIds.set(key, uuidv7());
  const frame = { type: 'ack', id, alert_id: alertId, outcome, ack_id: state.ackIds.get(key) };
  if (!send(frame)) {
    if (card) card.querySelector('.ack-status').textContent = 'offline: try again when live';
    return;
  }
  state.pendingAcks.set(id, { alertId, outcome });
  if (card) {
    card.querySelectorAll('button[data-outcome]').forEach((b) => (b.disabled = true));
    card.querySelector('.ack-status').textContent = 'saving…';
  }
}

// A closed card keeps the buttons of the other outcomes: an operator may change the
// conclusion (acknowledged, then confirmed or escalated), which the gateway records as a later
// ack that supersedes the first. The outcome recorded is the one button off; a card closed
// with no outcome known here (closed while this console was away) has none on: a change
// would replace a conclusion this console never saw.
function markAcked(alertId, text, outcome) {
  const card = state.alerts.get(alertId);
  if (!card) return;
  card.classList.add('acked');
  card.dataset.recorded = outcome || '';
  card.dataset.shown = text;
  setButtons(card);
  card.querySelector('.ack-status').textContent = text;
  // A finding cleared as a false positive comes back (a family's shared device, after every
  // cooldown) until its rule is snoozed for the key: the command that does it (docs/rules.md,
  // "Snoozes"), to copy.
  let hint = card.querySelector('.snooze-hint');
  if (outcome === 'false_positive') {
    // Made once: an ack of the same conclusion again (a replay, another console) keeps the
    // button and what it said.
    if (!hint) {
      hint = el('div', 'snooze-hint meta');
      card.append(hint);
      const key = card.dataset.groupBy ? 'this ' + card.dataset.groupBy.replace(/_/g, ' ') : 'its key';
      hint.replaceChildren(
        document.createTextNode('To silence ' + card.dataset.rule + ' for ' + key + ': '),
        el('code', null, 'pitboss rules snooze --rules DIR --alert ' + alertId + ' --for 30d --reason "…"'),
      );
    }
    snoozeButton(card, hint);
  } else if (hint) {
    hint.remove();
  }
  // A finding confirmed on a device, an address or a payment instrument: the command that puts
  // it on the tenant's block list, which the shipped fraud.blocklist rules read (docs/rules.md,
  // "Lists"), to copy.
  let block = card.querySelector('.block-hint');
  const list = BLOCK_LISTS[card.dataset.groupBy];
  if (outcome === 'confirmed' && list && card.dataset.groupKey && card.dataset.tenant) {
    if (!block) {
      block = el('div', 'block-hint meta');
      card.append(block);
      block.replaceChildren(
        document.createTextNode('To block this ' + card.dataset.groupBy.replace(/_/g, ' ') + ' for tenant ' + card.dataset.tenant + ': '),
        // (`--` before a key that starts like an option.)
        el('code', null, 'pitboss rules list add --rules DIR --list ' + list + ' --tenant ' + shellWord(card.dataset.tenant) + (card.dataset.groupKey.startsWith('-') ? ' -- ' : ' ') + shellWord(card.dataset.groupKey)),
      );
      block.dataset.list = list;
    }
    blockButton(card, block);
  } else if (block) {
    block.remove();
  }
  countOpen();
}

// A gateway beside the rules directory snoozes itself (docs/gateway.md, "Snoozes"): the hint
// gets a button once /v1/stats says so. 30 days, as the command shows; the operator's id is
// the snooze's `by` (the token's).
function snoozeButton(card, hint) {
  if (!state.snoozes || !card.dataset.groupKey || hint.querySelector('.snooze-now')) return;
  const button = el('button', 'snooze-now', 'Snooze 30 days');
  const said = el('span', 'snooze-status');
  button.addEventListener('click', () =>
    rulesChange('/v1/snoozes', {
      rule: card.dataset.rule,
      key: card.dataset.groupKey,
      alert: card.dataset.alertId,
      for: '30d',
      reason: 'concluded a false positive in the console',
    }, button, said, 'snoozed'));
  hint.append(document.createTextNode(' '), button, document.createTextNode(' '), said);
}

// A gateway beside the rules directory makes the change itself (docs/gateway.md, "Lists"):
// the hint gets a Block button once /v1/stats says so.
function blockButton(card, block) {
  if (!state.lists || block.querySelector('.block-now')) return;
  const button = el('button', 'block-now', 'Block');
  const said = el('span', 'block-status');
  button.addEventListener('click', () =>
    rulesChange('/v1/lists/' + encodeURIComponent(block.dataset.list) + '/add', { values: [card.dataset.groupKey] }, button, said, 'blocked'));
  block.append(document.createTextNode(' '), button, document.createTextNode(' '), said);
}

// Asks the gateway for a change to the rules (a list, a snooze) of the token's tenant; the
// answer's first line says what was done, or why not.
async function rulesChange(path, body, button, said, done) {
  button.disabled = true;
  said.textContent = 'saving…';
  try {
    const res = await fetch(path, {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + state.token, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const answer = await res.json().catch(() => ({}));
    if (res.ok) {
      said.textContent = done + ': ' + String(answer.message || '').split('\n')[0];
      return;
    }
    said.textContent = 'not ' + done + ': ' + ((answer.error && answer.error.message) || 'HTTP ' + res.status);
  } catch {
    said.textContent = 'not ' + done + ': the gateway did not answer; try again';
  }
  button.disabled = false;
}

// The block list of the shipped fraud pack for what an alert is grouped by.
const BLOCK_LISTS = { device: 'blocked_devices', ip: 'blocked_ips', payment_instrument: 'blocked_payment_instruments' };

// A word a POSIX shell reads back as it is: quoted unless it is plainly safe.
function shellWord(s) {
  return /^[A-Za-z0-9._:\/@+=-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'";
}

function setButtons(card) {
  const acked = card.classList.contains('acked');
  const recorded = card.dataset.recorded || '';
  // The ack buttons (Block and Snooze keep their own state).
  card.querySelectorAll('button[data-outcome]').forEach((b) => (b.disabled = acked && (recorded === '' || b.dataset.outcome === recorded)));
}

function forgetAckIds(alertId) {
  const inFlight = new Set([...state.pendingAcks.values()].filter((p) => p.alertId === alertId).map((p) => p.outcome));
  for (const key of [...state.ackIds.keys()]) {
    const [id, outcome] = key.split(' ');
    if (id === alertId && !inFlight.has(outcome)) state.ackIds.delete(key);
  }
}

// ------------------------------------------------------------------ figures

async function pollStats() {
  if (state.stopped) return;
  try {
    const res = await fetch('/v1/stats', { headers: { Authorization: 'Bearer ' + state.token }, cache: 'no-store' });
    if (res.status === 401) {
      const body = await res.json().catch(() => ({}));
      signOut('The gateway refused the token: ' + ((body.error && body.error.message) || res.status));
      return;
    }
    if (res.ok) renderStats(await res.json());
  } catch {
    // The gateway is restarting; the next poll tries again.
  }
  state.statsTimer = setTimeout(pollStats, 2000);
}

function renderStats(s) {
  if ((s.lists === true && !state.lists) || (s.snoozes === true && !state.snoozes)) {
    state.lists = s.lists === true;
    state.snoozes = s.snoozes === true;
    for (const card of state.alerts.values()) {
      const block = card.querySelector('.block-hint');
      if (block) blockButton(card, block);
      const hint = card.querySelector('.snooze-hint');
      if (hint) snoozeButton(card, hint);
    }
  }
  const t = s.time_to_notify;
  $('kpi-ttn').textContent = t ? t.p50_ms + ' / ' + t.p95_ms + ' / ' + t.p99_ms + ' ms' : '–';
  const note = $('store-note');
  if (!s.store) {
    note.hidden = false;
    note.textContent = 'This gateway has no store attached: traffic figures are not available here.';
    return;
  }
  note.hidden = !s.store_error;
  note.textContent = s.store_error ? 'Store: ' + s.store_error : '';
  if (typeof s.events_per_second === 'number') $('kpi-eps').textContent = s.events_per_second.toFixed(1);
  if (typeof s.active_players === 'number') $('kpi-players').textContent = s.active_players.toLocaleString();
  if (typeof s.alerts_last_hour === 'number') $('kpi-alerts').textContent = s.alerts_last_hour.toLocaleString();
  if (s.pipeline && typeof s.pipeline.lag_ms === 'number') {
    $('kpi-lag').textContent = s.pipeline.lag_ms < 1000 ? s.pipeline.lag_ms + ' ms' : (s.pipeline.lag_ms / 1000).toFixed(1) + ' s';
  }
  const ggr = $('ggr').querySelector('tbody');
  ggr.replaceChildren(
    ...(s.ggr_by_game || []).map((g) => {
      const tr = el('tr');
      tr.append(el('td', null, g.game_id), el('td', null, g.currency), el('td', 'num', g.bets), el('td', 'num', amount(g.stakes_minor, g.currency)), el('td', 'num', amount(g.ggr_minor, g.currency)));
      return tr;
    }),
  );
  $('pushes').replaceChildren(
    ...(s.recent_pushes || []).map((p) => {
      const li = el('li', 'push');
      li.append(el('div', null, p.title), el('div', 'meta', time(p.created_at_ms) + ' · ' + p.kind + ' → ' + p.target_type + ' ' + p.target_id));
      return li;
    }),
  );
  $('rules').querySelector('tbody').replaceChildren(
    ...(s.alerts_by_rule || []).map((r) => {
      const tr = el('tr');
      tr.append(el('td', null, r.rule_id), el('td', 'num', r.alerts));
      return tr;
    }),
  );
}

// ------------------------------------------------------------------ start

function start() {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    signIn($('token').value);
  });
  $('signout').addEventListener('click', () => signOut(''));
  // `pitboss up` prints /console#token=…: the fragment never reaches a server or its logs.
  const m = /[#&]token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname);
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showLogin('');
}

// Reached from the devtools and the browser test (tests/browser): a module's names are its own.
window.pitbossConsole = { state, onFrame, addAlert, amount };

start();
