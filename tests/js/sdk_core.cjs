#!/usr/bin/env node
// Herald's own end-to-end test of the core client protocol, driven by the real centrifuge JS SDK (npm
// `centrifuge@5`) over WebSocket, or over HTTP streaming or SSE (bidirectional emulation) with `--transport`. It
// needs a server with a `chat` namespace that allows subscribe, publish for subscribers, history, presence and
// join/leave, with force_recovery, history_size >= 100 and history_ttl >= 60s.
//
//   node tests/js/sdk_core.cjs --ws ws://127.0.0.1:PORT/connection/websocket --api http://127.0.0.1:PORT \
//        --api-key KEY --token JWT [--user USER] [--transport websocket|http_stream|sse]
//
// With --transport http_stream or sse the SDK connects to --api's /connection/http_stream or /connection/sse and
// sends later commands to its /emulation (SSE needs the `eventsource` package).
//
// The user defaults to the token's `sub` claim. Prints one line per check (`ok   name` or `FAIL name :: detail`)
// and then exactly `N passed, M failed`; exits 1 on any failure. Every wait is bounded, and a watchdog ends the
// run whatever happens, so the script always stops by itself.
'use strict';

const { loadDeps, createRun, sleep, waitFor, settle, apiClient } = require('./harness.cjs');

function parseArgs(argv) {
  const out = {};
  const known = {
    '--ws': 'ws', '--api': 'api', '--api-key': 'apiKey', '--token': 'token', '--user': 'user', '--transport': 'transport',
  };
  for (let i = 0; i < argv.length; i++) {
    const key = known[argv[i]];
    if (!key || i + 1 >= argv.length) {
      usage(`unexpected argument ${JSON.stringify(argv[i])}`);
    }
    out[key] = argv[++i];
  }
  for (const need of ['ws', 'api', 'apiKey', 'token']) {
    if (!out[need]) usage(`missing --${need === 'apiKey' ? 'api-key' : need}`);
  }
  out.api = out.api.replace(/\/+$/, '');
  if (!out.user) out.user = tokenSubject(out.token);
  if (!out.transport) out.transport = 'websocket';
  if (!['websocket', 'http_stream', 'sse'].includes(out.transport)) usage(`unknown --transport ${out.transport}`);
  return out;
}

function usage(msg) {
  console.error(`${msg}\nusage: node sdk_core.cjs --ws URL --api BASE --api-key KEY --token TOKEN [--user USER] ` +
    '[--transport websocket|http_stream|sse]');
  process.exit(2);
}

function tokenSubject(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(Buffer.from(payload, 'base64').toString('utf8')).sub;
  } catch (e) {
    usage(`cannot read the sub claim of the token (${e.message}); pass --user`);
  }
}

const { Centrifuge, WebSocket, EventSource } = loadDeps({ eventsource: process.argv.includes('sse') });
const args = parseArgs(process.argv.slice(2));
const CHANNEL = `chat:sdk-${process.pid}`;
const { check, clients, run } = createRun({ watchdogMs: 60000 });
const api = apiClient(args.api, args.apiKey);

const apiOk = (r) => r.status === 200 && r.json !== null && !r.json.error && typeof r.json.result === 'object';
const dataOf = (pubs) => pubs.map((p) => (p.data && p.data.n !== undefined ? p.data.n : p.data));

