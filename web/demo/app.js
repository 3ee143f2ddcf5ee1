// Herald chat demo: the real centrifuge SDK (npm, bundled by web/build.mjs) against the Herald that serves this
// page. Rooms are channels `chat:<room>`; a message is a client-side publication {text, time}; its author is the
// publication's info.user, set by the server from the connection token (so nobody can write as someone else).
// Tokens come from POST /demo/token, which exists only in demo mode.
import { Centrifuge } from 'centrifuge';

const TRANSPORT_NAMES = { websocket: 'WebSocket', http_stream: 'HTTP streaming', sse: 'SSE' };
const DEFAULT_ROOMS = ['lobby', 'rust', 'random'];
const ROOM_RE = /^[a-z0-9_-]{1,32}$/;
const HISTORY_LIMIT = 50;
const ROOMS_POLL_MS = 5000;

const $ = (id) => document.getElementById(id);

const S = {
  nick: '',
  transport: 'websocket',
  room: 'lobby',
  client: null,
  sub: null,
  clientId: '',
  everConnected: false,
  state: 'offline',
  states: [], // every state shown, for tests and curious people (window.heraldDemo.snapshot())
  items: [], // messages and notes of the current room, sorted by key
  offsets: new Set(), // offsets of the messages shown (history and live publications merge on it)
  maxOffset: 0,
  seq: 0,
  pubOffsets: [], // offsets of every live or recovered publication event, duplicates included
  presence: new Map(), // client id -> {user, transport}
  historyLoaded: false,
  roomCounts: new Map(),
  extraRooms: new Set(),
};

// ---- connection state ---------------------------------------------------------------------------------------

function setState(state, detail) {
  S.state = state;
  S.states.push(state);
  const badge = $('state');
  badge.dataset.state = state;
  badge.textContent = state;
  $('state-detail').textContent = detail || '';
  const live = state === 'connected' || state === 'recovered';
  $('text').disabled = !live && !S.everConnected;
  $('send').disabled = !live;
}

// ---- messages -----------------------------------------------------------------------------------------------

function cmpKey(a, b) {
  return a[0] - b[0] || a[1] - b[1];
}

