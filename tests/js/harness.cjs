// What every SDK test script here shares: loading the npm dependencies, the check/finish reporter with its
// watchdog, bounded waits, and the server API client. A script prints one line per check (`ok   name` or
// `FAIL name :: detail`) and then exactly `N passed, M failed`; it exits 1 on any failure, 2 on bad usage.
'use strict';

const path = require('path');

// The centrifuge SDK and `ws`; with { eventsource: true } also the `eventsource` package (SSE needs it).
function loadDeps({ eventsource = false } = {}) {
  try {
    return {
      Centrifuge: require('centrifuge').Centrifuge,
      WebSocket: require('ws'),
      EventSource: eventsource ? require('eventsource') : null,
    };
  } catch (e) {
    console.log(`cannot load the JS dependencies (${e.message}): run \`npm ci --prefix ${path.relative(process.cwd(), __dirname) || '.'}\``);
    console.log('0 passed, 1 failed');
    process.exit(2);
  }
}

// The checks of one run. `clients` are disconnected by finish(); run(main) reports a crash as a failed check and
// a watchdog ends the run after watchdogMs whatever happens, so the script always stops by itself.
function createRun({ watchdogMs }) {
  let passed = 0;
  let failed = 0;
  const clients = [];

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

  function finish() {
    for (const c of clients) {
      try { c.disconnect(); } catch (_) { /* closing anyway */ }
    }
    console.log(`${passed} passed, ${failed} failed`);
    process.exit(failed === 0 && passed > 0 ? 0 : 1);
  }

  function run(main) {
    const watchdog = setTimeout(() => {
      check('finish within the time limit', false, `still running after ${watchdogMs} ms`);
      finish();
    }, watchdogMs);
    main()
      .catch((e) => check('run without crashing', false, (e && e.stack) || String(e)))
      .finally(() => {
        clearTimeout(watchdog);
        finish();
      });
  }

  return { check, clients, run };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Polls pred every 10 ms until it holds or ms pass; returns whether it held.
async function waitFor(pred, ms) {
  const end = Date.now() + ms;
  for (;;) {
    if (pred()) return true;
    if (Date.now() >= end) return false;
    await sleep(10);
  }
}

// Resolves to the promise's value, or to {error} when it rejects or takes longer than ms.
async function settle(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve({ error: `no answer in ${ms} ms` }), ms); });
  try {
    return await Promise.race([promise.then((value) => ({ value }), (error) => ({ error })), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// api(method, body) against the server API at `base` with `key`: {status, json, text}; status 0 when the request
// failed or took more than 5 s.
function apiClient(base, key) {
  return async function api(method, body) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 5000);
    try {
      const res = await fetch(`${base}/api/${method}`, {
        method: 'POST',
        headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      const text = await res.text();
      let json = null;
      try { json = JSON.parse(text); } catch (_) { /* reported by the caller */ }
      return { status: res.status, json, text };
    } catch (e) {
      return { status: 0, json: null, text: String(e) };
    } finally {
      clearTimeout(timer);
    }
  };
}

module.exports = { loadDeps, createRun, sleep, waitFor, settle, apiClient };
