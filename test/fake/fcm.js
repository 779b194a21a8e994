#!/usr/bin/env node
'use strict';

// Fake Firebase Cloud Messaging (HTTP v1 API) with its OAuth 2.0 token
// endpoint, for the end-to-end tests. One HTTP/1.1 server serves both.
//
//   node fcm.js --port N [--public-key FILE] [--client-email E]
//               [--key-id K] [--project-id P] [--expires-in S]
//
// The options set the same fields as POST /control below; the public key
// is a PEM file (SPKI, "BEGIN PUBLIC KEY").
//
// POST /token     the service-account token exchange: a form body with
//                 grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer
//                 and assertion=<RS256 JWT>. The assertion is verified
//                 with jose against the public key: signature, typ JWT,
//                 kid (when keyId is set), iss = clientEmail, aud = the
//                 audience (default: this server's /token URL), a scope
//                 that grants FCM, exp - iat <= 3600 s, iat not in the
//                 future. Returns {"access_token", "expires_in",
//                 "token_type": "Bearer"} or 400 {"error": "invalid_grant"}.
// POST /v1/projects/P/messages:send
//                 checks the Bearer access token (401 UNAUTHENTICATED
//                 without an FcmError when it is unknown, expired or
//                 revoked), validates the message and responds 200
//                 {"name": "projects/P/messages/N"}, or 400
//                 INVALID_ARGUMENT listing what is wrong, or the error
//                 that a control rule sets.
// GET /deliveries every send request, oldest first; ?to=PREFIX selects
//                 those whose message.token starts with PREFIX.
// GET /token-requests every token request, oldest first.
// POST /control   a JSON object with any of:
//                 {"publicKey": PEM, "clientEmail": E, "keyId": K,
//                  "projectId": P, "audience": URL, "expiresIn": S}
//                   configuration; expiresIn is the expires_in, in
//                   seconds, of access tokens issued from now on.
//                 {"errorCode": CODE, "count": N, "retryAfter": "2"}
//                   the next N sends (default 1) get the FCM error CODE
//                   (one of FCM_ERRORS below) with its HTTP status, and a
//                   Retry-After header when given ("date+S" sends an HTTP
//                   date S seconds after the response).
//                 {"unauthenticated": N}
//                   the next N sends get 401 UNAUTHENTICATED, as if the
//                   access token had expired.
//                 {"tokenError": N, "status": 400}
//                   the next N token requests fail with that status
//                   (400: invalid_grant, else a server error).
//                 {"to": PREFIX, ...} limits errorCode, unauthenticated
//                   and delayMs to sends whose message.token starts with
//                   PREFIX.
//                 {"revokeTokens": true} makes every access token issued
//                   so far invalid.
//                 {"delayMs": M} delays send responses by M ms.
//                 {"reset": true} clears deliveries, token requests, rules
//                   and delays, but keeps the configuration and the
//                   issued access tokens.
// GET /control    the configuration (without the key) and the rules.
//
// A delivery records: seq, at (ms since the epoch), url, headers, body
// (parsed JSON, or the text when it is not JSON), rawBody, token (the
// message.token), accessToken, status, errorCode (when an FCM error was
// sent), problems (what validation found wrong) and retryAfter.

const crypto = require('node:crypto');
const fs = require('node:fs');
const { decodeJwt, decodeProtectedHeader, importSPKI, jwtVerify } = require('jose');
const {
  RuleList,
  formatRetryAfter,
  parseJson,
  parsePort,
  sendJson,
  serve,
  sleep,
} = require('./fake-server.js');

const GRANT_TYPE = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

// Scopes that grant sending with FCM. The request may list more.
const FCM_SCOPES = [
  'https://www.googleapis.com/auth/firebase.messaging',
  'https://www.googleapis.com/auth/cloud-platform',
];

// The maximum assertion lifetime (exp - iat) Google accepts, in seconds.
const MAX_ASSERTION_LIFETIME = 3600;

