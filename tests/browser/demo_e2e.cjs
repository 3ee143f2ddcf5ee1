#!/usr/bin/env node
// The chat demo and the web console in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
// playwright-core. Run by crates/herald/tests/demo_browser.rs, which starts `herald serve --demo` with the console
// on; by hand, against such a server:
//
//   node tests/browser/demo_e2e.cjs --base http://127.0.0.1:8000 --api-key KEY --admin-password PW [--out-dir DIR]
//        [--chromium PATH]
//
// 1. Two chat pages (alice on WebSocket at 1280x800, bob on SSE at 390x844) join one room through the nickname form;
//    each sees the other online; a message typed in one appears in the other.
// 2. The server drops both (server API disconnect, code 3011) while a third client publishes through /api/publish;
//    after they reconnect, both pages show every message exactly once and say "recovered".
// 3. The console logs in, shows the two connections, publishes from its form, and the message appears in the chat
//    pages; its disconnect action closes bob's connection.
// Screenshots go to the output folder (chat-1280x800.png, chat-390x844.png, console-1280x800.png,
// console-390x844.png). Any page error or console error fails the run, and so does any request that leaves
// Herald's origin. Prints `ok   name` or `FAIL name :: detail` per check, then `N passed, M failed`; exits 1 on any
// failure. Every wait is bounded and a watchdog ends the run.
'use strict';

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const jsRequire = createRequire(path.join(__dirname, '..', 'js', 'package.json'));
const WATCHDOG_MS = 120000;
const started = Date.now();
const ROOM = 'e2e';
const CHANNEL = `chat:${ROOM}`;

function usage(msg) {
  console.error(`${msg}\nusage: node demo_e2e.cjs --base URL --api-key KEY --admin-password PW [--out-dir DIR] [--chromium PATH]`);
  process.exit(2);
}

function parseArgs(argv) {
  const names = ['base', 'api-key', 'admin-password', 'out-dir', 'chromium'];
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

function setupFail(msg) {
  console.log(`FAIL setup :: ${msg}`);
  console.log('0 passed, 1 failed');
  process.exit(2);
}

let chromium;
try {
  chromium = jsRequire('playwright-core').chromium;
} catch (e) {
  setupFail(`cannot load playwright-core (${e.message}): run \`npm ci --prefix tests/js\``);
}
if (!fs.existsSync(args.chromium)) {
  setupFail(`no Chromium at ${args.chromium}: install it (apt-get install -y chromium chromium-driver; .ci/run does)`);
}

let finishing = false;
async function finish(code) {
  if (finishing) return;
  finishing = true;
  if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
  console.log(`# took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code !== undefined ? code : failed === 0 && passed > 0 ? 0 : 1);
}

setTimeout(() => {
  check('watchdog', false, `the run took longer than ${WATCHDOG_MS} ms`);
  finish(1);
}, WATCHDOG_MS);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(pred, ms) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      if (await pred()) return true;
    } catch (_) {
      // A page mid-navigation; try again.
    }
    if (Date.now() >= end) return false;
    await sleep(50);
  }
}

const { api, apiOk } = require('./server_api.cjs').serverApi(args.base, args['api-key']);

const snap = (page) => page.evaluate(() => window.heraldDemo.snapshot());
const texts = (s) => s.messages.map((m) => m.text);
const live = (s) => s.state === 'connected' || s.state === 'recovered';
const dupes = (xs) => xs.filter((x, i) => xs.indexOf(x) !== i);

// Every page is watched for errors and for requests leaving Herald's origin.
const problems = { pageErrors: [], consoleErrors: [], foreign: [] };
function watch(page, name) {
  const wsBase = args.base.replace(/^http/, 'ws');
  page.on('pageerror', (e) => problems.pageErrors.push(`${name}: ${String(e && e.stack || e)}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.consoleErrors.push(`${name}: ${m.text()} (${(m.location() || {}).url || ''})`);
  });
  page.on('request', (req) => {
    const u = req.url();
    if (!u.startsWith(`${args.base}/`) && !u.startsWith(`${wsBase}/`) && !u.startsWith('data:')) problems.foreign.push(`${name}: ${u}`);
  });
}

async function newPage(name, viewport) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.setDefaultTimeout(10000);
  watch(page, name);
  return page;
}

async function noHorizontalScroll(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
}

async function shot(page, file) {
  const p = path.join(args['out-dir'], file);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: p });
  const size = fs.existsSync(p) ? fs.statSync(p).size : 0;
  check(`screenshot ${file}`, size > 5000, `${p}: ${size} bytes`);
  note(`screenshot: ${p}`);
}

