#!/usr/bin/env node
'use strict';

// Fake Apple Push Notification service (provider API with token auth)
// for the end-to-end tests. It speaks cleartext HTTP/2 with prior
// knowledge (h2c), as libcurl does for an http:// URL with
// CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE.
//
//   node apns.js --port N [--public-key FILE] [--key-id K]
//                [--team-id T] [--topic BUNDLE]
//
// The options set the same fields as POST /control below; the public key
// is a PEM file (SPKI, "BEGIN PUBLIC KEY") of the P-256 signing key.
//
// One port serves both protocols: a connection that opens with the
// HTTP/2 preface goes to the HTTP/2 server, any other to an HTTP/1.1
// server. So the test routes below work with fetch() or plain curl, while
// pushes must use HTTP/2 (curl --http2-prior-knowledge), as at Apple.
//
// POST /3/device/TOKEN   a push. Checked in this order: HTTP/2, the path,
//                 the provider token (ES256 JWT verified with jose
//                 against the public key: kid, iss = teamId, an integer
//                 iat less than 3600 s old and not in the future), the
//                 headers apns-topic, apns-push-type, apns-priority,
//                 apns-expiration, apns-collapse-id and apns-id, then the
//                 body (JSON object with an "aps" object, at most 4096
//                 bytes). The first problem found sets the response, with
//                 the status and {"reason"} Apple documents for it. A
//                 valid push gets a control rule's error, or 200 with an
//                 apns-id header and an empty body.
// GET /deliveries every push, oldest first; ?to=PREFIX selects those whose
//                 device token starts with PREFIX.
// POST /control   a JSON object with any of:
//                 {"publicKey": PEM, "keyId": K, "teamId": T, "topic": B}
//                   configuration.
//                 {"reason": R, "count": N, "retryAfter": "2"}
//                   the next N valid pushes (default 1) get the error
//                   reason R (a key of REASONS below) with its status, and
//                   a Retry-After header when given. 410 responses also
//                   carry "timestamp" (ms since the epoch).
//                 {"to": PREFIX, ...} limits reason and delayMs to pushes
//                   whose device token starts with PREFIX.
//                 {"expireTokens": true} makes every provider token seen so
//                   far get 403 ExpiredProviderToken from now on, as Apple
//                   does with a token over an hour old.
//                 {"delayMs": M} delays push responses by M ms.
//                 {"reset": true} clears deliveries, rules and delays, but
//                   keeps the configuration and the expired tokens.
// GET /control    the configuration (without the key) and the rules.
//
// A delivery records: seq, at (ms since the epoch), connection (a number
// per TCP connection), httpVersion, method, path, token, headers (lower-
// case names, pseudo-headers included), body (parsed JSON, or the text),
// rawBody, bytes, jwt ({header, claims} as sent), jwtVerified, status,
// reason, problems (every check that failed) and apnsId.

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const http2 = require('node:http2');
const net = require('node:net');
const { decodeJwt, decodeProtectedHeader, importSPKI, jwtVerify } = require('jose');
const {
  RuleList,
  formatRetryAfter,
  parseJson,
  parsePort,
  readBody,
  sendJson,
  sleep,
} = require('./fake-server.js');

// Error reasons and their HTTP status, from Apple's "Handling notification
// responses from APNs".
const REASONS = {
  BadCollapseId: 400,
  BadDeviceToken: 400,
  BadExpirationDate: 400,
  BadMessageId: 400,
  BadPriority: 400,
  BadTopic: 400,
  DeviceTokenNotForTopic: 400,
  DuplicateHeaders: 400,
  IdleTimeout: 400,
  InvalidPushType: 400,
  MissingDeviceToken: 400,
  MissingTopic: 400,
  PayloadEmpty: 400,
  TopicDisallowed: 400,
  BadCertificate: 403,
  BadCertificateEnvironment: 403,
  ExpiredProviderToken: 403,
  Forbidden: 403,
  InvalidProviderToken: 403,
  MissingProviderToken: 403,
  BadPath: 404,
  MethodNotAllowed: 405,
  ExpiredToken: 410,
  Unregistered: 410,
  PayloadTooLarge: 413,
  TooManyProviderTokenUpdates: 429,
  TooManyRequests: 429,
  InternalServerError: 500,
  ServiceUnavailable: 503,
  Shutdown: 503,
};

