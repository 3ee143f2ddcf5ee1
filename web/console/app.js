// Herald web console: reads /console/api/* with the session token from POST /console/api/login (kept in this
// tab's sessionStorage only). The API key never reaches the browser: the server runs the operations itself.
const TOKEN_KEY = 'herald-console-token';
const INFO_MS = 1000;
const LISTS_MS = 2000;
const SPARK_POINTS = 60;
const TRANSPORT_NAMES = {
  websocket: 'WebSocket', http_stream: 'HTTP streaming', sse: 'SSE', uni_websocket: 'uni WebSocket',
  uni_sse: 'uni SSE', uni_http_stream: 'uni HTTP streaming', uni_grpc: 'uni gRPC', grpc: 'gRPC',
};

const $ = (id) => document.getElementById(id);

const S = {
  token: '',
  timers: [],
  last: null, // {at, counters}
  spark: new Array(SPARK_POINTS).fill(0),
  channel: '',
  channels: [],
  loggedIn: false,
};

class Unauthorized extends Error {}

async function call(path, body) {
  const headers = {};
  if (S.token) headers.Authorization = `Bearer ${S.token}`;
  const init = { headers, cache: 'no-store' };
  if (body !== undefined) {
    init.method = 'POST';
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(`/console/api/${path}`, init);
  const j = await r.json().catch(() => ({}));
  if (r.status === 401) throw new Unauthorized(j.error || 'log in again');
  if (!r.ok) throw new Error(j.error || `HTTP ${r.status}`);
  return j;
}

function fmt(n) {
  return Number(n || 0).toLocaleString('en-US');
}

function fmtRate(n) {
  return n >= 100 ? fmt(Math.round(n)) : n.toFixed(1);
}

function fmtUptime(s) {
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h ${m}m` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

function setPoll(state, text) {
  const b = $('poll-state');
  b.dataset.state = state;
  b.textContent = text || state;
}

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function emptyRow(tbody, cols, text) {
  const tr = document.createElement('tr');
  tr.className = 'empty-row';
  const td = cell(tr, text);
  td.colSpan = cols;
  tbody.appendChild(tr);
}

// ---- login --------------------------------------------------------------------------------------------------

function showLogin(message) {
  stopPolling();
  S.loggedIn = false;
  $('dash').hidden = true;
  $('logout').hidden = true;
  $('login-view').hidden = false;
  setPoll('offline', 'logged out');
  const err = $('login-error');
  err.textContent = message || '';
  err.hidden = !message;
  $('password').focus();
}

function showDash() {
  S.loggedIn = true;
  $('login-view').hidden = true;
  $('dash').hidden = false;
  $('logout').hidden = !S.token;
  startPolling();
}

async function login(password) {
  const r = await fetch('/console/api/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ password }),
  });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || `HTTP ${r.status}`);
  S.token = j.token || '';
  try { sessionStorage.setItem(TOKEN_KEY, S.token); } catch (_) { /* private mode */ }
}

function logout() {
  S.token = '';
  try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* private mode */ }
  showLogin();
}

// ---- polling ------------------------------------------------------------------------------------------------

function startPolling() {
  stopPolling();
  S.last = null;
  const run = (fn, ms) => {
    const tick = () => fn().catch(onError);
    tick();
    S.timers.push(setInterval(tick, ms));
  };
  run(pollInfo, INFO_MS);
  run(pollLists, LISTS_MS);
}

function stopPolling() {
  for (const t of S.timers) clearInterval(t);
  S.timers = [];
}

function onError(e) {
  if (e instanceof Unauthorized) {
    showLogin(S.token ? 'Your session ended: log in again.' : '');
    return;
  }
  setPoll('disconnected', 'server unreachable');
}

async function pollInfo() {
  const j = await call('info');
  const n = j.node;
  const c = j.counters;
  setPoll('connected', 'live');
  $('node-name').textContent = n.name;
  $('node-name2').textContent = `${n.name} (${n.uid.slice(0, 8)})`;
  $('node-version').textContent = n.version;
  $('node-uptime').textContent = fmtUptime(n.uptime);
  $('num-clients').textContent = fmt(n.num_clients);
  $('num-users').textContent = fmt(n.num_users);
  $('num-subs').textContent = fmt(n.num_subs);
  $('num-channels').textContent = fmt(n.num_channels);
  const by = Object.entries(j.connections || {}).filter(([, v]) => v > 0)
    .map(([k, v]) => `${TRANSPORT_NAMES[k] || k} ${fmt(v)}`);
  $('by-transport').textContent = by.length ? by.join(', ') : 'none';
  $('total-pubs').textContent = fmt(c.publications);
  $('total-msgs').textContent = `${fmt(c.messages_sent)} / ${fmt(c.messages_received)}`;

  const now = performance.now();
  if (S.last) {
    const dt = Math.max((now - S.last.at) / 1000, 0.001);
    const rate = (k) => Math.max(0, (c[k] - S.last.counters[k]) / dt);
    const sent = rate('messages_sent');
    $('rate-sent').textContent = fmtRate(sent);
    $('rate-received').textContent = fmtRate(rate('messages_received'));
    $('rate-pubs').textContent = fmtRate(rate('publications'));
    S.spark.push(sent);
    if (S.spark.length > SPARK_POINTS) S.spark.shift();
    drawSpark();
    $('spark-peak').textContent = `peak ${fmtRate(Math.max(...S.spark))}/s`;
  }
  S.last = { at: now, counters: c };
}

function drawSpark() {
  const svg = $('spark');
  const max = Math.max(1, ...S.spark);
  const w = 300;
  const h = 60;
  const step = w / (SPARK_POINTS - 1);
  const offset = SPARK_POINTS - S.spark.length;
  const points = S.spark.map((v, i) => `${((offset + i) * step).toFixed(1)},${(h - 4 - (v / max) * (h - 8)).toFixed(1)}`);
  let line = svg.querySelector('polyline');
  if (!line) {
    line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    svg.appendChild(line);
  }
  line.setAttribute('points', points.join(' '));
}

async function pollLists() {
  const [ch, conns] = await Promise.all([call('channels'), call('connections')]);
  S.channels = ch.channels || [];
  renderChannels();
  renderConnections(conns);
  if (S.channel) await loadChannel(S.channel, false);
}

function renderChannels() {
  const filter = $('channel-filter').value.trim();
  const rows = S.channels.filter((c) => !filter || c.channel.includes(filter));
  $('channels-count').textContent = `${S.channels.length} with subscribers`;
  const tbody = $('channels');
  tbody.replaceChildren();
  for (const c of rows) {
    const tr = document.createElement('tr');
    tr.className = 'clickable';
    tr.dataset.channel = c.channel;
    if (c.channel === S.channel) tr.setAttribute('aria-selected', 'true');
    cell(tr, c.channel, 'mono');
    cell(tr, fmt(c.clients), 'num');
    tr.addEventListener('click', () => openChannel(c.channel));
    tbody.appendChild(tr);
  }
  if (!rows.length) emptyRow(tbody, 2, filter ? 'no channel matches' : 'no channel has subscribers');
}

function renderConnections(j) {
  const list = j.connections || [];
  $('conns-count').textContent = list.length < j.total ? `${fmt(j.total)} (first ${list.length})` : fmt(j.total);
  const tbody = $('connections');
  tbody.replaceChildren();
  for (const c of list) {
    const tr = document.createElement('tr');
    tr.dataset.user = c.user;
    cell(tr, c.user || '(anonymous)');
    cell(tr, c.client, 'mono');
    const td = cell(tr, '');
    if (c.user) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'danger';
      b.textContent = 'Disconnect';
      b.title = `disconnect every connection of ${c.user}`;
      b.addEventListener('click', () => disconnect(c.user, $('dc-reconnect').checked));
      td.appendChild(b);
    }
    tbody.appendChild(tr);
  }
  if (!list.length) emptyRow(tbody, 3, 'no connections');
}

// ---- a channel ----------------------------------------------------------------------------------------------

function openChannel(channel) {
  S.channel = channel;
  $('pub-channel').value = channel;
  renderChannels();
  loadChannel(channel, true).catch(onError);
}

async function loadChannel(channel, scroll) {
  const panel = $('channel-panel');
  $('channel-hint').hidden = true;
  $('channel-detail').hidden = false;
  $('channel-name').textContent = channel;
  const err = $('channel-error');
  const problems = [];
  const [presence, history] = await Promise.all([
    call('presence', { channel }).catch((e) => { if (e instanceof Unauthorized) throw e; problems.push(`presence: ${e.message}`); return null; }),
    call('history', { channel, limit: 20 }).catch((e) => { if (e instanceof Unauthorized) throw e; problems.push(`history: ${e.message}`); return null; }),
  ]);
  if (channel !== S.channel) return;
  const pl = $('presence');
  pl.replaceChildren();
  if (presence) {
    const clients = presence.clients || [];
    $('presence-count').textContent = `${clients.length}`;
    for (const c of clients) {
      const li = document.createElement('li');
      li.dataset.user = c.user;
      const t = c.conn_info && c.conn_info.transport ? ` · ${TRANSPORT_NAMES[c.conn_info.transport] || c.conn_info.transport}` : '';
      li.textContent = `${c.user || '(anonymous)'}${t}`;
      li.title = c.client;
      pl.appendChild(li);
    }
    if (!clients.length) pl.appendChild(Object.assign(document.createElement('li'), { className: 'muted', textContent: 'nobody' }));
  } else {
    $('presence-count').textContent = '';
  }
  const hl = $('history');
  hl.replaceChildren();
  if (history) {
    for (const p of history.publications || []) {
      const li = document.createElement('li');
      const off = document.createElement('span');
      off.className = 'off';
      off.textContent = `#${p.offset}`;
      const who = p.info && p.info.user ? `${p.info.user}: ` : '';
      li.append(off, document.createTextNode(who + JSON.stringify(p.data)));
      hl.appendChild(li);
    }
    if (!(history.publications || []).length) hl.appendChild(Object.assign(document.createElement('li'), { className: 'muted', textContent: 'empty' }));
  }
  err.textContent = problems.join('; ');
  err.hidden = !problems.length;
  if (scroll) panel.scrollIntoView({ block: 'nearest' });
}

