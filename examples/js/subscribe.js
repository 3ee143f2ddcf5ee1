#!/usr/bin/env node
// Subscribe to one Herald channel with the centrifuge JS SDK and print every publication, one line each, on
// stdout; connection and subscription state go to stderr. See README.md.
'use strict';

const { parseArgs } = require('node:util');
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');

const usage = `usage: node subscribe.js [--url URL] [--token TOKEN] [--channel CHANNEL] [--exit-after N]

  --url URL         Herald WebSocket endpoint (env HERALD_URL; default ws://127.0.0.1:8000/connection/websocket)
  --token TOKEN     connection token, from \`herald gentoken --user NAME\` (env HERALD_TOKEN)
  --channel NAME    channel to subscribe to (env HERALD_CHANNEL; default chat:lobby)
  --exit-after N    exit (status 0) after N publications; default: run until Ctrl-C`;

let args;
try {
  args = parseArgs({
    options: {
      url: { type: 'string', default: process.env.HERALD_URL || 'ws://127.0.0.1:8000/connection/websocket' },
      token: { type: 'string', default: process.env.HERALD_TOKEN || '' },
      channel: { type: 'string', default: process.env.HERALD_CHANNEL || 'chat:lobby' },
      'exit-after': { type: 'string', default: '0' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }).values;
} catch (e) {
  console.error(`${e.message}\n\n${usage}`);
  process.exit(2);
}
const exitAfter = Number(args['exit-after']);
if (args.help || !Number.isInteger(exitAfter) || exitAfter < 0) {
  console.error(usage);
  process.exit(args.help ? 0 : 2);
}

const time = () => new Date().toTimeString().slice(0, 8);
let stopping = false; // once set, the events of our own disconnect are not printed
const status = (text) => stopping || console.error(`${time()} * ${text}`);

const client = new Centrifuge(args.url, { token: args.token, websocket: WebSocket });
client.on('connecting', (ctx) => status(`connecting (${ctx.reason})`));
client.on('connected', (ctx) => status(`connected to ${args.url} over ${ctx.transport}`));
// The SDK reconnects by itself after network errors ('connecting' again); 'disconnected' means it gave up,
// for example on an invalid token.
client.on('disconnected', (ctx) => stop(1, `disconnected: ${ctx.code} ${ctx.reason}`));

const sub = client.newSubscription(args.channel);
sub.on('subscribing', (ctx) => status(`subscribing to ${args.channel} (${ctx.reason})`));
sub.on('subscribed', (ctx) => status(`subscribed to ${args.channel}${ctx.recovered ? ', missed publications recovered' : ''}`));
sub.on('unsubscribed', (ctx) => stop(1, `unsubscribed from ${args.channel}: ${ctx.code} ${ctx.reason}`));
sub.on('error', (ctx) => status(`subscription error: ${ctx.error.code} ${ctx.error.message}`));

let received = 0;
sub.on('publication', (ctx) => {
  const from = ctx.info ? ` from ${ctx.info.user || 'anonymous'}` : '';
  console.log(`${time()} ${ctx.channel} #${ctx.offset}${from}: ${JSON.stringify(ctx.data)}`);
  received += 1;
  if (received === exitAfter) stop(0, `received ${received} publication(s), exiting`);
});

function stop(code, why) {
  if (stopping) return;
  status(why);
  stopping = true;
  client.disconnect();
  setImmediate(() => process.exit(code));
}

sub.subscribe();
client.connect();