function timeText(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function insertItem(item, li) {
  const list = $('messages');
  const empty = list.querySelector('.empty');
  if (empty) empty.remove();
  let i = S.items.length;
  while (i > 0 && cmpKey(S.items[i - 1].key, item.key) > 0) i--;
  const before = S.items[i] ? S.items[i].li : null;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  S.items.splice(i, 0, { ...item, li });
  list.insertBefore(li, before);
  if (atBottom || !before) list.scrollTop = list.scrollHeight;
}

// One publication (live, recovered or from history) as a message; each offset is shown once.
function addMessage(pub, source) {
  const offset = Number(pub.offset || 0);
  if (source !== 'history') S.pubOffsets.push(offset);
  if (offset > 0) {
    if (S.offsets.has(offset)) return;
    S.offsets.add(offset);
    S.maxOffset = Math.max(S.maxOffset, offset);
  }
  const data = pub.data && typeof pub.data === 'object' ? pub.data : { text: String(pub.data) };
  const info = pub.info || null;
  const author = info && info.user ? info.user : String(data.author || 'server');
  const text = typeof data.text === 'string' ? data.text : JSON.stringify(data);
  const li = document.createElement('li');
  li.className = 'msg';
  if (!info) li.classList.add('server');
  else if (info.user === S.nick) li.classList.add('mine');
  li.dataset.offset = String(offset);
  const meta = document.createElement('div');
  meta.className = 'meta';
  const who = document.createElement('span');
  who.className = 'author';
  who.textContent = author;
  meta.appendChild(who);
  const transport = info && info.connInfo && info.connInfo.transport;
  if (transport && TRANSPORT_NAMES[transport]) {
    const tag = document.createElement('span');
    tag.className = 'tag';
    tag.textContent = TRANSPORT_NAMES[transport];
    meta.appendChild(tag);
  }
  const when = typeof data.time === 'number' ? data.time : source === 'history' ? null : Date.now();
  if (when) {
    const t = document.createElement('time');
    t.dateTime = new Date(when).toISOString();
    t.textContent = timeText(when);
    meta.appendChild(t);
  }
  const body = document.createElement('div');
  body.className = 'text';
  body.textContent = text;
  li.append(meta, body);
  const key = offset > 0 ? [offset, 0] : [S.maxOffset, ++S.seq];
  insertItem({ kind: 'msg', key, offset, author, text }, li);
}

function addNote(text, warn) {
  const li = document.createElement('li');
  li.className = warn ? 'note warn' : 'note';
  li.textContent = text;
  insertItem({ kind: 'note', key: [S.maxOffset, ++S.seq], text }, li);
}

function clearRoom() {
  S.items = [];
  S.offsets = new Set();
  S.maxOffset = 0;
  S.pubOffsets = [];
  S.presence = new Map();
  S.historyLoaded = false;
  const list = $('messages');
  list.replaceChildren();
  const empty = document.createElement('li');
  empty.className = 'empty';
  empty.textContent = 'No messages yet. Say hello!';
  list.appendChild(empty);
  renderPresence();
}

// ---- presence -----------------------------------------------------------------------------------------------

function usersOnline() {
  const users = new Map(); // user -> Set of transports
  for (const { user, transport } of S.presence.values()) {
    if (!users.has(user)) users.set(user, new Set());
    if (transport) users.get(user).add(transport);
  }
  return users;
}

function renderPresence() {
  const users = usersOnline();
  const names = [...users.keys()].sort((a, b) => a.localeCompare(b));
  $('online-count').textContent = String(names.length);
  const ul = $('online');
  ul.replaceChildren();
  for (const name of names) {
    const li = document.createElement('li');
    li.dataset.user = name;
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = name;
    li.appendChild(who);
    if (name === S.nick) {
      const you = document.createElement('span');
      you.className = 'you';
      you.textContent = '(you)';
      li.appendChild(you);
    }
    for (const t of [...users.get(name)].sort()) {
      const tag = document.createElement('span');
      tag.className = 'tag';
      tag.textContent = TRANSPORT_NAMES[t] || t;
      li.appendChild(tag);
    }
    ul.appendChild(li);
  }
  $('online-line').textContent = names.length ? `${names.length} online: ${names.join(', ')}` : '';
}

function presenceEntry(info) {
  const conn = info.connInfo || {};
  return { user: info.user || 'anonymous', transport: typeof conn.transport === 'string' ? conn.transport : '' };
}

function onJoin(info) {
  const had = usersOnline().has(info.user);
  S.presence.set(info.client, presenceEntry(info));
  renderPresence();
  if (!had && info.user !== S.nick) addNote(`${info.user} joined`);
}

function onLeave(info) {
  S.presence.delete(info.client);
  renderPresence();
  if (!usersOnline().has(info.user) && info.user !== S.nick) addNote(`${info.user} left`);
}

// Loads who is in the room. After a reconnect, tells who came or went meanwhile (their join and leave events were
// sent while this page was away).
async function refreshPresence(sub, announce) {
  try {
    const r = await sub.presence();
    if (sub !== S.sub) return;
    const before = usersOnline();
    S.presence = new Map();
    for (const info of Object.values(r.clients || {})) S.presence.set(info.client, presenceEntry(info));
    renderPresence();
    if (announce) {
      const after = usersOnline();
      for (const u of after.keys()) if (!before.has(u) && u !== S.nick) addNote(`${u} joined`);
      for (const u of before.keys()) if (!after.has(u) && u !== S.nick) addNote(`${u} left`);
    }
  } catch (e) {
    addNote(`could not load who is online: ${errText(e)}`, true);
  }
}

// ---- history ------------------------------------------------------------------------------------------------

async function loadHistory(sub) {
  try {
    const r = await sub.history({ limit: HISTORY_LIMIT, reverse: true });
    if (sub !== S.sub) return;
    S.historyLoaded = true;
    for (const pub of r.publications || []) addMessage(pub, 'history');
  } catch (e) {
    addNote(`could not load the room's history: ${errText(e)}`, true);
  }
}

// ---- rooms --------------------------------------------------------------------------------------------------

function renderRooms() {
  const names = new Set([...DEFAULT_ROOMS, ...S.extraRooms, ...S.roomCounts.keys(), S.room]);
  const ul = $('room-list');
  ul.replaceChildren();
  for (const name of [...names].sort((a, b) => a.localeCompare(b))) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.room = name;
    if (name === S.room) b.setAttribute('aria-current', 'true');
    const label = document.createElement('span');
    label.textContent = `#${name}`;
    b.appendChild(label);
    const n = S.roomCounts.get(name);
    if (n) {
      const c = document.createElement('span');
      c.className = 'n';
      c.textContent = String(n);
      c.title = `${n} connected`;
      b.appendChild(c);
    }
    b.addEventListener('click', () => switchRoom(name));
    li.appendChild(b);
    ul.appendChild(li);
  }
}