// ---- actions ------------------------------------------------------------------------------------------------

async function publish(channel, dataText) {
  const out = $('publish-result');
  let data;
  try {
    data = JSON.parse(dataText);
  } catch (e) {
    out.className = 'small error';
    out.textContent = `Data is not JSON: ${e.message}`;
    return;
  }
  try {
    const r = await call('publish', { channel, data });
    out.className = 'small ok';
    out.textContent = r.offset ? `Published to ${channel} at offset ${r.offset}.` : `Published to ${channel}.`;
    if (channel === S.channel) loadChannel(channel, false).catch(onError);
  } catch (e) {
    if (e instanceof Unauthorized) return onError(e);
    out.className = 'small error';
    out.textContent = `Not published: ${e.message}`;
  }
}

async function disconnect(user, reconnect) {
  const out = $('disconnect-result');
  try {
    const r = await call('disconnect', { user, reconnect });
    out.className = 'small ok';
    out.textContent = `${user}: ${r.disconnected} connection${r.disconnected === 1 ? '' : 's'} closed${reconnect ? ' (may reconnect)' : ''}.`;
    pollLists().catch(onError);
  } catch (e) {
    if (e instanceof Unauthorized) return onError(e);
    out.className = 'small error';
    out.textContent = `Not disconnected: ${e.message}`;
  }
}

// ---- wiring -------------------------------------------------------------------------------------------------

function init() {
  try { S.token = sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { /* private mode */ }
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btn = $('login');
    btn.disabled = true;
    try {
      await login($('password').value);
      $('password').value = '';
      showDash();
    } catch (e) {
      showLogin(e.message);
    } finally {
      btn.disabled = false;
    }
  });
  $('logout').addEventListener('click', logout);
  $('channel-filter').addEventListener('input', renderChannels);
  $('channel-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const ch = $('channel-filter').value.trim();
    if (ch) openChannel(ch);
  });
  $('publish-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    publish($('pub-channel').value.trim(), $('pub-data').value);
  });
  $('disconnect-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const user = $('dc-user').value.trim();
    if (user) disconnect(user, $('dc-reconnect').checked);
  });
  // With a token from this tab's session (or a console without login, admin.insecure) go straight in.
  // (Asked through /session, which answers 200 either way, so that the browser logs no failed request.)
  call('session').then(
    (j) => (j.authenticated ? showDash() : showLogin(S.token ? 'Your session ended: log in again.' : '')),
    () => showLogin('The server is unreachable.'),
  );
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
