#!/usr/bin/env node
// Herald's own end-to-end test of several nodes on one Redis, driven by the real centrifuge JS SDK (npm
// `centrifuge@5`) over WebSocket: clients on two nodes see the same channel. Run by
// crates/herald/tests/cluster_redis.rs. It needs two servers on one Redis with a `chat` namespace that allows
// subscribe, publish for subscribers, history, presence and join/leave, with force_recovery.
//
//   node tests/js/sdk_cluster.cjs --a http://127.0.0.1:PORT_A --b http://127.0.0.1:PORT_B --api-key KEY \
//        --token-alice JWT --token-bob JWT
//
// Prints one line per check (`ok   name` or `FAIL name :: detail`) and then exactly `N passed, M failed`; exits 1
// on any failure. Every wait is bounded and a watchdog ends the run, so the script always stops by itself.
'use strict';

let Centrifuge;
let WebSocket;
try {
  Centrifuge = require('centrifuge').Centrifuge;
  WebSocket = require('ws');
} catch (e) {
  console.log(`cannot load the JS dependencies (${e.message}): run \`npm ci --prefix tests/js\``);
  console.log('0 passed, 1 failed');
  process.exit(2);
}

const args = {};
for (let i = 2; i + 1 < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const need of ['a', 'b', 'api-key', 'token-alice', 'token-bob']) {
  if (!args[need]) {
    console.error(`missing --${need}`);
    process.exit(2);
  }
}
const CHANNEL = `chat:cluster-${process.pid}`;
const N = 20;
let passed = 0;
let failed = 0;
const clients = [];

function check(name, ok, detail) {
  if (ok) passed++; else failed++;
  console.log(ok ? `ok   ${name}` : `FAIL ${name} :: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`);
  return ok;
}

function finish() {
  for (const c of clients) {
    try { c.disconnect(); } catch (_) { /* closing anyway */ }
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function waitFor(pred, ms) {
  const end = Date.now() + ms;
  for (;;) {
    if (pred()) return true;
    if (Date.now() >= end) return false;
    await sleep(10);
  }
}

async function api(base, method, body) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 5000);
  try {
    const res = await fetch(`${base}/api/${method}`, {
      method: 'POST',
      headers: { 'X-API-Key': args['api-key'], 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    return await res.json();
  } catch (e) {
    return { error: String(e) };
  } finally {
    clearTimeout(timer);
  }
}

function client(base, token) {
  const c = new Centrifuge(base.replace(/^http/, 'ws') + '/connection/websocket', { token, websocket: WebSocket, timeout: 5000 });
  clients.push(c);
  return c;
}

function sub(c, opts) {
  const s = c.newSubscription(CHANNEL, opts || {});
  s.seen = { subscribed: [], publications: [], joins: [], leaves: [] };
  s.on('subscribed', (ctx) => s.seen.subscribed.push(ctx));
  s.on('publication', (ctx) => s.seen.publications.push(ctx));
  s.on('join', (ctx) => s.seen.joins.push(ctx));
  s.on('leave', (ctx) => s.seen.leaves.push(ctx));
  return s;
}
const ns = (s) => s.seen.publications.map((p) => p.data && p.data.n);
const offsets = (s) => s.seen.publications.map((p) => p.offset);

async function main() {
  const alice = client(args.a, args['token-alice']);
  const bob = client(args.b, args['token-bob']);
  alice.connect();
  bob.connect();
  const sa = sub(alice, { recoverable: true, positioned: true, joinLeave: true });
  const sb = sub(bob);
  // Alice first: bob's join is published when bob subscribes, and reaches only subscribers already there.
  sa.subscribe();
  await waitFor(() => sa.seen.subscribed.length === 1, 5000);
  sb.subscribe();
  const up = await waitFor(() => sa.seen.subscribed.length === 1 && sb.seen.subscribed.length === 1, 5000);
  if (!check('alice on node A and bob on node B subscribe', up, { a: alice.state, b: bob.state })) return;

  for (let n = 1; n <= N; n++) await api(args.b, 'publish', { channel: CHANNEL, data: { n } });
  const want = Array.from({ length: N }, (_, i) => i + 1);
  await waitFor(() => sa.seen.publications.length >= N && sb.seen.publications.length >= N, 5000);
  check(`${N} publications through node B reach both nodes in order`,
    JSON.stringify(ns(sa)) === JSON.stringify(want) && JSON.stringify(ns(sb)) === JSON.stringify(want),
    { a: ns(sa), b: ns(sb) });
  check('with offsets 1..N on the node the publisher did not use', JSON.stringify(offsets(sa)) === JSON.stringify(want), offsets(sa));

  let err = null;
  try { await sb.publish({ n: N + 1 }); } catch (e) { err = e; }
  check('a client publication on node B reaches node A', !err && await waitFor(() => ns(sa).includes(N + 1), 3000), err || ns(sa));

  check('alice on A sees bob join on B', sa.seen.joins.some((j) => j.info && j.info.user === 'bob'), sa.seen.joins);
  const pres = await api(args.a, 'presence', { channel: CHANNEL });
  const users = Object.values((pres.result && pres.result.presence) || {}).map((c) => c.user).sort();
  check('presence on node A lists the clients of both nodes', JSON.stringify(users) === '["alice","bob"]', pres);

  // alice leaves A, misses three publications made through A, and comes back on B.
  const epoch = sa.seen.subscribed[0].streamPosition && sa.seen.subscribed[0].streamPosition.epoch;
  const last = sa.seen.publications[sa.seen.publications.length - 1].offset;
  alice.disconnect();
  check('bob on B sees alice leave from A', await waitFor(() => sb.seen.leaves.some((l) => l.info && l.info.user === 'alice'), 3000),
    sb.seen.leaves);
  for (let n = N + 2; n <= N + 4; n++) await api(args.a, 'publish', { channel: CHANNEL, data: { n } });
  const alice2 = client(args.b, args['token-alice']);
  alice2.connect();
  const sa2 = sub(alice2, { recoverable: true, positioned: true, since: { offset: last, epoch } });
  sa2.subscribe();
  await waitFor(() => sa2.seen.subscribed.length === 1 && sa2.seen.publications.length >= 3, 5000);
  const ctx = sa2.seen.subscribed[0] || {};
  check('alice moving to node B recovers exactly what she missed', ctx.recovered === true &&
    JSON.stringify(ns(sa2)) === JSON.stringify([N + 2, N + 3, N + 4]), { recovered: ctx.recovered, got: ns(sa2), since: { last, epoch } });

  const ha = await api(args.a, 'history', { channel: CHANNEL, limit: 100 });
  const hb = await api(args.b, 'history', { channel: CHANNEL, limit: 100 });
  const hns = (h) => ((h.result && h.result.publications) || []).map((p) => p.data && p.data.n);
  check('history is the same from either node', hns(ha).length === N + 4 && JSON.stringify(hns(ha)) === JSON.stringify(hns(hb)),
    { a: hns(ha), b: hns(hb) });
}

setTimeout(() => { check('finished within 60 s', false, 'watchdog'); finish(); }, 60000).unref();
main().then(finish, (e) => { check('no exception', false, e && e.stack || String(e)); finish(); });