async function pollRooms() {
  try {
    const r = await fetch('/demo/rooms', { cache: 'no-store' });
    if (r.ok) {
      const j = await r.json();
      S.roomCounts = new Map((j.rooms || []).filter((x) => ROOM_RE.test(x.room)).map((x) => [x.room, x.clients]));
      renderRooms();
    }
  } catch (_) {
    // The server is away; the connection badge says so already.
  }
}

function switchRoom(room) {
  if (!ROOM_RE.test(room) || room === S.room && S.sub) return;
  S.room = room;
  S.extraRooms.add(room);
  history.replaceState(null, '', `#${room}`);
  $('room-title').textContent = `#${room}`;
  $('text').placeholder = `Message #${room}`;
  renderRooms();
  if (S.client) subscribe();
}

// ---- the client ---------------------------------------------------------------------------------------------

function errText(e) {
  if (!e) return 'unknown error';
  if (e.message) return e.code ? `${e.message} (${e.code})` : e.message;
  return String(e);
}

async function getToken() {
  const r = await fetch('/demo/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user: S.nick, transport: S.transport }),
  });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || `demo token: HTTP ${r.status}`);
  return j.token;
}

function transports(kind) {
  const origin = location.origin;
  if (kind === 'websocket') {
    return [{ transport: 'websocket', endpoint: `${origin.replace(/^http/, 'ws')}/connection/websocket` }];
  }
  return [{ transport: kind, endpoint: `${origin}/connection/${kind}` }];
}

function connect() {
  if (S.client) {
    const old = S.client;
    S.client = null;
    S.sub = null;
    old.disconnect();
  }
  S.everConnected = false;
  const c = new Centrifuge(transports(S.transport), {
    getToken,
    emulationEndpoint: `${location.origin}/emulation`,
    name: 'herald-demo',
    maxReconnectDelay: 5000,
    timeout: 10000,
  });
  S.client = c;
  c.on('connecting', (ctx) => {
    if (c !== S.client) return;
    const why = ctx.code ? `${ctx.reason || 'connection lost'} (${ctx.code})` : '';
    if (S.everConnected) setState('reconnecting', why);
    else setState('connecting', `via ${TRANSPORT_NAMES[S.transport]}`);
  });
  c.on('connected', (ctx) => {
    if (c !== S.client) return;
    S.everConnected = true;
    S.clientId = ctx.client;
    setState('connected', `via ${TRANSPORT_NAMES[ctx.transport] || ctx.transport}`);
  });
  c.on('disconnected', (ctx) => {
    if (c !== S.client) return;
    setState('disconnected', `${ctx.reason || 'disconnected'} (${ctx.code})`);
    addNote(`Disconnected by the server: ${ctx.reason} (${ctx.code}). Pick a transport or reload to come back.`, true);
  });
  c.on('error', (ctx) => {
    if (c !== S.client) return;
    // Transport errors while reconnecting are expected; the state badge shows them.
    if (ctx.type !== 'transport') console.warn('herald demo:', ctx.type, errText(ctx.error));
  });
  subscribe();
  c.connect();
}

function subscribe() {
  const c = S.client;
  if (S.sub) {
    const old = S.sub;
    S.sub = null;
    old.unsubscribe();
    c.removeSubscription(old);
  }
  clearRoom();
  const channel = `chat:${S.room}`;
  const sub = c.getSubscription(channel) || c.newSubscription(channel, { joinLeave: true, recoverable: true });
  S.sub = sub;
  let recoveredFrom = 0;
  sub.on('subscribed', (ctx) => {
    if (sub !== S.sub) return;
    if (ctx.wasRecovering && ctx.recovered) {
      recoveredFrom = S.pubOffsets.length;
      setState('recovered', `via ${TRANSPORT_NAMES[S.transport]}`);
      // Recovered publications are emitted right after this event; count them once they are in.
      setTimeout(() => {
        if (sub !== S.sub) return;
        const n = S.pubOffsets.length - recoveredFrom;
        addNote(n ? `Reconnected: ${n} missed message${n === 1 ? '' : 's'} recovered.` : 'Reconnected: nothing was missed.');
      }, 0);
    } else if (ctx.wasRecovering) {
      addNote('Reconnected, but the missed messages could not be recovered: reloading the history.', true);
      loadHistory(sub);
    } else if (!S.historyLoaded) {
      loadHistory(sub);
    }
    refreshPresence(sub, ctx.wasRecovering);
  });
  sub.on('publication', (ctx) => { if (sub === S.sub) addMessage(ctx, 'live'); });
  sub.on('join', (ctx) => { if (sub === S.sub) onJoin(ctx.info); });
  sub.on('leave', (ctx) => { if (sub === S.sub) onLeave(ctx.info); });
  sub.on('error', (ctx) => { if (sub === S.sub) addNote(`subscription error: ${errText(ctx.error)}`, true); });
  sub.subscribe();
}