// NOTE: Apple documents no reason for a body that is not a JSON object
// with "aps", so this fake sends 400 with its own reason "BadPayload".
const BAD_PAYLOAD = 'BadPayload';

const PUSH_TYPES = ['alert', 'background', 'location', 'voip', 'complication',
  'fileprovider', 'mdm', 'liveactivity', 'pushtotalk'];
const MAX_PAYLOAD_BYTES = 4096;
const MAX_COLLAPSE_ID_BYTES = 64;
// Apple rejects provider tokens whose iat is more than an hour old.
const MAX_TOKEN_AGE_S = 3600;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const config = {
  publicKey: undefined,
  keyId: undefined,
  teamId: undefined,
  topic: undefined,
};
const deliveries = [];
const rules = new RuleList();
const delays = new Map();
const expiredTokens = new Set();
const seenTokens = new Set();
let connectionCount = 0;

// Apply configuration fields (from the command line or POST /control).
// Throws an Error naming the invalid field, and then changes nothing.
async function configure(fields) {
  const changes = {};
  if (fields.publicKey !== undefined) {
    if (typeof fields.publicKey !== 'string') {
      throw new Error('"publicKey" must be a PEM string');
    }
    changes.publicKey = await importSPKI(fields.publicKey, 'ES256');
  }
  for (const name of ['keyId', 'teamId', 'topic']) {
    if (fields[name] !== undefined) {
      if (typeof fields[name] !== 'string' || fields[name] === '') {
        throw new Error(`"${name}" must be a non-empty string`);
      }
      changes[name] = fields[name];
    }
  }
  Object.assign(config, changes);
}

// Read the configuration options of the command line.
function parseOptions(argv) {
  const option = (name) => {
    const index = argv.indexOf(name);
    return index >= 0 ? argv[index + 1] : undefined;
  };
  const keyFile = option('--public-key');
  return {
    publicKey: keyFile === undefined ? undefined : fs.readFileSync(keyFile, 'utf8'),
    keyId: option('--key-id'),
    teamId: option('--team-id'),
    topic: option('--topic'),
  };
}

// Return the delay for a device token: that of the longest matching
// prefix, or 0.
function delayFor(token) {
  let best = { length: -1, ms: 0 };
  for (const [prefix, ms] of delays) {
    if (typeof token === 'string' && token.startsWith(prefix) && prefix.length > best.length) {
      best = { length: prefix.length, ms };
    }
  }
  return best.ms;
}

