#!/usr/bin/env node
// WebSocket over HTTP/2 (RFC 8441) in headless Chromium against Herald over TLS directly (run by
// crates/herald/tests/browser.rs): the page is loaded over HTTPS (HTTP/2 by ALPN); the page's own `WebSocket`
// to /connection/websocket then rides that HTTP/2 connection as an extended CONNECT stream when the server
// advertises SETTINGS_ENABLE_CONNECT_PROTOCOL, which Herald does. The script checks the protocol works (connect,
// subscribe, an API publication arrives) and reads Herald's herald_websocket_handshakes_total{http="2"} to
// prove which HTTP version carried it.
//
//   node tests/browser/websocket_h2.cjs --base https://localhost:PORT --api-key KEY --token JWT [--chromium PATH]
//
// Prints one line per check and then exactly `N passed, M failed`.
'use strict';

const { createRequire } = require('module');
const path = require('path');
const jsRequire = createRequire(path.join(__dirname, '..', 'js', 'package.json'));
const { createRun } = require('../js/harness.cjs');

const args = { chromium: '/usr/bin/chromium' };
for (let i = 2; i + 1 < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const need of ['base', 'api-key', 'token']) {
  if (!args[need]) { console.error(`missing --${need}`); process.exit(2); }
}
const { check, run } = createRun({ watchdogMs: 60000 });

run(async () => {
  const { chromium } = jsRequire('playwright-core');
  const browser = await chromium.launch({
    executablePath: args.chromium,
    headless: true,
    timeout: 30000,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost'],
  });
  try {
    // The test's self-signed certificate: accepted for this context only.
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    const resp = await page.goto(`${args.base}/health`);
    check('the page loads from Herald over HTTPS', resp && resp.ok(), resp && resp.status());
    const result = await page.evaluate(async ({ base, token, apiKey }) => {
      const channel = 'chat:chromium-h2';
      const ws = new WebSocket(`${base.replace('https', 'wss')}/connection/websocket`);
      const lines = [];
      let published = false;
      return await new Promise((resolve) => {
        const timer = setTimeout(() => resolve({ error: 'timed out', lines }), 15000);
        ws.onopen = () => ws.send(JSON.stringify({ id: 1, connect: { token } }) + '\n'
          + JSON.stringify({ id: 2, subscribe: { channel } }));
        ws.onerror = () => { clearTimeout(timer); resolve({ error: 'websocket error', lines }); };
        ws.onmessage = async (ev) => {
          for (const line of String(ev.data).split('\n').filter(Boolean)) {
            const m = JSON.parse(line);
            lines.push(line);
            if (m.id === 2 && !m.error && !published) {
              published = true;
              await fetch(`${base}/api/publish`, {
                method: 'POST', headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/json' },
                body: JSON.stringify({ channel, data: { from: 'api' } }),
              });
            }
            if (m.push && m.push.pub && m.push.pub.data.from === 'api') {
              clearTimeout(timer);
              ws.close();
              resolve({ ok: true });
            }
          }
        };
      });
    }, { base: args.base, token: args.token, apiKey: args['api-key'] });
    check('the browser WebSocket connects, subscribes and receives an API publication', result.ok, result);
    const metrics = await page.evaluate(async (base) => (await fetch(`${base}/metrics`)).text(), args.base);
    const count = (http) => {
      const m = metrics.match(new RegExp(`^herald_websocket_handshakes_total\\{http="${http.replace('.', '\\.')}"\\} (\\d+)`, 'm'));
      return m ? Number(m[1]) : 0;
    };
    check('Chromium opened its WebSocket over HTTP/2 (RFC 8441), not with an HTTP/1.1 Upgrade',
      count('2') === 1 && count('1.1') === 0, { http2: count('2'), http11: count('1.1') });
  } finally {
    await browser.close();
  }
});