// Data keys FCM reserves for itself.
const RESERVED_DATA_KEYS = /^(from|message_type|notification|google|gcm)/;

// FCM error codes with the HTTP status and google.rpc status of the
// response that carries them.
const FCM_ERRORS = {
  INVALID_ARGUMENT: { status: 400, rpc: 'INVALID_ARGUMENT', message: 'The registration token is not a valid FCM registration token' },
  THIRD_PARTY_AUTH_ERROR: { status: 401, rpc: 'UNAUTHENTICATED', message: 'The APNs or web push credential of the project is invalid' },
  SENDER_ID_MISMATCH: { status: 403, rpc: 'PERMISSION_DENIED', message: 'The registration token belongs to another sender' },
  UNREGISTERED: { status: 404, rpc: 'NOT_FOUND', message: 'The registration token is no longer registered' },
  QUOTA_EXCEEDED: { status: 429, rpc: 'RESOURCE_EXHAUSTED', message: 'The sending quota was exceeded' },
  INTERNAL: { status: 500, rpc: 'INTERNAL', message: 'Internal error' },
  UNAVAILABLE: { status: 503, rpc: 'UNAVAILABLE', message: 'The service is overloaded' },
};

const config = {
  publicKey: undefined,
  clientEmail: undefined,
  keyId: undefined,
  projectId: undefined,
  audience: undefined,
  expiresIn: 3599,
};
let ownTokenUrl;

const deliveries = [];
const tokenRequests = [];
const rules = new RuleList();
const tokenRules = new RuleList();
const delays = new Map();
// Issued access tokens: token -> {expiresAt (ms), revoked, requestSeq}.
const accessTokens = new Map();
let messageCount = 0;

// Apply configuration fields (from the command line or POST /control).
// Throws an Error naming the invalid field, and then changes nothing.
async function configure(fields) {
  const changes = {};
  if (fields.publicKey !== undefined) {
    if (typeof fields.publicKey !== 'string') {
      throw new Error('"publicKey" must be a PEM string');
    }
    changes.publicKey = await importSPKI(fields.publicKey, 'RS256');
  }
  for (const name of ['clientEmail', 'keyId', 'projectId', 'audience']) {
    if (fields[name] !== undefined) {
      if (typeof fields[name] !== 'string' || fields[name] === '') {
        throw new Error(`"${name}" must be a non-empty string`);
      }
      changes[name] = fields[name];
    }
  }
  if (fields.expiresIn !== undefined) {
    if (!Number.isInteger(fields.expiresIn) || fields.expiresIn < 1) {
      throw new Error('"expiresIn" must be a positive integer (seconds)');
    }
    changes.expiresIn = fields.expiresIn;
  }
  Object.assign(config, changes);
}

// Read the configuration options of the command line.
function parseOptions(argv) {
  const fields = {};
  const option = (name) => {
    const index = argv.indexOf(name);
    return index >= 0 ? argv[index + 1] : undefined;
  };
  const keyFile = option('--public-key');
  if (keyFile !== undefined) {
    fields.publicKey = fs.readFileSync(keyFile, 'utf8');
  }
  fields.clientEmail = option('--client-email');
  fields.keyId = option('--key-id');
  fields.projectId = option('--project-id');
  const expiresIn = option('--expires-in');
  if (expiresIn !== undefined) {
    fields.expiresIn = Number(expiresIn);
  }
  return fields;
}

// Return the delay for a registration token: that of the longest
// matching prefix, or 0.
function delayFor(token) {
  let best = { length: -1, ms: 0 };
  for (const [prefix, ms] of delays) {
    if (typeof token === 'string' && token.startsWith(prefix) && prefix.length > best.length) {
      best = { length: prefix.length, ms };
    }
  }
  return best.ms;
}

// Decode a JWT without verifying it, for the request records.
function decodeForRecord(jwt) {
  try {
    return { header: decodeProtectedHeader(jwt), claims: decodeJwt(jwt) };
  } catch {
    return { header: undefined, claims: undefined };
  }
}