// Verify the provider token of the authorization header. Returns
// {reason, description} for the first problem, or undefined.
async function checkProviderToken(delivery, authorization) {
  const match = /^bearer (\S+)$/i.exec(authorization ?? '');
  if (!match) {
    return { reason: 'MissingProviderToken', description: 'no "authorization: bearer <JWT>" header' };
  }
  const jwt = match[1];

  try {
    delivery.jwt = { header: decodeProtectedHeader(jwt), claims: decodeJwt(jwt) };
  } catch (error) {
    return { reason: 'InvalidProviderToken', description: `not a JWT: ${error.message}` };
  }
  seenTokens.add(jwt);

  if (!config.publicKey || !config.keyId || !config.teamId) {
    return { reason: 'InvalidProviderToken', description: 'the fake has no publicKey, keyId or teamId: POST them to /control' };
  }
  try {
    // jose checks the R||S signature form, so a DER signature fails here.
    await jwtVerify(jwt, config.publicKey, { algorithms: ['ES256'], issuer: config.teamId });
  } catch (error) {
    return { reason: 'InvalidProviderToken', description: `rejected by jose: ${error.code ?? ''} ${error.message}` };
  }

  const { header, claims } = delivery.jwt;
  if (header.kid !== config.keyId) {
    return { reason: 'InvalidProviderToken', description: `kid is ${JSON.stringify(header.kid)}, expected "${config.keyId}"` };
  }
  if (!Number.isInteger(claims.iat)) {
    return { reason: 'InvalidProviderToken', description: 'iat must be an integer' };
  }
  const now = Math.floor(Date.now() / 1000);
  if (claims.iat > now + 60) {
    return { reason: 'InvalidProviderToken', description: `iat ${claims.iat} lies in the future` };
  }
  if (now - claims.iat >= MAX_TOKEN_AGE_S) {
    return { reason: 'ExpiredProviderToken', description: `iat is ${now - claims.iat} s old` };
  }
  if (expiredTokens.has(jwt)) {
    return { reason: 'ExpiredProviderToken', description: 'token expired by POST /control {"expireTokens": true}' };
  }
  delivery.jwtVerified = true;
  return undefined;
}

// Return the problems of the apns-* headers and the body as
// [{reason, description}], in the order Apple's reasons are listed.
function checkRequest(headers, rawBody) {
  const problems = [];
  const problem = (reason, description) => problems.push({ reason, description });

  const topic = headers['apns-topic'];
  if (topic === undefined) {
    problem('MissingTopic', 'no apns-topic header');
  } else if (config.topic !== undefined && topic !== config.topic) {
    problem('TopicDisallowed', `apns-topic is "${topic}", expected "${config.topic}"`);
  }

  const pushType = headers['apns-push-type'];
  if (!PUSH_TYPES.includes(pushType)) {
    problem('InvalidPushType', `apns-push-type is ${JSON.stringify(pushType)}`);
  }
  const priority = headers['apns-priority'];
  if (priority !== undefined && !['10', '5', '1'].includes(priority)) {
    problem('BadPriority', `apns-priority is "${priority}"`);
  } else if (pushType === 'background' && priority !== '5') {
    problem('BadPriority', 'a background push must have apns-priority 5');
  }
  const expiration = headers['apns-expiration'];
  if (expiration !== undefined && !/^\d+$/.test(expiration)) {
    problem('BadExpirationDate', `apns-expiration is "${expiration}"`);
  }
  const collapseId = headers['apns-collapse-id'];
  if (collapseId !== undefined && Buffer.byteLength(collapseId) > MAX_COLLAPSE_ID_BYTES) {
    problem('BadCollapseId', `apns-collapse-id is more than ${MAX_COLLAPSE_ID_BYTES} bytes`);
  }
  const apnsId = headers['apns-id'];
  if (apnsId !== undefined && !UUID.test(apnsId)) {
    problem('BadMessageId', `apns-id "${apnsId}" is not a lower-case UUID`);
  }

  const bytes = Buffer.byteLength(rawBody);
  const body = parseJson(rawBody);
  if (bytes === 0) {
    problem('PayloadEmpty', 'empty body');
  } else if (bytes > MAX_PAYLOAD_BYTES) {
    problem('PayloadTooLarge', `body is ${bytes} bytes, more than ${MAX_PAYLOAD_BYTES}`);
  } else if (body === null || typeof body !== 'object' || Array.isArray(body) ||
      body.aps === null || typeof body.aps !== 'object') {
    problem(BAD_PAYLOAD, 'body must be a JSON object with an "aps" object');
  } else if (pushType === 'alert' && body.aps.alert === undefined) {
    problem('InvalidPushType', 'an alert push must have aps.alert');
  } else if (pushType === 'background' && body.aps['content-available'] !== 1) {
    problem('InvalidPushType', 'a background push must have aps.content-available 1');
  }
  return problems;
}