// A client that records what it sees.
function newClient(label) {
  // WebSocket: the --ws URL. Emulation: one transport at --api, its later commands to --api's /emulation.
  const endpoint = args.transport === 'websocket'
    ? args.ws
    : [{ transport: args.transport, endpoint: `${args.api}/connection/${args.transport}` }];
  const emulation = args.transport === 'websocket' ? {} : { emulationEndpoint: `${args.api}/emulation` };
  if (args.transport === 'sse') emulation.eventsource = EventSource;
  const c = new Centrifuge(endpoint, {
    ...emulation,
    token: args.token,
    websocket: WebSocket,
    name: `herald-sdk-core-${label}`,
    timeout: 5000,
    // The first reconnect waits 1 to 1.5 s: time enough to publish while the client is away.
    minReconnectDelay: 1000,
    maxReconnectDelay: 1500,
  });
  c.seen = { connected: [], connecting: [], disconnected: [], errors: [] };
  c.on('connected', (ctx) => c.seen.connected.push(ctx));
  c.on('connecting', (ctx) => c.seen.connecting.push(ctx));
  c.on('disconnected', (ctx) => c.seen.disconnected.push(ctx));
  c.on('error', (ctx) => c.seen.errors.push(ctx));
  clients.push(c);
  return c;
}

function newSub(c, channel, opts) {
  const s = c.newSubscription(channel, opts || {});
  s.seen = { subscribed: [], subscribing: [], unsubscribed: [], publications: [], joins: [], leaves: [], errors: [] };
  s.on('subscribed', (ctx) => s.seen.subscribed.push(ctx));
  s.on('subscribing', (ctx) => s.seen.subscribing.push(ctx));
  s.on('unsubscribed', (ctx) => s.seen.unsubscribed.push(ctx));
  s.on('publication', (ctx) => s.seen.publications.push(ctx));
  s.on('join', (ctx) => s.seen.joins.push(ctx));
  s.on('leave', (ctx) => s.seen.leaves.push(ctx));
  s.on('error', (ctx) => s.seen.errors.push(ctx));
  return s;
}

async function main() {
  const user = args.user;
  const target = args.transport === 'websocket' ? args.ws : `${args.api} (${args.transport})`;
  console.log(`# centrifuge-js over ${args.transport} against ${target}, user ${JSON.stringify(user)}, channel ${CHANNEL}`);

  // --- connect ---
  const c1 = newClient('a');
  c1.connect();
  const connected = await waitFor(() => c1.seen.connected.length === 1, 5000);
  const cctx = c1.seen.connected[0] || {};
  check('connect with the token', connected && typeof cctx.client === 'string' && cctx.client.length > 0 && cctx.transport === args.transport,
    { connected, ctx: cctx, state: c1.state, disconnected: c1.seen.disconnected, errors: c1.seen.errors.map((e) => e.error) });
  if (!connected) return;
  await channelFlow(c1, cctx.client);
  await unknownNamespace(c1);
}

