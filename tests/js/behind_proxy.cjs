#!/usr/bin/env node
// Herald's own end-to-end test of clients that reach several nodes only through a load balancer (run by
// crates/herald/tests/behind_proxy.rs with the recipes in examples/proxies/). Real clients on every transport:
// the centrifuge JS SDK over websocket, http_stream and sse (emulation POSTs go through the proxy too, to any
// node), curl on uni_sse (resuming with Last-Event-ID) and on uni_http_stream (resuming with recover/offset/epoch
// in its connect request). Publications are made through the proxy's server API at a steady rate; the script
// counts what the API acknowledged and checks that every client received every acknowledged publication exactly
// once, in order, or was told that it could not recover (counted apart; expected none).
//
//   node tests/js/behind_proxy.cjs --base https://localhost:PORT --api-key KEY --token JWT --channel CH \
//        [--clients 1] [--uni 1] [--seconds 5] [--rate 20] [--settle 6000] [--ready-timeout 20000] [--ca FILE]
//        [--idle SECONDS] [--started-file FILE]
//
// --idle: after every client has subscribed, stay silent that long before publishing, then also check that no
// client had to reconnect (the proxy kept the idle connections open because Herald's pings crossed it).
// --started-file: created when publishing starts (a test restarts nodes from then on).
// --clients is per SDK transport, --uni per curl transport. TLS: pass the proxy's certificate with --ca (for
// curl) and NODE_EXTRA_CA_CERTS (for Node). The run starts publishing after every client has subscribed; prints
// `ACKED [n, ...]` (the acknowledged numbers) before its checks, then exactly `N passed, M failed`.
'use strict';

const { spawn } = require('child_process');
const { loadDeps, createRun, sleep, waitFor } = require('./harness.cjs');

const { Centrifuge, WebSocket, EventSource } = loadDeps({ eventsource: true });

const args = {};
for (let i = 2; i + 1 < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const need of ['base', 'api-key', 'token', 'channel']) {
  if (!args[need]) {
    console.error(`missing --${need}`);
    process.exit(2);
  }
}
const base = args.base.replace(/\/$/, '');
const channel = args.channel;
const perSdk = Number(args.clients || 1);
const perUni = Number(args.uni || 1);
const seconds = Number(args.seconds || 5);
const rate = Number(args.rate || 20);
const settleMs = Number(args.settle || 6000);
const readyMs = Number(args['ready-timeout'] || 20000);
const caArgs = args.ca ? ['--cacert', args.ca] : [];
const idleMs = Number(args.idle || 0) * 1000;

const { check, run } = createRun({ watchdogMs: (seconds * 1000 + settleMs + readyMs) * 2 + idleMs + 30000 });

// One client's record: what it received (publication numbers), whether it was told it could not recover, how
// many connections it opened.
function record(transport) {
  return { transport, got: [], told: 0, connects: 0, ready: false, close: () => {} };
}

function sdkClient(transport) {
  const r = record(transport);
  const endpoint = transport === 'websocket'
    ? `${base.replace(/^http/, 'ws')}/connection/websocket`
    : [{ transport, endpoint: `${base}/connection/${transport}` }];
  const c = new Centrifuge(endpoint, {
    token: args.token, websocket: WebSocket, eventsource: EventSource, emulationEndpoint: `${base}/emulation`,
    minReconnectDelay: 200, maxReconnectDelay: 3000,
  });
  const sub = c.newSubscription(channel, { recoverable: true, positioned: true });
  sub.on('publication', (ctx) => r.got.push(ctx.data.n));
  c.on('connected', () => r.connects++);
  sub.on('subscribed', (ctx) => {
    r.ready = true;
    if (ctx.wasRecovering && !ctx.recovered) r.told++;
  });
  c.connect();
  sub.subscribe();
  r.close = () => c.disconnect();
  return r;
}

// curl reading a unidirectional stream, restarted after every end; `resume()` gives the extra curl arguments
// that make the next connection resume where this one stopped.
function curlClient(transport, argsFor, onLine, separator) {
  const r = record(transport);
  let stopped = false;
  let proc = null;
  const start = () => {
    if (stopped) return;
    r.connects++;
    proc = spawn('curl', ['-sN', '--max-time', '300', ...caArgs, ...argsFor()]);
    let buf = '';
    proc.stdout.on('data', (d) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf(separator)) >= 0) {
        const chunk = buf.slice(0, i);
        buf = buf.slice(i + separator.length);
        onLine(r, chunk);
      }
    });
    proc.on('close', () => setTimeout(start, 300));
  };
  start();
  r.close = () => { stopped = true; if (proc) proc.kill(); };
  return r;
}

// A unidirectional push: a connect (with its subscriptions) or a publication.
function takePush(r, state, m) {
  if (m.connect) {
    const sub = m.connect.subs && m.connect.subs[channel];
    if (sub) {
      r.ready = true;
      if (sub.epoch) state.epoch = sub.epoch;
      if (state.resuming && !sub.recovered) r.told++;
      if (sub.publications) for (const p of sub.publications) takePub(r, state, p);
    }
    return;
  }
  if (m.channel === channel && m.pub) takePub(r, state, m.pub);
}