// Send an APNs response: empty on 200, else {"reason"} and, for 410, the
// time the token was last valid.
function respond(response, delivery, status, reason, extraHeaders = {}) {
  delivery.status = status;
  delivery.reason = reason;
  const headers = { 'apns-id': delivery.apnsId, ...extraHeaders };
  if (status === 200) {
    response.writeHead(200, headers);
    response.end();
    return;
  }
  const answer = { reason };
  if (status === 410) {
    answer.timestamp = Date.now() - 60000;
  }
  const text = JSON.stringify(answer);
  response.writeHead(status, {
    ...headers,
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  response.end(text);
}

async function receivePush(request, rawBody, response) {
  const path = request.url;
  const tokenMatch = /^\/3\/device\/([^/?]*)$/.exec(path);
  const token = tokenMatch ? decodeURIComponent(tokenMatch[1]) : undefined;
  const delivery = {
    seq: deliveries.length + 1,
    at: Date.now(),
    connection: request.socket?.mmConnection,
    httpVersion: request.httpVersion,
    method: request.method,
    path,
    token,
    headers: request.headers,
    body: parseJson(rawBody) ?? rawBody,
    rawBody,
    bytes: Buffer.byteLength(rawBody),
    jwtVerified: false,
    status: 200,
    problems: [],
    apnsId: request.headers['apns-id'] ?? crypto.randomUUID(),
  };
  deliveries.push(delivery);

  const delay = delayFor(token);
  if (delay > 0) {
    await sleep(delay);
  }

  if (request.httpVersion !== '2.0') {
    // Apple accepts only HTTP/2; 505 is this fake's way of saying so.
    delivery.problems.push({ reason: 'HTTP/2 required', description: `HTTP/${request.httpVersion}` });
  } else if (request.method !== 'POST') {
    delivery.problems.push({ reason: 'MethodNotAllowed', description: request.method });
  } else if (token === undefined) {
    delivery.problems.push({ reason: 'BadPath', description: `path "${path}"` });
  } else if (token === '') {
    delivery.problems.push({ reason: 'MissingDeviceToken', description: 'empty device token' });
  } else {
    const authProblem = await checkProviderToken(delivery, request.headers.authorization);
    if (authProblem) {
      delivery.problems.push(authProblem);
    }
    delivery.problems.push(...checkRequest(request.headers, rawBody));
  }

  if (delivery.problems.length > 0) {
    const [first] = delivery.problems;
    const status = first.reason === 'HTTP/2 required' ? 505 : (REASONS[first.reason] ?? 400);
    console.log(`push ${delivery.seq} to "${token}": ${status} ${first.reason}: ${JSON.stringify(delivery.problems)}`);
    respond(response, delivery, status, first.reason);
    return;
  }

  const rule = rules.take([token]);
  if (rule) {
    const headers = {};
    if (rule.retryAfter !== undefined) {
      headers['retry-after'] = formatRetryAfter(rule.retryAfter);
      delivery.retryAfter = headers['retry-after'];
    }
    respond(response, delivery, REASONS[rule.reason], rule.reason, headers);
    return;
  }
  respond(response, delivery, 200, undefined);
}

// Turn a POST /control body into rules. Throws an Error with a message
// for the client, and then nothing is applied.
function parseApnsControl(body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new Error('control body must be a JSON object');
  }
  const prefix = body.to ?? '';
  if (typeof prefix !== 'string') {
    throw new Error('"to" must be a string');
  }
  const parsed = { rule: undefined, delay: undefined };
  if (body.reason !== undefined) {
    if (!(body.reason in REASONS)) {
      throw new Error(`unknown reason "${body.reason}": expected one of ${Object.keys(REASONS).join(', ')}`);
    }
    const count = body.count ?? 1;
    if (!Number.isInteger(count) || count < 1) {
      throw new Error('"count" must be a positive integer');
    }
    parsed.rule = { reason: body.reason, count, retryAfter: body.retryAfter, prefix };
  }
  if (body.delayMs !== undefined) {
    if (!Number.isInteger(body.delayMs) || body.delayMs < 0) {
      throw new Error('"delayMs" must be a non-negative integer');
    }
    parsed.delay = { prefix, ms: body.delayMs };
  }
  return parsed;
}

function describe() {
  return {
    config: { ...config, publicKey: config.publicKey !== undefined },
    rules: rules.list(),
    delays: Object.fromEntries(delays),
    expiredTokens: expiredTokens.size,
  };
}

async function control(text, response) {
  const body = parseJson(text);
  try {
    const parsed = parseApnsControl(body);
    await configure(body);
    if (body.reset === true) {
      deliveries.length = 0;
      rules.clear();
      delays.clear();
    }
    if (body.expireTokens === true) {
      seenTokens.forEach((jwt) => expiredTokens.add(jwt));
    }
    if (parsed.rule) {
      rules.add(parsed.rule);
    }
    if (parsed.delay) {
      delays.set(parsed.delay.prefix, parsed.delay.ms);
    }
  } catch (error) {
    sendJson(response, 400, { error: error.message });
    return;
  }
  sendJson(response, 200, describe());
}

// Route one request of either protocol.
async function handle(request, response) {
  try {
    const text = await readBody(request);
    const url = new URL(request.url, 'http://127.0.0.1');
    if (url.pathname.startsWith('/3/')) {
      await receivePush(request, text, response);
    } else if (request.method === 'GET' && url.pathname === '/deliveries') {
      const prefix = url.searchParams.get('to');
      const selected = prefix === null
        ? deliveries
        : deliveries.filter((d) => typeof d.token === 'string' && d.token.startsWith(prefix));
      sendJson(response, 200, selected);
    } else if (request.method === 'POST' && url.pathname === '/control') {
      await control(text, response);
    } else if (request.method === 'GET' && url.pathname === '/control') {
      sendJson(response, 200, describe());
    } else {
      sendJson(response, 404, { error: `no route for ${request.method} ${url.pathname}` });
    }
  } catch (error) {
    console.log(`request ${request.method} ${request.url} failed: ${error.stack}`);
    if (!response.headersSent) {
      sendJson(response, 500, { error: String(error.message) });
    } else {
      response.destroy();
    }
  }
}

// Start the HTTP/2 and HTTP/1.1 servers behind one loopback listener that
// hands each connection to one of them by its first bytes, and print
// "listening HOST:PORT".
function serve(port) {
  const h2Server = http2.createServer(handle);
  const h1Server = http.createServer(handle);
  h1Server.keepAliveTimeout = 30000;

  const listener = net.createServer((socket) => {
    connectionCount += 1;
    socket.mmConnection = connectionCount;
    socket.once('data', (chunk) => {
      socket.pause();
      socket.unshift(chunk);
      // Every HTTP/2 prior-knowledge connection opens with "PRI * HTTP/2.0",
      // and no HTTP/1.1 method is named PRI.
      if (chunk.subarray(0, 4).toString('latin1') === 'PRI ') {
        // The HTTP/2 session reads the socket's handle itself and takes
        // over the unshifted bytes. Resuming the stream here would make it
        // race the session for the bytes that follow.
        h2Server.emit('connection', socket);
      } else {
        h1Server.emit('connection', socket);
        socket.resume();
      }
    });
    socket.on('error', () => socket.destroy());
  });
  listener.listen({ port, host: '127.0.0.1', backlog: 1024 }, () => {
    const address = listener.address();
    console.log(`listening ${address.address}:${address.port}`);
  });

  const sockets = new Set();
  listener.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      listener.close();
      sockets.forEach((socket) => socket.destroy());
      process.exit(0);
    });
  }
}

async function main() {
  await configure(parseOptions(process.argv));
  serve(parsePort(process.argv));
}

main().catch((error) => {
  console.error(`apns fake: ${error.message}`);
  process.exit(1);
});