// Subscribe, publications, presence, join/leave, history and recovery on one chat: channel.
async function channelFlow(c1, client1) {
  const user = args.user;

  // --- subscribe (recovery asked by the namespace's force_recovery, not by the client) ---
  const sub = newSub(c1, CHANNEL);
  sub.subscribe();
  const subscribed = await waitFor(() => sub.seen.subscribed.length === 1, 5000);
  const sctx = sub.seen.subscribed[0] || {};
  check('subscribe to a chat: channel', subscribed, { state: sub.state, unsubscribed: sub.seen.unsubscribed, errors: sub.seen.errors.map((e) => e.error) });
  if (!subscribed) return;
  check('force_recovery makes the subscription recoverable and positioned',
    sctx.recoverable === true && sctx.positioned === true && sctx.streamPosition && typeof sctx.streamPosition.epoch === 'string',
    sctx);
  const epoch0 = sctx.streamPosition ? sctx.streamPosition.epoch : undefined;

  // --- publication from the server API ---
  const pub1 = await api('publish', { channel: CHANNEL, data: { n: 1 } });
  check('API publish answers a result', apiOk(pub1) && typeof pub1.json.result.epoch === 'string',
    { status: pub1.status, body: pub1.text });
  const got1 = await waitFor(() => sub.seen.publications.some((p) => p.data && p.data.n === 1), 3000);
  const p1 = sub.seen.publications[0] || {};
  check('receive the API publication', got1 && sub.seen.publications.length === 1, dataOf(sub.seen.publications));
  check('the publication carries its stream offset',
    got1 && p1.offset !== undefined && Number(p1.offset) === Number(pub1.json && pub1.json.result.offset),
    { publication: p1, apiResult: pub1.json && pub1.json.result });

  // --- publish from the client ---
  const pubFromClient = await settle(sub.publish({ n: 'from-client' }), 5000);
  check('client publish is accepted', !pubFromClient.error, pubFromClient.error);
  const got2 = await waitFor(() => sub.seen.publications.some((p) => p.data && p.data.n === 'from-client'), 3000);
  const p2 = sub.seen.publications.find((p) => p.data && p.data.n === 'from-client') || {};
  check('receive the client publication', got2, dataOf(sub.seen.publications));
  check('a client publication carries the publisher info', p2.info && p2.info.user === user && p2.info.client === client1, p2.info);

  // --- presence ---
  const pres = await settle(sub.presence(), 5000);
  const presClients = pres.value && pres.value.clients ? Object.values(pres.value.clients) : [];
  check('presence lists the client and its user',
    presClients.length === 1 && presClients[0].user === user && presClients[0].client === client1,
    pres.error || pres.value);
  const stats = await settle(sub.presenceStats(), 5000);
  check('presence stats count one client, one user',
    stats.value && stats.value.numClients === 1 && stats.value.numUsers === 1, stats.error || stats.value);

  // --- a second client joins, then leaves ---
  const c2 = newClient('b');
  c2.connect();
  const c2Connected = await waitFor(() => c2.seen.connected.length === 1, 5000);
  const client2 = (c2.seen.connected[0] || {}).client;
  const sub2 = newSub(c2, CHANNEL);
  sub2.subscribe();
  const sub2Ok = await waitFor(() => sub2.seen.subscribed.length === 1, 5000);
  check('a second client connects and subscribes', c2Connected && sub2Ok, { state: c2.state, subState: sub2.state });
  const joined = await waitFor(() => sub.seen.joins.some((j) => j.info && j.info.client === client2), 3000);
  const join = sub.seen.joins.find((j) => j.info && j.info.client === client2) || {};
  check('the first client gets a join event for the second', joined && join.info.user === user && join.channel === CHANNEL,
    sub.seen.joins);
  const stats2 = await settle(sub.presenceStats(), 5000);
  check('presence stats count two clients', stats2.value && stats2.value.numClients === 2 && stats2.value.numUsers === 1,
    stats2.error || stats2.value);
  sub2.unsubscribe();
  const left = await waitFor(() => sub.seen.leaves.some((l) => l.info && l.info.client === client2), 3000);
  check('the first client gets a leave event when the second unsubscribes', left, sub.seen.leaves);
  c2.disconnect();
  await waitFor(() => c2.state === 'disconnected', 2000);

  // --- history ---
  const hist = await settle(sub.history({ limit: 100 }), 5000);
  const hpubs = (hist.value && hist.value.publications) || [];
  check('history returns the publications in order', JSON.stringify(dataOf(hpubs)) === JSON.stringify([1, 'from-client']),
    hist.error || dataOf(hpubs));
  check('history offsets are consecutive and match the stream top',
    hpubs.length === 2 && Number(hpubs[1].offset) === Number(hpubs[0].offset) + 1 &&
      Number(hist.value.offset) === Number(hpubs[1].offset) && hist.value.epoch === epoch0,
    hist.value && { offsets: hpubs.map((p) => p.offset), top: hist.value.offset, epoch: hist.value.epoch, subEpoch: epoch0 });

  // --- recovery after the SDK's own reconnect ---
  const beforeCount = sub.seen.publications.length;
  const connectedBefore = c1.seen.connected.length;
  const subscribedBefore = sub.seen.subscribed.length;
  const connectingBefore = c1.seen.connecting.length;
  const disc = await api('disconnect', { user, disconnect: { code: 3011, reason: 'force reconnect' } });
  check('API disconnect answers a result', apiOk(disc), { status: disc.status, body: disc.text });
  const dropped = await waitFor(() => c1.seen.connecting.length > connectingBefore, 3000);
  const dctx = c1.seen.connecting[connectingBefore] || {};
  check('the server drops the connection with the reconnect code', dropped && dctx.code === 3011,
    { dropped, connecting: c1.seen.connecting.slice(connectingBefore), disconnected: c1.seen.disconnected });
  if (!dropped) return;
  const missed = [];
  let awayForAll = true;
  for (let n = 2; n <= 6; n++) {
    if (c1.state === 'connected') awayForAll = false;
    const r = await api('publish', { channel: CHANNEL, data: { n } });
    if (!apiOk(r)) awayForAll = false;
    missed.push(r.json && r.json.result);
  }
  check('5 publications made while the client is away', awayForAll && c1.state !== 'connected', { state: c1.state, results: missed });
  const reconnected = await waitFor(() => c1.seen.connected.length > connectedBefore, 6000);
  check('the SDK reconnects by itself', reconnected, { state: c1.state, connecting: c1.seen.connecting.slice(connectingBefore) });
  const resubscribed = await waitFor(() => sub.seen.subscribed.length > subscribedBefore, 5000);
  const rctx = sub.seen.subscribed[subscribedBefore] || {};
  check('the resubscription reports recovered: true, wasRecovering: true',
    resubscribed && rctx.recovered === true && rctx.wasRecovering === true, rctx);
  await waitFor(() => sub.seen.publications.length >= beforeCount + 5, 3000);
  await sleep(300); // time for a duplicate to show up, if one were coming
  const recovered = sub.seen.publications.slice(beforeCount);
  check('exactly the 5 missed publications arrive, in order, once each',
    JSON.stringify(dataOf(recovered)) === JSON.stringify([2, 3, 4, 5, 6]), dataOf(recovered));
  const offs = recovered.map((p) => Number(p.offset));
  check('recovered publications continue the stream offsets',
    offs.length === 5 && offs.every((o, i) => o === Number(hpubs[1] && hpubs[1].offset) + 1 + i), offs);
  check('the subscription keeps its epoch across the reconnect',
    epoch0 !== undefined && rctx.streamPosition && rctx.streamPosition.epoch === epoch0, { before: sctx.streamPosition, after: rctx.streamPosition });

  // --- live delivery still works after the recovery ---
  const pub7 = await api('publish', { channel: CHANNEL, data: { n: 7 } });
  const got7 = apiOk(pub7) && await waitFor(() => sub.seen.publications.some((p) => p.data && p.data.n === 7), 3000);
  check('live publications flow after the recovery', got7, dataOf(sub.seen.publications.slice(beforeCount)));
  const histAll = await settle(sub.history({ limit: 100 }), 5000);
  check('history holds every publication once, in order',
    JSON.stringify(dataOf((histAll.value && histAll.value.publications) || [])) === JSON.stringify([1, 'from-client', 2, 3, 4, 5, 6, 7]),
    histAll.error || dataOf(histAll.value.publications || []));

}

// A subscription in a namespace the server does not know is refused with 102, and only the subscription fails.
async function unknownNamespace(c1) {
  const bad = newSub(c1, `nosuchnamespace:sdk-${process.pid}`);
  bad.subscribe();
  const rejected = await waitFor(() => bad.seen.unsubscribed.length > 0, 5000);
  const uctx = bad.seen.unsubscribed[0] || {};
  check('subscribing in an unknown namespace fails with code 102', rejected && uctx.code === 102,
    { state: bad.state, unsubscribed: bad.seen.unsubscribed, errors: bad.seen.errors.map((e) => e.error) });
  const others = Object.values(c1.subscriptions()).filter((s) => s !== bad);
  check('the client and its other subscriptions stay up after the refusal',
    c1.state === 'connected' && others.every((s) => s.state === 'subscribed'),
    { client: c1.state, subs: others.map((s) => [s.channel, s.state]) });
}

run(main);
