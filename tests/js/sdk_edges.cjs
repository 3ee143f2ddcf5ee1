#!/usr/bin/env node
// Edge cases of the client protocol that the real centrifuge JS SDK (npm `centrifuge@5`, over WebSocket) must get
// through against Herald, one per --case:
//
//   nbf            a getToken that first returns a token whose `nbf` is a minute ahead and then a valid one, for
//                  the connection and for a subscription to a private channel: the server answers 109 (token
//                  expired), the SDK calls getToken again and connects (subscribes), with no disconnect 3500 and
//                  no unsubscribe.
//   empty-channel  presence stats and presence of a channel with nobody in it: numClients and numUsers are 0
//                  (not undefined) and clients is an empty object; the server API's presence_stats answers zeros.
//
//   node tests/js/sdk_edges.cjs --ws ws://127.0.0.1:PORT/connection/websocket --api http://127.0.0.1:PORT \
//        --api-key KEY --secret HMAC_SECRET --case nbf|empty-channel
//
// The server needs the HMAC secret in client.token.hmac_secret_key, and for empty-channel a `stats` namespace with
// presence and allow_presence_for_client. Prints one line per check (`ok   name` or `FAIL name :: detail`) and
// then exactly `N passed, M failed`; exits 1 on any failure. Every wait is bounded and a watchdog ends the run.
'use strict';

const crypto = require('crypto');
const { loadDeps, createRun, sleep, waitFor, settle, apiClient } = require('./harness.cjs');

function parseArgs(argv) {
  const out = {};
  const known = { '--ws': 'ws', '--api': 'api', '--api-key': 'apiKey', '--secret': 'secret', '--case': 'case' };
  for (let i = 0; i < argv.length; i++) {
    const key = known[argv[i]];
    if (!key || i + 1 >= argv.length) usage(`unexpected argument ${JSON.stringify(argv[i])}`);
    out[key] = argv[++i];
  }
  for (const need of ['ws', 'api', 'apiKey', 'secret', 'case']) {
    if (!out[need]) usage(`missing --${need === 'apiKey' ? 'api-key' : need}`);
  }
  if (!CASES[out.case]) usage(`unknown --case ${out.case}`);
  out.api = out.api.replace(/\/+$/, '');
  return out;
}

function usage(msg) {
  console.error(`${msg}\nusage: node sdk_edges.cjs --ws URL --api BASE --api-key KEY --secret SECRET ` +
    `--case ${Object.keys(CASES).join('|')}`);
  process.exit(2);
}

// An HS256 JWT signed with --secret.
function hs256(claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  const sig = crypto.createHmac('sha256', args.secret).update(unsigned).digest('base64url');
  return `${unsigned}.${sig}`;
}

const nowSecs = () => Math.floor(Date.now() / 1000);

function newClient(label, opts) {
  const c = new Centrifuge(args.ws, {
    websocket: WebSocket,
    name: `herald-sdk-edges-${label}`,
    timeout: 5000,
    minReconnectDelay: 100,
    maxReconnectDelay: 500,
    ...opts,
  });
  c.seen = { connected: [], disconnected: [], errors: [] };
  c.on('connected', (ctx) => c.seen.connected.push(ctx));
  c.on('disconnected', (ctx) => c.seen.disconnected.push(ctx));
  c.on('error', (ctx) => c.seen.errors.push(ctx));
  clients.push(c);
  return c;
}

