#!/usr/bin/env node
// Herald end-to-end tests in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
// playwright-core. Run by crates/herald/tests/browser.rs, which starts Herald and mints the tokens; by hand:
//
//   node tests/browser/browser_e2e.cjs --base http://127.0.0.1:PORT --api-key KEY \
//        --uni-token JWT --uni-user U --uni-channel chat:room   (the token must carry channels: [chat:room])
//        --ws-token JWT --ws-user U2 --sse-token JWT --sse-user U3 [--out-dir DIR] [--chromium PATH]
//
// The server needs a `chat` namespace with history (size >= 100, ttl >= 60 s), force_recovery, presence and
// subscribe/publish/presence for clients, and the websocket, sse (emulation) and uni_sse transports on. Use three
// different users: the checks disconnect them one at a time through the server API.
//
// The page is a static file (tests/browser/page.html) served through page.route at a URL of Herald's own origin,
// so that every request it makes is same-origin to Herald on loopback; the centrifuge SDK is injected from
// centrifuge/dist/centrifuge.js. Nothing leaves 127.0.0.1 (Chromium's resolver maps every other host to nothing).
//
// Prints `ok   name` or `FAIL name :: detail` per check, then `N passed, M failed`; exits 1 on any failure. Every
// wait is bounded and a watchdog ends the run, so it always stops by itself.
'use strict';

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const jsRequire = createRequire(path.join(__dirname, '..', 'js', 'package.json'));
const WATCHDOG_MS = 90000;
const started = Date.now();

function usage(msg) {
  console.error(`${msg}\nusage: node browser_e2e.cjs --base URL --api-key KEY --uni-token JWT --uni-user U ` +
    '--uni-channel CH --ws-token JWT --ws-user U --sse-token JWT --sse-user U [--out-dir DIR] [--chromium PATH]');
  process.exit(2);
}

function parseArgs(argv) {
  const names = ['base', 'api-key', 'uni-token', 'uni-user', 'uni-channel', 'ws-token', 'ws-user', 'sse-token',
    'sse-user', 'out-dir', 'chromium'];
  const out = { 'out-dir': path.join(__dirname, '..', '..', 'target', 'test-output', 'browser'), chromium: '/usr/bin/chromium' };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, '');
    if (!argv[i].startsWith('--') || !names.includes(name) || i + 1 >= argv.length) usage(`unexpected argument ${JSON.stringify(argv[i])}`);
    out[name] = argv[++i];
  }
  for (const need of names) if (!out[need]) usage(`missing --${need}`);
  out.base = out.base.replace(/\/+$/, '');
  return out;
}

const args = parseArgs(process.argv.slice(2));

let chromium;
try {
  chromium = jsRequire('playwright-core').chromium;
} catch (e) {
  console.log(`FAIL setup :: cannot load playwright-core (${e.message}): run \`npm ci --prefix tests/js\``);
  console.log('0 passed, 1 failed');
  process.exit(2);
}
// The SDK's browser bundle (it sets globalThis.Centrifuge); the package's exports do not list it, so by path.
const centrifugeBundle = path.join(__dirname, '..', 'js', 'node_modules', 'centrifuge', 'dist', 'centrifuge.js');
if (!fs.existsSync(centrifugeBundle)) {
  console.log(`FAIL setup :: missing ${centrifugeBundle}: run \`npm ci --prefix tests/js\``);
  console.log('0 passed, 1 failed');
  process.exit(2);
}
if (!fs.existsSync(args.chromium)) {
  console.log(`FAIL setup :: no Chromium at ${args.chromium}: install it (apt-get install -y chromium chromium-driver; .ci/run does)`);
  console.log('0 passed, 1 failed');
  process.exit(2);
}

let passed = 0;
let failed = 0;
let browser = null;

function check(name, ok, detail) {
  if (ok) {
    passed++;
    console.log(`ok   ${name}`);
  } else {
    failed++;
    console.log(`FAIL ${name} :: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`);
  }
  return ok;
}

function note(text) {
  console.log(`#    ${text}`);
}