async function send(text) {
  const sub = S.sub;
  if (!sub) return false;
  try {
    await sub.publish({ text, time: Date.now() });
    return true;
  } catch (e) {
    addNote(`not sent: ${errText(e)}`, true);
    return false;
  }
}

// ---- wiring -------------------------------------------------------------------------------------------------

function start(nick, room, transport) {
  S.nick = nick;
  S.transport = transport;
  try { localStorage.setItem('herald-demo-nick', nick); } catch (_) { /* private mode */ }
  $('me-nick').textContent = nick;
  $('me').hidden = false;
  $('transport').value = transport;
  $('welcome').hidden = true;
  S.room = '';
  switchRoom(room);
  connect();
  $('text').focus();
}

function init() {
  const fromHash = decodeURIComponent(location.hash.slice(1)).toLowerCase();
  if (ROOM_RE.test(fromHash)) $('room').value = fromHash;
  try { $('nick').value = localStorage.getItem('herald-demo-nick') || ''; } catch (_) { /* private mode */ }
  S.room = $('room').value;
  $('room-title').textContent = `#${S.room}`;
  renderRooms();
  clearRoom();
  setState('offline', 'pick a nickname to join');
  $('nick').focus();

  $('join-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const nick = $('nick').value.trim();
    const room = $('room').value.trim().toLowerCase() || 'lobby';
    const err = $('join-error');
    if (!nick || nick.length > 32 || /[\u0000-\u001f\u007f]/.test(nick)) {
      err.textContent = 'A nickname has 1 to 32 characters.';
      err.hidden = false;
      return;
    }
    if (!ROOM_RE.test(room)) {
      err.textContent = 'A room name has lower-case letters, digits, - and _ (at most 32).';
      err.hidden = false;
      return;
    }
    err.hidden = true;
    start(nick, room, $('join-transport').value);
  });

  $('transport').addEventListener('change', () => {
    S.transport = $('transport').value;
    if (S.nick) {
      addNote(`Switching to ${TRANSPORT_NAMES[S.transport]}…`);
      connect();
    }
  });

  $('change-nick').addEventListener('click', () => {
    if (S.client) {
      const old = S.client;
      S.client = null;
      S.sub = null;
      old.disconnect();
    }
    setState('offline', 'pick a nickname to join');
    $('nick').value = S.nick;
    $('room').value = S.room;
    $('join-transport').value = S.transport;
    $('welcome').hidden = false;
    $('nick').focus();
  });

  $('composer').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('text');
    const text = input.value.trim();
    if (!text) return;
    input.value = '';
    if (!(await send(text))) input.value = text;
    input.focus();
  });

  $('new-room').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = $('new-room-name').value.trim().toLowerCase();
    if (!ROOM_RE.test(name)) {
      $('new-room-name').setCustomValidity('lower-case letters, digits, - and _');
      $('new-room-name').reportValidity();
      return;
    }
    $('new-room-name').setCustomValidity('');
    $('new-room-name').value = '';
    switchRoom(name);
  });
  $('new-room-name').addEventListener('input', () => $('new-room-name').setCustomValidity(''));

  pollRooms();
  setInterval(pollRooms, ROOMS_POLL_MS);
}

// A read-only view for tests and for poking around in the devtools.
window.heraldDemo = {
  snapshot() {
    return {
      nick: S.nick,
      room: S.room,
      transport: S.transport,
      state: S.state,
      states: S.states.slice(),
      clientId: S.clientId,
      messages: S.items.filter((i) => i.kind === 'msg').map(({ offset, author, text }) => ({ offset, author, text })),
      notes: S.items.filter((i) => i.kind === 'note').map((i) => i.text),
      pubOffsets: S.pubOffsets.slice(),
      online: [...usersOnline().keys()].sort(),
    };
  },
};

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