async function joinChat(page, nick, transport) {
  const resp = await page.goto(`${args.base}/`, { waitUntil: 'load' });
  check(`${nick}: the demo page loads from Herald`, resp && resp.status() === 200
    && (await page.evaluate(() => typeof window.heraldDemo)) === 'object', `status ${resp && resp.status()}`);
  check(`${nick}: the nickname prompt shows first`, await page.isVisible('#join-form'), 'no #join-form');
  await page.fill('#nick', nick);
  await page.fill('#room', ROOM);
  await page.selectOption('#join-transport', transport);
  await page.click('#join');
  const ok = await waitFor(async () => live(await snap(page)), 15000);
  const s = await snap(page);
  check(`${nick}: connects over ${transport} and joins #${ROOM}`, ok && s.transport === transport && s.room === ROOM
    && s.states[0] === 'offline' && s.states.includes('connecting'), { state: s.state, states: s.states, transport: s.transport });
  const badge = await page.textContent('#state');
  const detail = await page.textContent('#state-detail');
  check(`${nick}: the badge shows the state and the transport`, live({ state: badge }) && detail.includes({ websocket: 'WebSocket', sse: 'SSE' }[transport]),
    { badge, detail });
  return s;
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

async function main() {
  fs.mkdirSync(args['out-dir'], { recursive: true });
  browser = await chromium.launch({
    executablePath: args.chromium,
    headless: true,
    timeout: 30000,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost'],
  });
  note(`chromium ${browser.version()} (${args.chromium}), playwright-core ${jsRequire('playwright-core/package.json').version}`);

  // ---- 1. two pages, two transports, one room ---------------------------------------------------------------
  const alice = await newPage('alice', { width: 1280, height: 800 });
  const bob = await newPage('bob', { width: 390, height: 844 });
  const wsSeen = [];
  alice.on('websocket', (ws) => wsSeen.push(ws.url()));
  const sseSeen = [];
  bob.on('request', (r) => { if (r.url().includes('/connection/sse')) sseSeen.push(r.url()); });

  await joinChat(alice, 'alice', 'websocket');
  await joinChat(bob, 'bob', 'sse');
  check('alice really uses a WebSocket, bob really uses SSE', wsSeen.some((u) => u.endsWith('/connection/websocket'))
    && sseSeen.length >= 1, { wsSeen, sseSeen });

  let ok = await waitFor(async () => (await snap(alice)).online.includes('bob') && (await snap(bob)).online.includes('alice'), 10000);
  let a = await snap(alice);
  let b = await snap(bob);
  check('each sees the other online (presence, join)', ok && a.online.join() === 'alice,bob' && b.online.join() === 'alice,bob',
    { alice: a.online, bob: b.online });
  const bobTag = await alice.textContent('#online li[data-user="bob"] .tag').catch(() => null);
  check('alice\'s list shows bob\'s transport', bobTag === 'SSE', bobTag);
  const bobLine = await bob.textContent('#online-line');
  check('bob\'s phone layout shows who is online in the room header', /2 online: alice, bob/.test(bobLine), bobLine);

  await say(alice, 'hello from alice');
  ok = await waitFor(async () => texts(await snap(bob)).includes('hello from alice'), 10000);
  b = await snap(bob);
  const fromAlice = b.messages.find((m) => m.text === 'hello from alice');
  check('a message typed by alice appears on bob\'s page, with her name', ok && fromAlice && fromAlice.author === 'alice', b.messages);
  await say(bob, 'hi from bob');
  ok = await waitFor(async () => texts(await snap(alice)).includes('hi from bob'), 10000);
  a = await snap(alice);
  check('a message typed by bob appears on alice\'s page', ok && a.messages.find((m) => m.text === 'hi from bob').author === 'bob', a.messages);
  const metaTime = await alice.textContent('#messages li.msg:last-child time').catch(() => '');
  check('messages show their time', /\d{1,2}:\d{2}/.test(metaTime), metaTime);

  // ---- 2. the server drops both while a third client publishes ------------------------------------------------
  const before = { alice: (await snap(alice)).states.length, bob: (await snap(bob)).states.length };
  const drops = await Promise.all(['alice', 'bob'].map((user) => api('disconnect', { user, disconnect: { code: 3011, reason: 'force reconnect' } })));
  check('server API disconnect of both (3011)', drops.every(apiOk), drops.map((d) => `${d.status} ${d.text}`));
  // The SDK waits at least 500 ms before it reconnects: publish as soon as both pages know they are away.
  await waitFor(async () => (await snap(alice)).state === 'reconnecting' && (await snap(bob)).state === 'reconnecting', 5000);
  const published = [];
  for (const n of [1, 2, 3]) {
    const r = await api('publish', { channel: CHANNEL, data: { text: `api ${n}`, author: 'backend' } });
    published.push(apiOk(r) ? r.json.result.offset : `${r.status} ${r.text}`);
  }
  a = await snap(alice);
  b = await snap(bob);
  check('a third client publishes 3 messages through /api/publish', published.every((o) => typeof o === 'number'), published);
  check('both pages show "reconnecting" after the drop', a.states.slice(before.alice).includes('reconnecting')
    && b.states.slice(before.bob).includes('reconnecting'), { alice: a.states, bob: b.states });
  note(`state right after the publishes: alice ${a.state}, bob ${b.state}`);

  const want = ['hello from alice', 'hi from bob', 'api 1', 'api 2', 'api 3'];
  const complete = (s) => want.every((t) => texts(s).includes(t)) && s.states.slice(-1)[0] === 'recovered';
  ok = await waitFor(async () => complete(await snap(alice)) && complete(await snap(bob)), 20000);
  await sleep(500); // anything duplicated would arrive right behind
  for (const [name, page, from] of [['alice', alice, before.alice], ['bob', bob, before.bob]]) {
    const s = await snap(page);
    check(`${name}: reconnects and says "recovered"`, ok && s.states.slice(from).includes('recovered') && s.state === 'recovered',
      { state: s.state, states: s.states.slice(from) });
    check(`${name}: every message exactly once, in order`, JSON.stringify(texts(s)) === JSON.stringify(want), texts(s));
    check(`${name}: no publication delivered twice`, dupes(s.pubOffsets).length === 0, s.pubOffsets);
    const domTexts = await page.$$eval('#messages li.msg .text', (els) => els.map((e) => e.textContent));
    check(`${name}: the page shows each message once`, JSON.stringify(domTexts) === JSON.stringify(want), domTexts);
    check(`${name}: a note tells what was recovered`, s.notes.some((n) => /3 missed messages recovered/.test(n)), s.notes);
    const apiMsg = s.messages.find((m) => m.text === 'api 1');
    check(`${name}: server publications show their author`, apiMsg && apiMsg.author === 'backend', apiMsg);
  }
  ok = await waitFor(async () => (await snap(alice)).online.join() === 'alice,bob' && (await snap(bob)).online.join() === 'alice,bob', 10000);
  check('both are online again after the reconnect', ok, { alice: (await snap(alice)).online, bob: (await snap(bob)).online });

  check('chat at 390x844 has no horizontal scroll', await noHorizontalScroll(bob), 'scrollWidth > innerWidth');
  check('chat at 1280x800 has no horizontal scroll', await noHorizontalScroll(alice), 'scrollWidth > innerWidth');

  // ---- 3. the console ---------------------------------------------------------------------------------------
  const con = await newPage('console', { width: 1280, height: 800 });
  const resp = await con.goto(`${args.base}/console`, { waitUntil: 'load' });
  check('console: the page loads and asks for the password', resp && resp.status() === 200 && await con.isVisible('#login-form'),
    `status ${resp && resp.status()}`);
  await con.fill('#password', args['admin-password']);
  await con.click('#login');
  ok = await waitFor(async () => (await con.isVisible('#dash')) && (await con.textContent('#num-clients')) === '2', 10000);
  check('console: logs in and shows 2 connections', ok, await con.textContent('#num-clients'));
  ok = await waitFor(async () => (await con.$$('#connections tr[data-user="alice"]')).length === 1
    && (await con.$$('#connections tr[data-user="bob"]')).length === 1, 10000);
  check('console: lists alice\'s and bob\'s connections', ok, await con.textContent('#connections'));
  const byTransport = await con.textContent('#by-transport');
  check('console: shows the connections by transport', /WebSocket 1/.test(byTransport) && /SSE 1/.test(byTransport), byTransport);
  ok = await waitFor(async () => (await con.textContent(`#channels tr[data-channel="${CHANNEL}"]`).catch(() => '')).includes('2'), 10000);
  check(`console: lists ${CHANNEL} with 2 subscribers`, ok, await con.textContent('#channels'));
  await con.click(`#channels tr[data-channel="${CHANNEL}"]`);
  ok = await waitFor(async () => (await con.$$('#presence li[data-user]')).length === 2
    && (await con.$$('#history li')).length >= 5, 10000);
  check('console: shows the channel\'s presence and history', ok,
    { presence: await con.textContent('#presence'), history: await con.textContent('#history') });
  ok = await waitFor(async () => (await con.getAttribute('#spark polyline', 'points').catch(() => '') || '').split(' ').length >= 3, 10000);
  check('console: the live rates update every second', ok, await con.getAttribute('#spark polyline', 'points').catch(() => 'none'));

  await con.fill('#pub-channel', CHANNEL);
  await con.fill('#pub-data', '{"text": "hello from the console"}');
  await con.click('#publish');
  ok = await waitFor(async () => /Published to chat:e2e at offset \d+/.test(await con.textContent('#publish-result')), 10000);
  check('console: publishes from the form', ok, await con.textContent('#publish-result'));
  ok = await waitFor(async () => texts(await snap(alice)).includes('hello from the console')
    && texts(await snap(bob)).includes('hello from the console'), 10000);
  check('console: the message arrives in both chat pages', ok, { alice: texts(await snap(alice)), bob: texts(await snap(bob)) });
  await sleep(1200); // one more poll, so the rates show the publication
  check('console at 1280x800 has no horizontal scroll', await noHorizontalScroll(con), 'scrollWidth > innerWidth');

  await shot(alice, 'chat-1280x800.png');
  await shot(bob, 'chat-390x844.png');
  await shot(con, 'console-1280x800.png');
  await con.setViewportSize({ width: 390, height: 844 });
  await sleep(300);
  check('console at 390x844 has no horizontal scroll', await noHorizontalScroll(con), 'scrollWidth > innerWidth');
  await shot(con, 'console-390x844.png');
  await con.setViewportSize({ width: 1280, height: 800 });

  // The transport picker: alice moves to HTTP streaming and goes on chatting with bob (still on SSE).
  const beforeSwitch = (await snap(alice)).states.length;
  await alice.selectOption('#transport', 'http_stream');
  ok = await waitFor(async () => {
    const s = await snap(alice);
    return s.transport === 'http_stream' && s.states.slice(beforeSwitch).includes('connecting') && live(s);
  }, 15000);
  check('alice switches to HTTP streaming with the picker', ok && /HTTP streaming/.test(await alice.textContent('#state-detail')),
    { state: (await snap(alice)).state, detail: await alice.textContent('#state-detail') });
  ok = await waitFor(async () => texts(await snap(alice)).includes('hello from the console'), 10000);
  check('after the switch alice\'s page reloads the room\'s history', ok, texts(await snap(alice)));
  await say(alice, 'now on http streaming');
  ok = await waitFor(async () => texts(await snap(bob)).includes('now on http streaming'), 10000);
  check('bob (SSE) gets alice\'s message sent over HTTP streaming', ok, texts(await snap(bob)));

  // Rooms: another room is empty; coming back shows this one's history.
  await alice.click('#room-list button[data-room="lobby"]');
  ok = await waitFor(async () => { const s = await snap(alice); return s.room === 'lobby' && live(s) && s.messages.length === 0; }, 10000);
  check('alice moves to #lobby, an empty room', ok && (await alice.textContent('#room-title')) === '#lobby', await snap(alice));
  await alice.click(`#room-list button[data-room="${ROOM}"]`);
  ok = await waitFor(async () => texts(await snap(alice)).includes('now on http streaming'), 10000);
  a = await snap(alice);
  check(`back in #${ROOM}, alice sees its messages again, each once`, ok && dupes(texts(a)).length === 0, texts(a));

  // The console's disconnect action (without "let it reconnect": 3503, the client stays away).
  await con.click('#connections tr[data-user="bob"] button');
  ok = await waitFor(async () => (await snap(bob)).state === 'disconnected', 10000);
  b = await snap(bob);
  check('console: disconnecting bob closes his page\'s connection', ok, { state: b.state, states: b.states.slice(-3) });
  ok = await waitFor(async () => (await con.textContent('#num-clients')) === '1'
    && (await con.$$('#connections tr[data-user="bob"]')).length === 0, 10000);
  check('console: bob is gone from the connections', ok, await con.textContent('#connections'));
  ok = await waitFor(async () => !(await snap(alice)).online.includes('bob'), 10000);
  check('alice sees bob leave', ok, (await snap(alice)).online);

  await sleep(300);
  check('no page errors', problems.pageErrors.length === 0, problems.pageErrors);
  check('no console errors', problems.consoleErrors.length === 0, problems.consoleErrors);
  check('no request left Herald\'s origin', problems.foreign.length === 0, problems.foreign);
}

main().then(() => finish(), (e) => {
  check('run', false, String(e && e.stack || e));
  finish(1);
});