let finishing = false;
async function finish(code) {
  if (finishing) return;
  finishing = true;
  if (browser) {
    await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
  }
  console.log(`# took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code !== undefined ? code : failed === 0 && passed > 0 ? 0 : 1);
}

setTimeout(() => {
  check('watchdog', false, `the run took longer than ${WATCHDOG_MS} ms`);
  finish(1);
}, WATCHDOG_MS);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Polls the async or sync predicate every 25 ms until it holds or ms pass; returns whether it held.
async function waitFor(pred, ms) {
  const end = Date.now() + ms;
  for (;;) {
    if (await pred()) return true;
    if (Date.now() >= end) return false;
    await sleep(25);
  }
}

const { api, apiOk } = require('./server_api.cjs').serverApi(args.base, args['api-key']);

async function publishAll(channel, ns, tag) {
  const bad = [];
  for (const n of ns) {
    const r = await api('publish', { channel, data: { n, from: tag } });
    if (!apiOk(r)) bad.push(`n=${n}: ${r.status} ${r.text}`);
  }
  return bad;
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// Page-side state of one section (T.uni, T.ws, T.sse), without the live objects.
async function state(page, name) {
  return page.evaluate((n) => {
    const s = window.T[n];
    if (!s) return null;
    const out = {};
    for (const [k, v] of Object.entries(s)) {
      if (typeof v !== 'function' && !['es', 'client', 'sub'].includes(k)) out[k] = v;
    }
    if (s.es) out.readyState = s.es.readyState;
    return JSON.parse(JSON.stringify(out));
  }, name);
}

async function main() {
  const base = args.base;
  fs.mkdirSync(args['out-dir'], { recursive: true });

  browser = await chromium.launch({
    executablePath: args.chromium,
    headless: true,
    timeout: 30000,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage',
      // Loopback only: any other host name resolves to nothing.
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost'],
  });
  note(`chromium ${browser.version()} (${args.chromium}), playwright-core ${jsRequire('playwright-core/package.json').version}`);
  // Behind a proxy that terminates TLS with the test's self-signed certificate (behind_proxy.rs): trust it for
  // this context only.
  const context = await browser.newContext({
    viewport: { width: 1100, height: 1000 }, ignoreHTTPSErrors: base.startsWith('https:'),
  });
  const page = await context.newPage();
  page.setDefaultTimeout(10000);

  // Everything the page does that could go wrong without an exception reaching us.
  const pageErrors = [];
  const consoleErrors = [];
  const foreignRequests = [];
  const uniRequests = [];
  page.on('pageerror', (e) => pageErrors.push(String(e && e.stack || e)));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const where = (m.location() && m.location().url) || '';
    // Herald serves no favicon; Chromium asks for one and logs the 404.
    if (/\/favicon\.ico$/.test(where) && /404/.test(m.text())) return;
    consoleErrors.push(`${m.text()} (${where})`);
  });
  page.on('request', (req) => {
    const u = req.url();
    if (!u.startsWith(base + '/') && !u.startsWith(base.replace(/^http/, 'ws') + '/') && !u.startsWith('data:')) {
      foreignRequests.push(u);
    }
    if (u.includes('/connection/uni_sse')) {
      uniRequests.push(req.allHeaders().then((h) => ({ at: Date.now(), lastEventId: h['last-event-id'] || null }), () => ({ at: Date.now(), lastEventId: '?' })));
    }
  });

  // Load a real response from Herald's own origin (so the document is same-origin with Herald and, to Chromium's
  // Local Network Access checks, a loopback document like any page Herald's host would serve), then put the test
  // page into that document. (A page fulfilled through page.route counts as public: Chromium then blocks its
  // WebSocket to 127.0.0.1 with ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS.)
  const resp = await page.goto(`${base}/health`, { waitUntil: 'load' });
  await page.setContent(fs.readFileSync(path.join(__dirname, 'page.html'), 'utf8'), { waitUntil: 'load' });
  check('page loads on Herald\'s origin', resp && resp.status() === 200 && (await page.evaluate(() => typeof window.T)) === 'object'
    && (await page.evaluate(() => location.origin)) === base, `status ${resp && resp.status()}, origin ${await page.evaluate(() => location.origin)}`);
  await page.addScriptTag({ path: centrifugeBundle });
  check('centrifuge SDK bundle loads in the page', (await page.evaluate(() => typeof window.Centrifuge)) === 'function',
    `window.Centrifuge is ${await page.evaluate(() => typeof window.Centrifuge)}`);

  await testUniSse(page, uniRequests);
  await testWebSocket(page);
  await testSseEmulation(page);

  // 4. The final page state, for reviewers.
  const shot = path.join(args['out-dir'], 'final.png');
  await page.screenshot({ path: shot, fullPage: true });
  const size = fs.existsSync(shot) ? fs.statSync(shot).size : 0;
  check('screenshot of the final page state', size > 1000, `${shot}: ${size} bytes`);
  note(`screenshot: ${shot}`);

  await page.evaluate(() => { window.T.stopUni(); window.T.stopSdk('ws'); window.T.stopSdk('sse'); });
  await sleep(200);
  check('no page errors', pageErrors.length === 0, pageErrors);
  check('no console errors', consoleErrors.length === 0, consoleErrors);
  check('no request left loopback', foreignRequests.length === 0, foreignRequests);
}

// 1. The browser's own EventSource on uni_sse, no SDK: publications, a server-forced disconnect, the browser's own
// reconnect with Last-Event-ID, and the publications made while it was away, each exactly once and in order.
async function testUniSse(page, uniRequests) {
  const channel = args['uni-channel'];
  await page.evaluate((t) => window.T.startUni(t), args['uni-token']);
  const connected = await waitFor(async () => ((await state(page, 'uni')).connects || []).length >= 1, 10000);
  let s = await state(page, 'uni');
  if (!check('uni_sse: EventSource opens and gets the connect push', connected && s.readyState === 1, s)) return;
  check('uni_sse: the connect push names the token\'s channel', !!(s.connects[0].connect.subs && s.connects[0].connect.subs[channel]),
    s.connects[0].connect);

  let bad = await publishAll(channel, range(1, 3), 'api');
  check('uni_sse: API publish n=1..3', bad.length === 0, bad);
  await waitFor(async () => (await state(page, 'uni')).ns.length >= 3, 10000);
  s = await state(page, 'uni');
  check('uni_sse: receives the API publications', same(s.ns, [1, 2, 3]), s.ns);
  check('uni_sse: publication events carry distinct ids', new Set(s.pubIds.map((p) => p.id)).size === 3 && s.pubIds.every((p) => p.id), s.pubIds);

  const disconnectedAt = Date.now();
  const d = await api('disconnect', { user: args['uni-user'], disconnect: { code: 3011, reason: 'force reconnect' } });
  check('uni_sse: API disconnect', apiOk(d), `${d.status} ${d.text}`);
  const away = await waitFor(async () => (await state(page, 'uni')).errorsAt.length >= 1, 10000);
  s = await state(page, 'uni');
  check('uni_sse: the stream ends and EventSource goes to CONNECTING', away && s.errorsAt[0].readyState === 0, s.errorsAt);
  check('uni_sse: the page sees the disconnect push (3011) before the end', s.disconnects.length === 1 && s.disconnects[0].disconnect.code === 3011,
    s.disconnects);

  bad = await publishAll(channel, range(4, 6), 'api-while-away');
  s = await state(page, 'uni');
  check('uni_sse: n=4..6 published while the EventSource was away', bad.length === 0 && s.readyState === 0 && s.opens.length === 1,
    { bad, readyState: s.readyState, opens: s.opens.length });

  await waitFor(async () => (await state(page, 'uni')).ns.length >= 6, 15000);
  await sleep(300); // anything duplicated would arrive right behind
  s = await state(page, 'uni');
  check('uni_sse: every publication exactly once, in order, after the browser\'s own reconnect', same(s.ns, range(1, 6)), s.ns);
  check('uni_sse: EventSource reopened once', s.opens.length === 2 && s.readyState === 1, { opens: s.opens.length, readyState: s.readyState });
  const reqs = await Promise.all(uniRequests);
  const id3 = (s.pubIds.find((p) => p.n === 3) || {}).id;
  check('uni_sse: the reconnect sent Last-Event-ID (the id of n=3)', reqs.length === 2 && reqs[0].lastEventId === null
    && !!id3 && reqs[1].lastEventId === id3, { requests: reqs, pubIds: s.pubIds });
  if (s.connects.length >= 2) {
    const sub = (s.connects[1].connect.subs || {})[channel] || {};
    check('uni_sse: the reconnect\'s connect push says recovered', sub.recovered === true, s.connects[1].connect);
  } else {
    check('uni_sse: a second connect push after the reconnect', false, s.connects);
  }
  if (s.errorsAt.length && s.opens.length >= 2) {
    note(`uni_sse: EventSource was away ${((s.opens[1] - s.errorsAt[0].at) / 1000).toFixed(2)} s (browser retry delay; ` +
      `${((Date.now() - disconnectedAt) / 1000).toFixed(1)} s from API disconnect to the end of the check)`);
  }
  note(`uni_sse: other pushes seen: ${JSON.stringify(s.others.map((o) => Object.keys(o).filter((k) => k !== 'channel')))}`);
  await page.evaluate(() => window.T.stopUni());
}

// 2. The centrifuge SDK over WebSocket in the page.
async function testWebSocket(page) {
  const channel = `chat:ws-${process.pid}`;
  const wsUrl = `${args.base.replace(/^http/, 'ws')}/connection/websocket`;
  await page.evaluate(([u, t, ch]) => window.T.startWs(u, t, ch), [wsUrl, args['ws-token'], channel]);
  const ok = await waitFor(async () => (await state(page, 'ws')).subscribedCtx.length >= 1, 10000);
  let s = await state(page, 'ws');
  if (!check('ws: SDK connects and subscribes', ok && s.state === 'connected', { state: s.state, events: s.events })) return;
  check('ws: connected over websocket', s.connectedCtx[0].transport === 'websocket', s.connectedCtx[0]);

  const bad = await publishAll(channel, [1], 'api');
  await waitFor(async () => (await state(page, 'ws')).ns.length >= 1, 10000);
  s = await state(page, 'ws');
  check('ws: receives an API publication', bad.length === 0 && same(s.ns, [1]), { bad, ns: s.ns });

  const pub = await page.evaluate(() => window.T.publish('ws', { n: 2, from: 'page' }).then(() => 'ok', (e) => JSON.stringify(e)));
  await waitFor(async () => (await state(page, 'ws')).ns.length >= 2, 10000);
  s = await state(page, 'ws');
  check('ws: publishes from the page and receives it', pub === 'ok' && same(s.ns, [1, 2]), { pub, ns: s.ns });
  const hist = await api('history', { channel, limit: 10 });
  const histNs = apiOk(hist) ? (hist.json.result.publications || []).map((p) => p.data && p.data.n) : hist.text;
  check('ws: the page\'s publication is in history', same(histNs, [1, 2]), histNs);

  const users = await page.evaluate(() => window.T.presenceUsers('ws').catch((e) => JSON.stringify(e)));
  check('ws: presence lists the user (only client in the channel)', same(users, [args['ws-user']]), users);
  check('ws: no client or subscription errors', s.errors.length === 0, s.errors);
  await page.evaluate(() => window.T.stopSdk('ws'));
}

// 3. The centrifuge SDK over SSE emulation (EventSource down, POST /emulation up), with recovery across a
// server-forced reconnect.
async function testSseEmulation(page) {
  const channel = `chat:sse-${process.pid}`;
  // The first reconnect waits 1.5 to 2.5 s: time enough to publish while the client is away.
  const delays = { minReconnectDelay: 1500, maxReconnectDelay: 2500 };
  await page.evaluate(([b, t, ch, dl]) => window.T.startSse(b, t, ch, dl), [args.base, args['sse-token'], channel, delays]);
  const ok = await waitFor(async () => (await state(page, 'sse')).subscribedCtx.length >= 1, 10000);
  let s = await state(page, 'sse');
  if (!check('sse: SDK connects and subscribes over SSE emulation', ok && s.state === 'connected', { state: s.state, events: s.events })) return;
  check('sse: connected over sse', s.connectedCtx[0].transport === 'sse', s.connectedCtx[0]);

  let bad = await publishAll(channel, [1], 'api');
  await waitFor(async () => (await state(page, 'sse')).ns.length >= 1, 10000);
  s = await state(page, 'sse');
  check('sse: receives an API publication', bad.length === 0 && same(s.ns, [1]), { bad, ns: s.ns });

  const pub = await page.evaluate(() => window.T.publish('sse', { n: 2, from: 'page' }).then(() => 'ok', (e) => JSON.stringify(e)));
  await waitFor(async () => (await state(page, 'sse')).ns.length >= 2, 10000);
  s = await state(page, 'sse');
  check('sse: publishes from the page through /emulation and receives it', pub === 'ok' && same(s.ns, [1, 2]), { pub, ns: s.ns });

  const d = await api('disconnect', { user: args['sse-user'], disconnect: { code: 3011, reason: 'force reconnect' } });
  check('sse: API disconnect', apiOk(d), `${d.status} ${d.text}`);
  const away = await waitFor(async () => (await state(page, 'sse')).state === 'connecting', 10000);
  s = await state(page, 'sse');
  check('sse: the SDK goes to connecting with code 3011', away && s.connectingCtx.some((c) => c.code === 3011), s.connectingCtx);
  bad = await publishAll(channel, range(3, 5), 'api-while-away');
  s = await state(page, 'sse');
  check('sse: n=3..5 published while the SDK was away', bad.length === 0 && s.state === 'connecting', { bad, state: s.state });

  await waitFor(async () => (await state(page, 'sse')).subscribedCtx.length >= 2 && (await state(page, 'sse')).ns.length >= 5, 15000);
  await sleep(300);
  s = await state(page, 'sse');
  check('sse: reconnects and resubscribes', s.state === 'connected' && s.subscribedCtx.length === 2, { state: s.state, subscribed: s.subscribedCtx });
  const re = s.subscribedCtx[1] || {};
  check('sse: subscribed ctx says recovered', re.wasRecovering === true && re.recovered === true, re);
  check('sse: the missed publications arrive once, in order', same(s.ns, range(1, 5)), s.ns);
  check('sse: no client or subscription errors', s.errors.length === 0, s.errors);
}

main().then(() => finish(), (e) => {
  check('run', false, String(e && e.stack || e));
  finish(1);
});
