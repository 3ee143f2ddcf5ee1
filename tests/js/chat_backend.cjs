// The centrifuge JS SDK against Herald with the example chat backend (examples/chat_backend) behind its proxy
// hooks: a client connects with no token, authenticated by the backend from the Authorization header the SDK
// sends through headers emulation; the subscribe hook checks room membership; the publish hook stores each
// message and broadcasts what it stored; the SDK's rpc() reaches the RPC hook; refusals reach the SDK with the
// backend's codes. With --webhooks, the backend's view of who is online (from Herald's signed webhooks) follows
// the connections.
//
// Usage: node chat_backend.cjs --ws URL --backend URL [--webhooks]
'use strict';

const { loadDeps, createRun, waitFor, settle } = require('./harness.cjs');

const { Centrifuge, WebSocket } = loadDeps();

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

const wsUrl = arg('ws');
const backend = arg('backend');
const webhooks = process.argv.includes('--webhooks');
if (!wsUrl || !backend) {
  console.log('usage: node chat_backend.cjs --ws URL --backend URL [--webhooks]');
  process.exit(2);
}

const { check, clients, run } = createRun({ watchdogMs: 40000 });

function client(user, password) {
  const c = new Centrifuge(wsUrl, {
    websocket: WebSocket,
    headers: { Authorization: `Bearer ${user}:${password}` },
    minReconnectDelay: 200,
    maxReconnectDelay: 500,
  });
  clients.push(c);
  return c;
}

function connected(c) {
  return new Promise((resolve, reject) => {
    c.once('connected', resolve);
    c.once('disconnected', (ctx) => reject(ctx));
    c.connect();
  });
}

function subscribed(sub) {
  return new Promise((resolve, reject) => {
    sub.once('subscribed', resolve);
    sub.once('error', (ctx) => reject(ctx.error));
    sub.once('unsubscribed', (ctx) => reject(ctx));
    sub.subscribe();
  });
}

// Polls the backend's online users every 100 ms until pred(users) holds or ms pass.
async function until(pred, ms) {
  const end = Date.now() + ms;
  for (;;) {
    if (await pred(await online())) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function online() {
  try {
    const res = await fetch(`${backend}/online`);
    return await res.json();
  } catch (e) {
    return [String(e)];
  }
}

run(async () => {
  // Connect: the backend knows alice from the emulated header and says which rooms she has.
  const alice = client('alice', 'alice-secret');
  const ctx = await settle(connected(alice), 5000);
  check('alice connects without a token (connect hook)', !ctx.error, ctx.error);
  check('the connect reply carries the backend\'s data', ctx.value && ctx.value.data
    && Array.isArray(ctx.value.data.rooms) && ctx.value.data.rooms.includes('chat:staff'), ctx.value);

  // Subscribe (subscribe hook), publish (publish hook: stored, replaced).
  const lobby = alice.newSubscription('chat:lobby');
  const got = [];
  lobby.on('publication', (p) => got.push(p.data));
  const sub = await settle(subscribed(lobby), 5000);
  check('alice subscribes to chat:lobby (subscribe hook)', !sub.error, sub.error);
  const pub = await settle(lobby.publish({ text: 'hello from the SDK' }), 5000);
  check('publish() is accepted (publish hook)', !pub.error, pub.error);
  await waitFor(() => got.length > 0, 5000);
  const first = got[0] || {};
  check('subscribers get what the backend stored, not what the client sent',
    first.user === 'alice' && first.text === 'hello from the SDK' && Number.isInteger(first.id), got);
  const blank = await settle(lobby.publish({ text: '   ' }), 5000);
  check('a blank message is refused with the backend\'s code 400', blank.error && blank.error.code === 400, blank);

  // RPC (rpc hook): the room's history from the backend's store; an unknown method gets its error.
  const history = await settle(alice.rpc('history', { room: 'chat:lobby', limit: 10 }), 5000);
  const messages = history.value && history.value.data && history.value.data.messages;
  check('rpc("history") answers from the backend', Array.isArray(messages)
    && messages.some((m) => m.text === 'hello from the SDK'), history);
  const unknown = await settle(alice.rpc('nope', {}), 5000);
  check('an unknown RPC method gets the backend\'s 404', unknown.error && unknown.error.code === 404, unknown);

  // carol is not a member of chat:staff: the subscribe hook refuses with 403.
  const carol = client('carol', 'carol-secret');
  await settle(connected(carol), 5000);
  const staff = carol.newSubscription('chat:staff');
  const refused = await settle(subscribed(staff), 5000);
  check('carol may not subscribe to chat:staff (403)', refused.error && refused.error.code === 403, refused);

  // A wrong password: the connect hook disconnects with 4501, and the SDK does not reconnect.
  const mallory = client('alice', 'wrong');
  const denied = await settle(connected(mallory), 5000);
  check('a wrong password is disconnected with 4501', denied.error && denied.error.code === 4501, denied);

  if (webhooks) {
    // The backend hears of alice and carol through Herald's webhooks, then of their leaving.
    const both = await until(async (users) => users.includes('alice') && users.includes('carol'), 8000);
    check('the backend sees alice and carol online (webhooks)', both, await online());
    alice.disconnect();
    carol.disconnect();
    const gone = await until(async (users) => !users.includes('alice') && !users.includes('carol'), 8000);
    check('and offline once they disconnect', gone, await online());
  }
});
