#!/usr/bin/env node
'use strict';

// Fake "http" room provider for the end-to-end tests.
//
//   node room-service.js --port N      (0 picks a free port)
//
// POST /rooms     expects {"match_id": N, "mood": "...", "users": [...]}
//                 and responds 200 {"room": "...", "tokens": {user: token}}
//                 with a new room name and one random token per user, or
//                 400 when the request has the wrong shape.
// GET /requests   returns every recorded request, oldest first. With
//                 ?user=PREFIX only those naming a user that starts with
//                 PREFIX.
// POST /control   changes the responses, with a JSON object:
//                 {"fail": N, "status": 500, "retryAfter": "2"}
//                   the next N requests get that status (default 503).
//                 {"garbage": N, "variant": "text"}
//                   the next N requests get a 200 response the worker must
//                   reject. Variants are listed in GARBAGE below; without
//                   "variant" the responses cycle through all of them.
//                   "hang" never responds and "stall" sends half of its
//                   body; both keep the connection open.
//                 {"delayMs": M} delays every response by M ms.
//                 {"user": PREFIX, ...} limits the above to requests
//                   naming a user that starts with PREFIX.
//                 {"reset": true} clears requests, rules and delays.
// GET /control    returns the rules in force.

const crypto = require('node:crypto');
const {
  RuleList,
  collectGarbage,
  formatRetryAfter,
  parseControl,
  parseJson,
  parsePort,
  sendJson,
  sendText,
  sleep,
  serve,
} = require('./fake-server.js');

const requests = [];
const rules = new RuleList();
const delays = new Map();
let roomCount = 0;
let garbageCount = 0;

const HUGE_PADDING = 'x'.repeat(10 * 1024 * 1024);

// Responses with status 200 that are not a valid room: each one writes the
// response for the given request body.
const GARBAGE = {
  text: (response) => sendText(response, 200, 'this is not JSON'),
  html: (response) => {
    const html = '<html><body>502 Bad Gateway</body></html>';
    response.writeHead(200, { 'Content-Type': 'text/html' });
    response.end(html);
  },
  truncated: (response) => {
    const text = '{"room": "half-a-room", "tokens": {';
    response.writeHead(200, { 'Content-Type': 'application/json' });
    response.end(text);
  },
  array: (response) => sendJson(response, 200, ['room', 'tokens']),
  'no-room': (response, body) => sendJson(response, 200, { tokens: tokensFor(body.users) }),
  'no-tokens': (response) => sendJson(response, 200, { room: nextRoomName() }),
  'wrong-types': (response) => sendJson(response, 200, { room: 42, tokens: 'everyone' }),
  'missing-user': (response, body) => {
    const tokens = tokensFor(body.users);
    delete tokens[body.users[0]];
    sendJson(response, 200, { room: nextRoomName(), tokens });
  },
  empty: (response) => sendText(response, 200, ''),
  // One byte past the worker's limits: 255 bytes for a room name and
  // 4096 for a token (MM_MAX_ROOM_LEN and MM_MAX_TOKEN_LEN).
  'long-room': (response, body) => sendJson(response, 200, { room: 'r'.repeat(256), tokens: tokensFor(body.users) }),
  'long-token': (response, body) => {
    const tokens = tokensFor(body.users);
    tokens[body.users[0]] = 't'.repeat(4097);
    sendJson(response, 200, { room: nextRoomName(), tokens });
  },
  // Never respond: the client must time out.
  hang: () => {},
  // Send the status line and half of a valid body, then nothing more.
  stall: (response, body) => {
    const text = JSON.stringify({ room: nextRoomName(), tokens: tokensFor(body.users) });
    response.writeHead(200, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(text),
    });
    response.write(text.slice(0, Math.floor(text.length / 2)));
  },
  // A valid room padded to 10 MB, far past what a client should read.
  huge: (response, body) => {
    const room = JSON.stringify({ room: nextRoomName(), tokens: tokensFor(body.users) });
    const text = `${room.slice(0, -1)}, "padding": "${HUGE_PADDING}"}`;
    response.writeHead(200, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(text),
    });
    response.end(text);
  },
  // An invalid escape before a two-byte character: jansson's error
  // message quotes the first byte of that character alone.
  'bad-escape': (response) => {
    response.writeHead(200, { 'Content-Type': 'application/json' });
    response.end('{"room": "\\\u00e9"}');
  },
};

