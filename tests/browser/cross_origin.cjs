#!/usr/bin/env node
// A cross-origin page against Herald in headless Chromium (playwright-core), with the user's cookies: Herald
// authenticates connections by cookie through its connect proxy (client.proxy.connect with http_headers
// ["Cookie"]), and the browser holds alice's session cookie for 127.0.0.1. A page of Herald's own origin connects
// as alice. A page of another origin (127.0.0.1 on another port: same site, so the browser sends the cookie)
// tries a WebSocket, an EventSource on uni_sse and one on the SSE emulation: each is refused by the Origin check
// (403), before any cookie reaches the backend, and the page never gets a message.
//
// Run by crates/herald/tests/browser.rs:
//   node tests/browser/cross_origin.cjs --base http://127.0.0.1:PORT --backend-port P [--chromium PATH]
// This script serves, on 127.0.0.1:P, the other origin's page (/evil.html) and the connect proxy (/connect, which
// Herald's config points at): alice for the cookie `session=alice`, a disconnect otherwise; it counts the calls.
'use strict';

const http = require('http');
const path = require('path');
const { createRequire } = require('module');

const jsRequire = createRequire(path.join(__dirname, '..', 'js', 'package.json'));
const WATCHDOG_MS = 60000;

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const base = (arg('base') || '').replace(/\/+$/, '');
const backendPort = Number(arg('backend-port'));
const chromiumPath = arg('chromium', '/usr/bin/chromium');
if (!base || !backendPort) {
  console.error('usage: node cross_origin.cjs --base URL --backend-port P [--chromium PATH]');
  process.exit(2);
}

let passed = 0;
let failed = 0;
function check(name, ok, detail) {
  if (ok) {
    passed++;
    console.log(`ok   ${name}`);
  } else {
    failed++;
    console.log(`FAIL ${name} :: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`);
  }
}

const proxyCalls = [];
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/connect') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const cookie = req.headers.cookie || '';
      proxyCalls.push({ cookie, body });
      res.setHeader('content-type', 'application/json');
      if (/(^|;\s*)session=alice(;|$)/.test(cookie)) {
        res.end(JSON.stringify({ result: { user: 'alice' } }));
      } else {
        res.end(JSON.stringify({ disconnect: { code: 4501, reason: 'unauthorized' } }));
      }
    });
    return;
  }
  if (req.url === '/evil.html') {
    res.setHeader('content-type', 'text/html');
    res.end('<!doctype html><title>another origin</title><p>another origin');
    return;
  }
  res.statusCode = 404;
  res.end();
});

// In the page: opens each transport to Herald and reports what happened within 3 s.
async function probe(page, heraldBase) {
  return page.evaluate(async (b) => {
    const wsUrl = b.replace(/^http/, 'ws') + '/connection/websocket';
    const connect = encodeURIComponent(JSON.stringify({}));
    const out = {};
    out.ws = await new Promise((resolve) => {
      const r = { opened: false, messages: [], closed: null };
      let ws;
      try { ws = new WebSocket(wsUrl); } catch (e) { resolve({ threw: String(e) }); return; }
      ws.onopen = () => { r.opened = true; ws.send(JSON.stringify({ id: 1, connect: {} })); };
      ws.onmessage = (m) => { r.messages.push(String(m.data)); };
      ws.onclose = (e) => { r.closed = e.code; };
      setTimeout(() => { try { ws.close(); } catch (_) { /* gone */ } resolve(r); }, 3000);
    });
    const sse = (url) => new Promise((resolve) => {
      const r = { opened: false, messages: [], errored: false };
      const es = new EventSource(url, { withCredentials: true });
      es.onopen = () => { r.opened = true; };
      es.onmessage = (m) => { r.messages.push(String(m.data)); };
      es.onerror = () => { r.errored = true; r.readyState = es.readyState; };
      setTimeout(() => { es.close(); resolve(r); }, 3000);
    });
    out.uniSse = await sse(`${b}/connection/uni_sse?cf_connect=${connect}`);
    out.sse = await sse(`${b}/connection/sse?cf_connect=${encodeURIComponent(JSON.stringify({ id: 1, connect: {} }))}`);
    return out;
  }, heraldBase);
}

async function main() {
  await new Promise((resolve) => server.listen(backendPort, '127.0.0.1', resolve));
  const { chromium } = jsRequire('playwright-core');
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    timeout: 30000,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost'],
  });
  try {
    const context = await browser.newContext();
    // alice's session cookie for Herald's host (any port: cookies do not separate ports).
    await context.addCookies([{ name: 'session', value: 'alice', domain: '127.0.0.1', path: '/', sameSite: 'Lax' }]);
    const page = await context.newPage();

    // Herald's own origin: the cookie goes to the backend and alice connects.
    await page.goto(`${base}/health`);
    const own = await probe(page, base);
    const ownReply = own.ws.messages.map((m) => { try { return JSON.parse(m.split('\n')[0]); } catch (_) { return null; } })
      .find((m) => m && m.id === 1);
    check('a page of Herald\'s origin connects as alice (cookie through the connect proxy)',
      own.ws.opened && ownReply && ownReply.connect, own.ws);
    check('the backend saw the cookie', proxyCalls.some((c) => /session=alice/.test(c.cookie)), proxyCalls);
    const callsBefore = proxyCalls.length;

    // Another origin, same site: the browser would send the cookie; Herald must refuse before using it.
    await page.goto(`http://127.0.0.1:${backendPort}/evil.html`);
    const evil = await probe(page, base);
    check('a cross-origin WebSocket is refused (never opened, no message)',
      !evil.ws.opened && evil.ws.messages.length === 0, evil.ws);
    check('a cross-origin EventSource on uni_sse is refused (error, no message)',
      !evil.uniSse.opened && evil.uniSse.errored && evil.uniSse.messages.length === 0, evil.uniSse);
    check('a cross-origin EventSource on the SSE emulation is refused (error, no message)',
      !evil.sse.opened && evil.sse.errored && evil.sse.messages.length === 0, evil.sse);
    check('no cross-origin attempt reached the backend with the cookie', proxyCalls.length === callsBefore,
      proxyCalls.slice(callsBefore));
  } finally {
    await Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
    server.close();
  }
}

const watchdog = setTimeout(() => {
  check('finish within the time limit', false, `still running after ${WATCHDOG_MS} ms`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(1);
}, WATCHDOG_MS);
main()
  .catch((e) => check('run without crashing', false, (e && e.stack) || String(e)))
  .finally(() => {
    clearTimeout(watchdog);
    console.log(`${passed} passed, ${failed} failed`);
    process.exit(failed === 0 && passed > 0 ? 0 : 1);
  });
