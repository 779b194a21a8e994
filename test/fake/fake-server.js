'use strict';

// Building blocks shared by the fake push receiver and the fake room
// service: argument parsing, JSON bodies, and the failure rules that
// POST /control installs.
//
// Both fakes keep all state in memory and never touch the file system
// while serving, so they stay fast under load.

const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');

// Parse "--port N" (or the PORT environment variable). Port 0 lets the
// kernel pick a free port; the fake prints the port it got.
function parsePort(argv) {
  const index = argv.indexOf('--port');
  const text = index >= 0 ? argv[index + 1] : process.env.PORT;
  const port = Number(text ?? 0);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`invalid port "${text}": expected an integer from 0 to 65535`);
  }
  return port;
}

// Collect a request body as a string.
function readBody(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    request.on('error', reject);
  });
}

// Parse JSON text, returning undefined when it is not valid JSON.
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function sendJson(response, status, value, headers = {}) {
  const body = JSON.stringify(value);
  response.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    ...headers,
  });
  response.end(body);
}

function sendText(response, status, text, headers = {}) {
  response.writeHead(status, {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  response.end(text);
}

// Format a Retry-After value. A number or numeric string is sent as
// delay-seconds. "date+N" is sent as an HTTP date N seconds after the
// moment of the response, so a test can check the date form without
// predicting when the request arrives.
function formatRetryAfter(value) {
  const match = /^date\+(\d+)$/.exec(String(value));
  if (match) {
    return new Date(Date.now() + Number(match[1]) * 1000).toUTCString();
  }
  return String(value);
}

// Rules installed by POST /control. Each rule applies to the next "count"
// requests whose match key starts with "prefix" (every request when prefix
// is empty), and is dropped once used up. The first matching rule wins.
class RuleList {
  constructor() {
    this.rules = [];
  }

  add(rule) {
    this.rules.push(rule);
  }

  clear() {
    this.rules = [];
  }

  // Return the first rule that applies to any of the keys and consume one
  // use of it, or undefined when none applies.
  take(keys) {
    const index = this.rules.findIndex((rule) =>
      keys.some((key) => typeof key === 'string' && key.startsWith(rule.prefix)));
    if (index < 0) {
      return undefined;
    }
    const rule = this.rules[index];
    rule.count -= 1;
    if (rule.count <= 0) {
      this.rules.splice(index, 1);
    }
    return rule;
  }

  list() {
    return this.rules.map((rule) => ({ ...rule }));
  }
}

// Validate the POST /control fields common to both fakes and turn them
// into rules and a delay. Throws an Error with a message for the client.
function parseControl(body, extraKinds = []) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new Error('control body must be a JSON object');
  }
  const prefix = body.to ?? body.user ?? '';
  if (typeof prefix !== 'string') {
    throw new Error('"to" and "user" must be strings');
  }
  const result = { reset: body.reset === true, rules: [], delay: undefined };

  if (body.fail !== undefined) {
    const status = body.status ?? 503;
    if (!Number.isInteger(body.fail) || body.fail < 1) {
      throw new Error('"fail" must be a positive integer');
    }
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      throw new Error('"status" must be an HTTP status code');
    }
    result.rules.push({
      kind: 'status',
      count: body.fail,
      status,
      retryAfter: body.retryAfter,
      prefix,
    });
  }
  for (const kind of extraKinds) {
    if (body[kind] === undefined) {
      continue;
    }
    if (!Number.isInteger(body[kind]) || body[kind] < 1) {
      throw new Error(`"${kind}" must be a positive integer`);
    }
    result.rules.push({ kind, count: body[kind], variant: body.variant, prefix });
  }
  if (body.delayMs !== undefined) {
    if (!Number.isInteger(body.delayMs) || body.delayMs < 0) {
      throw new Error('"delayMs" must be a non-negative integer');
    }
    result.delay = { ms: body.delayMs, prefix };
  }
  return result;
}

// Parse "--tls-cert FILE --tls-key FILE". Returns the PEM texts as
// https.createServer options, or undefined when neither is given.
function parseTls(argv) {
  const certIndex = argv.indexOf('--tls-cert');
  const keyIndex = argv.indexOf('--tls-key');
  if (certIndex < 0 && keyIndex < 0) {
    return undefined;
  }
  if (certIndex < 0 || keyIndex < 0) {
    throw new Error('--tls-cert and --tls-key must be given together');
  }
  return {
    cert: fs.readFileSync(argv[certIndex + 1]),
    key: fs.readFileSync(argv[keyIndex + 1]),
  };
}

// Start an HTTP server on 127.0.0.1 that passes each request and its body
// to handle(request, body, response), and print "listening HOST:PORT".
// With tls (certificate and key, see parseTls) it serves HTTPS instead.
function serve(port, handle, tls) {
  const listener = async (request, response) => {
    try {
      const body = await readBody(request);
      await handle(request, body, response);
    } catch (error) {
      if (!response.headersSent) {
        sendJson(response, 500, { error: String(error && error.message) });
      } else {
        response.destroy();
      }
    }
  };
  const server = tls ? https.createServer(tls, listener) : http.createServer(listener);
  server.keepAliveTimeout = 30000;
  server.listen({ port, host: '127.0.0.1', backlog: 1024 }, () => {
    const address = server.address();
    console.log(`listening ${address.address}:${address.port}`);
  });
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      server.close();
      server.closeAllConnections();
      process.exit(0);
    });
  }
  return server;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Collect the garbage that a reset leaves. After a benchmark phase the
// records fill gigabytes, and V8's major collection of such a heap
// stopped the server for over 100 ms in the middle of the next phase.
// Collecting at the reset moves that pause to a moment bench/run
// chooses: between phases, and every 5 s of its memory phase, which
// measures no latency. Needs node --expose-gc, which
// mm_start_fake in test/lib/common.sh passes; does nothing without it.
function collectGarbage() {
  if (typeof global.gc === 'function') {
    global.gc();
  }
}

module.exports = {
  RuleList,
  collectGarbage,
  formatRetryAfter,
  parseControl,
  parseJson,
  parsePort,
  parseTls,
  readBody,
  sendJson,
  sendText,
  serve,
  sleep,
};