function nextRoomName() {
  roomCount += 1;
  return `fake-room-${roomCount}-${crypto.randomBytes(4).toString('hex')}`;
}

function tokensFor(users) {
  const tokens = {};
  for (const user of users) {
    tokens[user] = crypto.randomBytes(12).toString('base64url');
  }
  return tokens;
}

// Return an error message when the body is not a valid room request.
function validateRoomRequest(body) {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    return 'body must be a JSON object';
  }
  if (!Number.isSafeInteger(body.match_id)) {
    return '"match_id" must be an integer';
  }
  if (typeof body.mood !== 'string') {
    return '"mood" must be a string';
  }
  if (!Array.isArray(body.users) || body.users.length === 0 ||
      !body.users.every((user) => typeof user === 'string')) {
    return '"users" must be a non-empty array of strings';
  }
  return undefined;
}

// Return the response delay for a list of users: the delay of the longest
// prefix that matches any of them, or 0.
function delayFor(users) {
  let best = { length: -1, ms: 0 };
  for (const [prefix, ms] of delays) {
    if (users.some((user) => user.startsWith(prefix)) && prefix.length > best.length) {
      best = { length: prefix.length, ms };
    }
  }
  return best.ms;
}

async function createRoom(request, text, response) {
  const body = parseJson(text);
  const record = {
    seq: requests.length + 1,
    at: Date.now(),
    headers: request.headers,
    body: body === undefined ? text : body,
    status: 200,
  };
  requests.push(record);

  const invalid = validateRoomRequest(body);
  if (invalid) {
    record.status = 400;
    record.answer = invalid;
    sendJson(response, 400, { error: invalid });
    return;
  }

  const delay = delayFor(body.users);
  if (delay > 0) {
    await sleep(delay);
  }

  const rule = rules.take(body.users);
  if (rule && rule.kind === 'status') {
    const headers = {};
    if (rule.retryAfter !== undefined) {
      headers['Retry-After'] = formatRetryAfter(rule.retryAfter);
    }
    record.status = rule.status;
    sendJson(response, rule.status, { error: `fake failure ${rule.status}` }, headers);
    return;
  }
  if (rule && rule.kind === 'garbage') {
    const names = Object.keys(GARBAGE);
    const variant = rule.variant ?? names[garbageCount % names.length];
    garbageCount += 1;
    record.garbage = variant;
    GARBAGE[variant](response, body);
    return;
  }

  const answer = { room: nextRoomName(), tokens: tokensFor(body.users) };
  record.answer = answer;
  sendJson(response, 200, answer);
}

function control(text, response) {
  let parsed;
  try {
    parsed = parseControl(parseJson(text), ['garbage']);
    for (const rule of parsed.rules) {
      if (rule.kind === 'garbage' && rule.variant !== undefined && !(rule.variant in GARBAGE)) {
        throw new Error(`unknown garbage variant "${rule.variant}": expected one of ${Object.keys(GARBAGE).join(', ')}`);
      }
    }
  } catch (error) {
    sendJson(response, 400, { error: error.message });
    return;
  }
  if (parsed.reset) {
    requests.length = 0;
    rules.clear();
    delays.clear();
    collectGarbage();
  }
  for (const rule of parsed.rules) {
    rules.add(rule);
  }
  if (parsed.delay) {
    delays.set(parsed.delay.prefix, parsed.delay.ms);
  }
  sendJson(response, 200, { rules: rules.list(), delays: Object.fromEntries(delays) });
}

async function handle(request, text, response) {
  const url = new URL(request.url, 'http://127.0.0.1');

  if (request.method === 'POST' && url.pathname === '/rooms') {
    await createRoom(request, text, response);
  } else if (request.method === 'GET' && url.pathname === '/requests') {
    const prefix = url.searchParams.get('user');
    const selected = prefix === null
      ? requests
      : requests.filter((r) => Array.isArray(r.body?.users) &&
          r.body.users.some((user) => typeof user === 'string' && user.startsWith(prefix)));
    sendJson(response, 200, selected);
  } else if (request.method === 'POST' && url.pathname === '/control') {
    control(text, response);
  } else if (request.method === 'GET' && url.pathname === '/control') {
    sendJson(response, 200, { rules: rules.list(), delays: Object.fromEntries(delays) });
  } else {
    sendJson(response, 404, { error: `no route for ${request.method} ${url.pathname}` });
  }
}

serve(parsePort(process.argv), handle);