// Verify an OAuth assertion and return undefined, or a description of
// what is wrong with it.
async function checkAssertion(assertion) {
  if (!config.publicKey || !config.clientEmail) {
    return 'the fake has no publicKey or clientEmail: POST them to /control';
  }
  let verified;
  try {
    verified = await jwtVerify(assertion, config.publicKey, {
      algorithms: ['RS256'],
      typ: 'JWT',
      issuer: config.clientEmail,
      audience: config.audience ?? ownTokenUrl,
    });
  } catch (error) {
    return `assertion rejected by jose: ${error.code ?? ''} ${error.message}`;
  }
  const { payload, protectedHeader } = verified;
  if (config.keyId !== undefined && protectedHeader.kid !== config.keyId) {
    return `kid is ${JSON.stringify(protectedHeader.kid)}, expected "${config.keyId}"`;
  }
  const scopes = typeof payload.scope === 'string' ? payload.scope.split(' ') : [];
  if (!scopes.some((scope) => FCM_SCOPES.includes(scope))) {
    return `scope ${JSON.stringify(payload.scope)} does not grant FCM`;
  }
  if (!Number.isInteger(payload.iat) || !Number.isInteger(payload.exp)) {
    return 'iat and exp must be integers';
  }
  if (payload.exp - payload.iat > MAX_ASSERTION_LIFETIME) {
    return `exp - iat is ${payload.exp - payload.iat} s, more than ${MAX_ASSERTION_LIFETIME} s`;
  }
  if (payload.iat > Math.floor(Date.now() / 1000) + 60) {
    return `iat ${payload.iat} lies in the future`;
  }
  return undefined;
}