// Connection and subscription tokens whose nbf is ahead: 109, a new token, connected (subscribed).
async function nbfCase() {
  const user = `nbf-${process.pid}`;
  const ahead = 60; // beyond any sensible leeway
  const connTokens = [];
  const c = newClient('nbf', {
    getToken: async () => {
      const now = nowSecs();
      const claims = connTokens.length === 0
        ? { sub: user, nbf: now + ahead, exp: now + 3600 }
        : { sub: user, exp: now + 3600 };
      connTokens.push(claims);
      return hs256(claims);
    },
  });
  c.connect();
  const connected = await waitFor(() => c.seen.connected.length === 1, 5000);
  const codes = c.seen.errors.map((e) => e.error && e.error.code);
  check('a connection token with nbf ahead is answered 109 (token expired)',
    c.seen.errors.some((e) => e.type === 'connect' && e.error && e.error.code === 109), { errors: c.seen.errors });
  check('the SDK fetches a new token and connects',
    connected && connTokens.length === 2 && connTokens[0].nbf !== undefined && connTokens[1].nbf === undefined,
    { connected, state: c.state, getTokenCalls: connTokens.length, errorCodes: codes, disconnected: c.seen.disconnected });
  check('no disconnect on the way (no 3500 invalid token)', c.seen.disconnected.length === 0, c.seen.disconnected);
  if (!connected) return;

  const channel = `$nbf-${process.pid}`;
  const subTokens = [];
  const sub = c.newSubscription(channel, {
    minResubscribeDelay: 100,
    maxResubscribeDelay: 500,
    getToken: async (ctx) => {
      const now = nowSecs();
      const claims = subTokens.length === 0
        ? { sub: user, channel: ctx.channel, nbf: now + ahead, exp: now + 3600 }
        : { sub: user, channel: ctx.channel, exp: now + 3600 };
      subTokens.push(claims);
      return hs256(claims);
    },
  });
  const seen = { subscribed: [], unsubscribed: [], errors: [] };
  sub.on('subscribed', (ctx) => seen.subscribed.push(ctx));
  sub.on('unsubscribed', (ctx) => seen.unsubscribed.push(ctx));
  sub.on('error', (ctx) => seen.errors.push(ctx));
  sub.subscribe();
  const subscribed = await waitFor(() => seen.subscribed.length === 1, 5000);
  check('a subscription token with nbf ahead is answered 109 (token expired)',
    seen.errors.some((e) => e.error && e.error.code === 109), { errors: seen.errors });
  check('the SDK fetches a new subscription token and subscribes',
    subscribed && subTokens.length === 2, { subscribed, state: sub.state, getTokenCalls: subTokens.length, unsubscribed: seen.unsubscribed });
  check('the subscription is never refused for good (no unsubscribe)', seen.unsubscribed.length === 0, seen.unsubscribed);
  check('the connection stays up', c.state === 'connected' && c.seen.disconnected.length === 0,
    { state: c.state, disconnected: c.seen.disconnected });
}

// A channel nobody is in: the SDK reads zeros and an empty presence map, not undefined.
async function emptyChannelCase() {
  const user = `empty-${process.pid}`;
  const c = newClient('empty', { token: hs256({ sub: user, exp: nowSecs() + 3600 }) });
  c.connect();
  const connected = await waitFor(() => c.seen.connected.length === 1, 5000);
  check('connect', connected, { state: c.state, errors: c.seen.errors, disconnected: c.seen.disconnected });
  if (!connected) return;
  const channel = `stats:empty-${process.pid}`;

  const stats = await settle(c.presenceStats(channel), 5000);
  check('presenceStats of an empty channel: numClients === 0 and numUsers === 0',
    stats.value && stats.value.numClients === 0 && stats.value.numUsers === 0, stats.error || stats.value);

  const pres = await settle(c.presence(channel), 5000);
  check('presence of an empty channel: clients is an empty object',
    pres.value && pres.value.clients !== null && typeof pres.value.clients === 'object' &&
      Object.keys(pres.value.clients).length === 0,
    pres.error || { clients: pres.value && pres.value.clients === undefined ? 'undefined' : pres.value.clients });

  const r = await api('presence_stats', { channel });
  check('server API presence_stats of an empty channel answers num_clients 0 and num_users 0',
    r.status === 200 && r.json && r.json.result && r.json.result.num_clients === 0 && r.json.result.num_users === 0,
    { status: r.status, body: r.text });
}

const CASES = { nbf: nbfCase, 'empty-channel': emptyChannelCase };
const { Centrifuge, WebSocket } = loadDeps();
const args = parseArgs(process.argv.slice(2));
const { check, clients, run } = createRun({ watchdogMs: 30000 });
const api = apiClient(args.api, args.apiKey);

console.log(`# centrifuge-js against ${args.ws}, case ${args.case}`);
run(CASES[args.case]);