function takePub(r, state, p) {
  if (p.offset) state.offset = p.offset;
  if (p.data && p.data.n) r.got.push(p.data.n);
}

function uniSse() {
  const state = { lastId: null, resuming: false };
  return curlClient('uni_sse', () => {
    const q = encodeURIComponent(JSON.stringify({ token: args.token, subs: { [channel]: {} } }));
    const extra = state.lastId ? ['-H', `Last-Event-ID: ${state.lastId}`] : [];
    state.resuming = Boolean(state.lastId);
    return [`${base}/connection/uni_sse?cf_connect=${q}`, ...extra];
  }, (r, ev) => {
    for (const line of ev.split('\n')) {
      if (line.startsWith('id:')) state.lastId = line.slice(3).trim();
      if (line.startsWith('data:')) {
        try { takePush(r, state, JSON.parse(line.slice(5))); } catch (_) { /* a comment or ping */ }
      }
    }
  }, '\n\n');
}

function uniHttpStream() {
  const state = { offset: 0, epoch: null, resuming: false };
  return curlClient('uni_http_stream', () => {
    const sub = state.epoch ? { recover: true, offset: state.offset, epoch: state.epoch } : {};
    state.resuming = Boolean(state.epoch);
    const body = JSON.stringify({ token: args.token, subs: { [channel]: sub } });
    return ['-X', 'POST', '-H', 'Content-Type: application/json', '--data-binary', body, `${base}/connection/uni_http_stream`];
  }, (r, line) => {
    if (!line.trim()) return;
    try { takePush(r, state, JSON.parse(line)); } catch (_) { /* not JSON */ }
  }, '\n');
}

async function publish(n) {
  try {
    const res = await fetch(`${base}/api/publish`, {
      method: 'POST',
      headers: { 'X-API-Key': args['api-key'], 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel, data: { n } }),
      signal: AbortSignal.timeout(3000),
    });
    const j = await res.json();
    return res.ok && j.result !== undefined && !j.error;
  } catch (_) {
    return false;
  }
}

run(async () => {
  const clients = [];
  for (let i = 0; i < perSdk; i++) {
    for (const t of ['websocket', 'http_stream', 'sse']) clients.push(sdkClient(t));
  }
  for (let i = 0; i < perUni; i++) clients.push(uniSse(), uniHttpStream());
  const allReady = await waitFor(() => clients.every((c) => c.ready), readyMs);
  check(`all ${clients.length} clients subscribed through the proxy`, allReady,
    `${clients.filter((c) => !c.ready).map((c) => c.transport).join(', ')} not subscribed`);
  await sleep(300);
  if (idleMs > 0) {
    await sleep(idleMs);
    const reconnected = clients.filter((c) => c.connects !== 1);
    check(`no client reconnected while idle for ${idleMs / 1000} s`, reconnected.length === 0,
      reconnected.map((c) => `${c.transport}: ${c.connects} connections`).join(', '));
  }
  if (args['started-file']) require('fs').writeFileSync(args['started-file'], String(Date.now()));

  const acked = [];
  const total = Math.max(1, Math.round(seconds * rate));
  const started = Date.now();
  for (let n = 1; n <= total; n++) {
    if (await publish(n)) acked.push(n);
    const due = started + (n * 1000) / rate;
    if (due > Date.now()) await sleep(due - Date.now());
  }
  const last = acked[acked.length - 1];
  await waitFor(() => clients.every((c) => c.told > 0 || c.got.includes(last)), settleMs);
  await sleep(300);
  console.log(`ACKED ${JSON.stringify(acked)}`);
  check(`the API acknowledged publications through the proxy (${acked.length}/${total})`, acked.length > 0, 'none');

  const byTransport = {};
  for (const c of clients) {
    const t = (byTransport[c.transport] ||= { clients: 0, complete: 0, told: 0, connects: 0, bad: [] });
    t.clients++;
    t.connects += c.connects;
    const seen = new Set(c.got);
    const dup = c.got.length - seen.size;
    const missing = acked.filter((n) => !seen.has(n));
    const ordered = c.got.every((v, i) => i === 0 || v > c.got[i - 1]);
    if (c.told > 0) t.told++;
    else if (missing.length === 0 && dup === 0 && ordered) t.complete++;
    else t.bad.push(`missing ${missing.length} (${missing.slice(0, 5)}), duplicates ${dup}, ordered ${ordered}`);
  }
  for (const [t, s] of Object.entries(byTransport)) {
    console.log(`  ${t}: ${s.clients} clients, ${s.complete} complete, ${s.told} told they could not recover, ${s.connects} connections`);
    check(`${t}: every client got every acknowledged publication once, in order, or was told`,
      s.bad.length === 0, `${s.bad.length} clients lost some silently: ${s.bad.slice(0, 3).join(' | ')}`);
    // History covers every gap these runs make, so a client that had to be told is a failure too.
    check(`${t}: no client needed to be told it could not recover`, s.told === 0, `${s.told} told`);
  }
  clients.forEach((c) => c.close());
});