async function issueToken(request, text, response) {
  const form = new URLSearchParams(text);
  const assertion = form.get('assertion');
  const record = {
    seq: tokenRequests.length + 1,
    at: Date.now(),
    headers: request.headers,
    rawBody: text,
    grantType: form.get('grant_type'),
    assertion,
    ...decodeForRecord(assertion ?? ''),
    verified: false,
    status: 200,
  };
  tokenRequests.push(record);
  const reject = (status, error, description) => {
    record.status = status;
    record.error = description;
    console.log(`token request ${record.seq}: ${status} ${error}: ${description}`);
    sendJson(response, status, { error, error_description: description });
  };

  if (!/^application\/x-www-form-urlencoded/.test(request.headers['content-type'] ?? '')) {
    reject(400, 'invalid_request', 'Content-Type must be application/x-www-form-urlencoded');
    return;
  }
  if (record.grantType !== GRANT_TYPE) {
    reject(400, 'unsupported_grant_type', `grant_type must be ${GRANT_TYPE}`);
    return;
  }
  if (!assertion) {
    reject(400, 'invalid_request', 'assertion is missing');
    return;
  }
  const problem = await checkAssertion(assertion);
  if (problem) {
    reject(400, 'invalid_grant', problem);
    return;
  }
  record.verified = true;

  const rule = tokenRules.take(['']);
  if (rule) {
    if (rule.status === 400) {
      reject(400, 'invalid_grant', 'fake failure: assertion refused');
    } else {
      reject(rule.status, 'internal_failure', `fake failure ${rule.status}`);
    }
    return;
  }

  const accessToken = `fake-access-${crypto.randomBytes(16).toString('hex')}`;
  accessTokens.set(accessToken, {
    expiresAt: Date.now() + config.expiresIn * 1000,
    revoked: false,
    requestSeq: record.seq,
  });
  record.accessToken = accessToken;
  sendJson(response, 200, {
    access_token: accessToken,
    expires_in: config.expiresIn,
    token_type: 'Bearer',
  });
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

// Return the problems of a send request body as [{field, description}],
// following the Message schema of the FCM v1 API and the settings the
// worker promises (a token target, string data, high Android priority).
function validateSend(body) {
  const problems = [];
  const problem = (field, description) => problems.push({ field, description });
  if (!isObject(body) || !isObject(body.message)) {
    problem('message', 'body must be a JSON object with a "message" object');
    return problems;
  }
  for (const key of Object.keys(body)) {
    if (!['message', 'validate_only', 'validateOnly'].includes(key)) {
      problem(key, 'unknown field');
    }
  }
  const message = body.message;
  const allowed = ['name', 'data', 'notification', 'android', 'webpush', 'apns',
    'fcm_options', 'fcmOptions', 'token', 'topic', 'condition'];
  for (const key of Object.keys(message)) {
    if (!allowed.includes(key)) {
      problem(`message.${key}`, 'unknown field');
    }
  }
  const targets = ['token', 'topic', 'condition'].filter((key) => message[key] !== undefined);
  if (targets.length !== 1 || targets[0] !== 'token') {
    problem('message.token', `exactly one target, the token, is expected; got ${targets.join(', ') || 'none'}`);
  } else if (typeof message.token !== 'string' || message.token === '') {
    problem('message.token', 'must be a non-empty string');
  }

  if (message.data !== undefined) {
    if (!isObject(message.data)) {
      problem('message.data', 'must be an object');
    } else {
      for (const [key, value] of Object.entries(message.data)) {
        if (typeof value !== 'string') {
          problem(`message.data.${key}`, `value must be a string, got ${JSON.stringify(value)}`);
        }
        if (RESERVED_DATA_KEYS.test(key)) {
          problem(`message.data.${key}`, 'reserved key');
        }
      }
      if (Buffer.byteLength(JSON.stringify(message.data)) > 4096) {
        problem('message.data', 'more than 4096 bytes');
      }
    }
  }

  const android = message.android;
  if (!isObject(android)) {
    problem('message.android', 'must be an object with priority "high"');
  } else {
    if (String(android.priority).toLowerCase() !== 'high') {
      problem('message.android.priority', `must be "high", got ${JSON.stringify(android.priority)}`);
    }
    if (android.ttl !== undefined &&
        (typeof android.ttl !== 'string' || !/^\d+(\.\d{1,9})?s$/.test(android.ttl))) {
      problem('message.android.ttl', `must be a duration such as "60s", got ${JSON.stringify(android.ttl)}`);
    } else if (android.ttl !== undefined && parseFloat(android.ttl) > 28 * 24 * 3600) {
      problem('message.android.ttl', 'longer than 4 weeks');
    }
  }

  if (message.apns !== undefined) {
    problems.push(...validateApnsConfig(message.apns));
  }
  return problems;
}

// Return the problems of message.apns: headers are strings, and a
// background push has priority 5 and content-available 1, as APNs requires.
function validateApnsConfig(apns) {
  const problems = [];
  const problem = (field, description) => problems.push({ field, description });
  if (!isObject(apns)) {
    problem('message.apns', 'must be an object');
    return problems;
  }
  const headers = apns.headers ?? {};
  if (!isObject(headers) || !Object.values(headers).every((value) => typeof value === 'string')) {
    problem('message.apns.headers', 'must be an object of strings');
    return problems;
  }
  if (apns.payload !== undefined && !isObject(apns.payload?.aps)) {
    problem('message.apns.payload.aps', 'must be an object');
  }
  if (headers['apns-push-type'] === 'background') {
    if (headers['apns-priority'] !== '5') {
      problem('message.apns.headers.apns-priority', 'a background push must have priority "5"');
    }
    if (apns.payload?.aps?.['content-available'] !== 1) {
      problem('message.apns.payload.aps.content-available', 'a background push must set it to 1');
    }
  }
  return problems;
}

// Send an FCM error response. details lists extra google.rpc details.
function sendFcmError(response, code, extraHeaders = {}, details = []) {
  const error = FCM_ERRORS[code];
  sendJson(response, error.status, {
    error: {
      code: error.status,
      message: error.message,
      status: error.rpc,
      details: [
        { '@type': 'type.googleapis.com/google.firebase.fcm.v1.FcmError', errorCode: code },
        ...details,
      ],
    },
  }, extraHeaders);
}

// Send the 401 of an invalid access token: a google.rpc status without
// an FcmError detail.
function sendUnauthenticated(response, description) {
  sendJson(response, 401, {
    error: {
      code: 401,
      message: `Request had invalid authentication credentials: ${description}`,
      status: 'UNAUTHENTICATED',
    },
  }, { 'WWW-Authenticate': 'Bearer realm="https://accounts.google.com/"' });
}

// Return why the Authorization header does not carry a valid access
// token, or undefined when it does.
function checkAccessToken(header, accessToken) {
  if (!/^Bearer [^ ]+$/.test(header ?? '')) {
    return 'missing "Authorization: Bearer" header';
  }
  const issued = accessTokens.get(accessToken);
  if (!issued) {
    return 'unknown access token';
  }
  if (issued.revoked) {
    return 'access token revoked';
  }
  if (Date.now() >= issued.expiresAt) {
    return 'access token expired';
  }
  return undefined;
}

async function send(request, text, response, projectId) {
  const body = parseJson(text);
  const token = typeof body?.message?.token === 'string' ? body.message.token : undefined;
  const header = request.headers.authorization;
  const delivery = {
    seq: deliveries.length + 1,
    at: Date.now(),
    url: request.url,
    headers: request.headers,
    body: body === undefined ? text : body,
    rawBody: text,
    token,
    accessToken: header?.replace(/^Bearer /, ''),
    status: 200,
    problems: [],
  };
  deliveries.push(delivery);

  const delay = delayFor(token);
  if (delay > 0) {
    await sleep(delay);
  }

  // Authentication is checked first, so a request with a bad access token
  // consumes no error rule.
  const authProblem = checkAccessToken(header, delivery.accessToken);
  if (authProblem) {
    delivery.status = 401;
    delivery.authError = authProblem;
    console.log(`send ${delivery.seq} to "${token}": 401: ${authProblem}`);
    sendUnauthenticated(response, authProblem);
    return;
  }
  const rule = rules.take([token ?? '']);
  if (rule && rule.kind === 'unauthenticated') {
    delivery.status = 401;
    delivery.authError = 'fake failure: unauthenticated rule';
    sendUnauthenticated(response, 'the access token expired');
    return;
  }

  // Then the request itself.
  if (!/^application\/json/.test(request.headers['content-type'] ?? '')) {
    delivery.problems.push({ field: 'Content-Type', description: 'must be application/json' });
  }
  if (config.projectId !== undefined && projectId !== config.projectId) {
    delivery.problems.push({ field: 'url', description: `project "${projectId}", expected "${config.projectId}"` });
  }
  delivery.problems.push(...validateSend(body));
  if (delivery.problems.length > 0) {
    delivery.status = 400;
    delivery.errorCode = 'INVALID_ARGUMENT';
    console.log(`send ${delivery.seq} to "${token}": invalid: ${JSON.stringify(delivery.problems)}`);
    sendFcmError(response, 'INVALID_ARGUMENT', {}, [{
      '@type': 'type.googleapis.com/google.rpc.BadRequest',
      fieldViolations: delivery.problems,
    }]);
    return;
  }

  if (rule && rule.kind === 'errorCode') {
    const headers = {};
    if (rule.retryAfter !== undefined) {
      headers['Retry-After'] = formatRetryAfter(rule.retryAfter);
      delivery.retryAfter = headers['Retry-After'];
    }
    delivery.status = FCM_ERRORS[rule.code].status;
    delivery.errorCode = rule.code;
    sendFcmError(response, rule.code, headers);
    return;
  }

  messageCount += 1;
  sendJson(response, 200, { name: `projects/${projectId}/messages/${messageCount}` });
}

// Turn a POST /control body into rules. Throws an Error with a message
// for the client, and then nothing is applied.
function parseFcmControl(body) {
  if (!isObject(body)) {
    throw new Error('control body must be a JSON object');
  }
  const prefix = body.to ?? '';
  if (typeof prefix !== 'string') {
    throw new Error('"to" must be a string');
  }
  const count = (name, value) => {
    if (!Number.isInteger(value) || value < 1) {
      throw new Error(`"${name}" must be a positive integer`);
    }
    return value;
  };
  const parsed = { rules: [], tokenRules: [], delay: undefined };
  if (body.errorCode !== undefined) {
    if (!(body.errorCode in FCM_ERRORS)) {
      throw new Error(`unknown errorCode "${body.errorCode}": expected one of ${Object.keys(FCM_ERRORS).join(', ')}`);
    }
    parsed.rules.push({
      kind: 'errorCode',
      code: body.errorCode,
      count: count('count', body.count ?? 1),
      retryAfter: body.retryAfter,
      prefix,
    });
  }
  if (body.unauthenticated !== undefined) {
    parsed.rules.push({
      kind: 'unauthenticated',
      count: count('unauthenticated', body.unauthenticated),
      prefix,
    });
  }
  if (body.tokenError !== undefined) {
    const status = body.status ?? 400;
    if (!Number.isInteger(status) || status < 400 || status > 599) {
      throw new Error('"status" must be an HTTP error status');
    }
    parsed.tokenRules.push({
      kind: 'tokenError',
      count: count('tokenError', body.tokenError),
      status,
      prefix: '',
    });
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
    config: { ...config, publicKey: config.publicKey !== undefined, audience: config.audience ?? ownTokenUrl },
    rules: rules.list(),
    tokenRules: tokenRules.list(),
    delays: Object.fromEntries(delays),
    accessTokens: accessTokens.size,
  };
}

async function control(text, response) {
  const body = parseJson(text);
  try {
    const parsed = parseFcmControl(body);
    await configure(body);
    if (body.reset === true) {
      deliveries.length = 0;
      tokenRequests.length = 0;
      rules.clear();
      tokenRules.clear();
      delays.clear();
    }
    if (body.revokeTokens === true) {
      for (const issued of accessTokens.values()) {
        issued.revoked = true;
      }
    }
    parsed.rules.forEach((rule) => rules.add(rule));
    parsed.tokenRules.forEach((rule) => tokenRules.add(rule));
    if (parsed.delay) {
      delays.set(parsed.delay.prefix, parsed.delay.ms);
    }
  } catch (error) {
    sendJson(response, 400, { error: error.message });
    return;
  }
  sendJson(response, 200, describe());
}

async function handle(request, text, response) {
  const url = new URL(request.url, 'http://127.0.0.1');
  const sendPath = /^\/v1\/projects\/([^/]+)\/messages:send$/.exec(url.pathname);

  if (request.method === 'POST' && url.pathname === '/token') {
    await issueToken(request, text, response);
  } else if (request.method === 'POST' && sendPath) {
    await send(request, text, response, decodeURIComponent(sendPath[1]));
  } else if (request.method === 'GET' && url.pathname === '/deliveries') {
    const prefix = url.searchParams.get('to');
    const selected = prefix === null
      ? deliveries
      : deliveries.filter((d) => typeof d.token === 'string' && d.token.startsWith(prefix));
    sendJson(response, 200, selected);
  } else if (request.method === 'GET' && url.pathname === '/token-requests') {
    sendJson(response, 200, tokenRequests);
  } else if (request.method === 'POST' && url.pathname === '/control') {
    await control(text, response);
  } else if (request.method === 'GET' && url.pathname === '/control') {
    sendJson(response, 200, describe());
  } else {
    sendJson(response, 404, { error: `no route for ${request.method} ${url.pathname}` });
  }
}

async function main() {
  await configure(parseOptions(process.argv));
  const server = serve(parsePort(process.argv), handle);
  server.on('listening', () => {
    ownTokenUrl = `http://127.0.0.1:${server.address().port}/token`;
  });
}

main().catch((error) => {
  console.error(`fcm fake: ${error.message}`);
  process.exit(1);
});
