#!/usr/bin/env node
'use strict';

// Fake LiveKit RoomService (Twirp over HTTP/1.1, JSON encoding) for the
// end-to-end tests. Only CreateRoom is served.
//
//   node livekit.js --port N [--api-key K --api-secret S]
//
// POST /twirp/livekit.RoomService/CreateRoom
//                 verifies "Authorization: Bearer <JWT>" with
//                 livekit-server-sdk's TokenVerifier (HS256 with the API
//                 secret, iss = the API key, exp required) and requires the
//                 video grant roomCreate = true. Expects Content-Type
//                 application/json and a body {"name": "...", ...}; other
//                 fields are accepted as LiveKit accepts them. Responds 200
//                 with the Room in LiveKit's JSON form (snake_case, int64
//                 as strings). Creating a room that exists returns it again.
//                 Failures are Twirp errors {"code", "msg"}: 401
//                 unauthenticated, 403 permission_denied, 400 malformed or
//                 invalid_argument, 404 bad_route for another content type.
// Any other /twirp/ path responds 404 bad_route.
// GET /requests   every CreateRoom request, oldest first. ?room=PREFIX
//                 selects those whose body names a room starting with it.
// GET /rooms      the rooms created so far.
// POST /control   a JSON object with any of:
//                 {"apiKey": K, "apiSecret": S}  the credentials to verify
//                   tokens with.
//                 {"error": CODE, "count": N, "msg": "...", "status": S}
//                   the next N CreateRoom requests (default 1) with a valid
//                   token get the Twirp error CODE and create no room. The
//                   HTTP status is that of the code (TWIRP_STATUS below)
//                   unless "status" sets another, as a proxy in front of
//                   the server might.
//                 {"room": PREFIX, ...} limits "error" to requests naming
//                   a room that starts with PREFIX.
//                 {"delayMs": M} delays every CreateRoom response by M ms.
//                 {"reset": true} clears requests, rooms, rules and the
//                   delay, but keeps the credentials.
// GET /control    the API key (never the secret) and the rules in force.
//
// A request record has seq, at (ms since the epoch), headers, body,
// claims, authError, status and code. The body is the parsed JSON, or the
// text when it is not JSON. The claims are those of a token that passed
// verification, and code is the Twirp error code that was sent, if any.

const crypto = require('node:crypto');
const { TokenVerifier } = require('livekit-server-sdk');
const {
  RuleList,
  parseJson,
  parsePort,
  sendJson,
  serve,
  sleep,
} = require('./fake-server.js');

const CREATE_ROOM_PATH = '/twirp/livekit.RoomService/CreateRoom';

// HTTP status of each Twirp error code, as a Twirp server sends it
// (ServerHTTPStatusFromErrorCode in twitchtv/twirp errors.go).
const TWIRP_STATUS = {
  canceled: 408,
  unknown: 500,
  invalid_argument: 400,
  malformed: 400,
  deadline_exceeded: 408,
  not_found: 404,
  bad_route: 404,
  already_exists: 409,
  permission_denied: 403,
  unauthenticated: 401,
  resource_exhausted: 403,
  failed_precondition: 412,
  aborted: 409,
  out_of_range: 400,
  unimplemented: 501,
  internal: 500,
  unavailable: 503,
  data_loss: 500,
};

const credentials = { apiKey: undefined, apiSecret: undefined };
const requests = [];
const rooms = new Map();
const rules = new RuleList();
let delayMs = 0;

function sendTwirpError(response, code, msg, status = TWIRP_STATUS[code]) {
  sendJson(response, status, { code, msg });
}

// Read "--api-key K --api-secret S" from the command line.
function parseCredentials(argv) {
  const option = (name) => {
    const index = argv.indexOf(name);
    return index >= 0 ? argv[index + 1] : undefined;
  };
  return { apiKey: option('--api-key'), apiSecret: option('--api-secret') };
}

// Verify the bearer token of a request. Returns {claims} or {code, msg}
// with the Twirp error to send.
async function authenticate(headers) {
  const match = /^Bearer (\S+)$/.exec(headers.authorization ?? '');
  if (!match) {
    return { code: 'unauthenticated', msg: 'missing or malformed "Authorization: Bearer" header' };
  }
  if (!credentials.apiKey || !credentials.apiSecret) {
    return { code: 'unauthenticated', msg: 'the fake has no apiKey or apiSecret: POST them to /control' };
  }
  let claims;
  try {
    claims = await new TokenVerifier(credentials.apiKey, credentials.apiSecret).verify(match[1]);
  } catch (error) {
    return { code: 'unauthenticated', msg: `invalid token: ${error.message}` };
  }
  if (claims.video?.roomCreate !== true) {
    return { claims, code: 'permission_denied', msg: 'the token has no roomCreate grant' };
  }
  return { claims };
}

// Return a Twirp error {code, msg} when the body is not a CreateRoom
// request LiveKit would accept, or undefined.
function validateCreateRoom(body) {
  if (body === undefined) {
    return { code: 'malformed', msg: 'the body is not valid JSON' };
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    return { code: 'malformed', msg: 'the body must be a JSON object' };
  }
  if (typeof body.name !== 'string' || body.name === '') {
    return { code: 'invalid_argument', msg: '"name" must be a non-empty string' };
  }
  for (const field of ['empty_timeout', 'emptyTimeout', 'max_participants', 'maxParticipants',
    'departure_timeout', 'departureTimeout']) {
    const value = body[field];
    if (value !== undefined && !(Number.isInteger(value) && value >= 0)) {
      return { code: 'invalid_argument', msg: `"${field}" must be a non-negative integer` };
    }
  }
  return undefined;
}

// Build a Room as LiveKit's server returns it: proto field names and
// every field present, with int64 values as JSON strings. Timeouts and
// limits the request omits are 0 here.
function newRoom(body) {
  const now = Date.now();
  return {
    sid: `RM_${crypto.randomBytes(6).toString('hex')}`,
    name: body.name,
    empty_timeout: body.empty_timeout ?? body.emptyTimeout ?? 0,
    departure_timeout: body.departure_timeout ?? body.departureTimeout ?? 0,
    max_participants: body.max_participants ?? body.maxParticipants ?? 0,
    creation_time: String(Math.floor(now / 1000)),
    creation_time_ms: String(now),
    turn_password: '',
    enabled_codecs: [{ mime: 'audio/opus', fmtp_line: '' }],
    metadata: typeof body.metadata === 'string' ? body.metadata : '',
    num_participants: 0,
    num_publishers: 0,
    active_recording: false,
    version: null,
  };
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
  const reject = (code, msg, status = TWIRP_STATUS[code]) => {
    record.status = status;
    record.code = code;
    sendTwirpError(response, code, msg, status);
  };

  if (delayMs > 0) {
    await sleep(delayMs);
  }

  // Twirp routes a JSON request by its content type, ignoring parameters.
  const contentType = (request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (contentType !== 'application/json') {
    reject('bad_route', `unexpected Content-Type: "${request.headers['content-type'] ?? ''}"`);
    return;
  }

  const auth = await authenticate(request.headers);
  record.claims = auth.claims;
  if (auth.code) {
    record.authError = auth.msg;
    reject(auth.code, auth.msg);
    return;
  }

  const invalid = validateCreateRoom(body);
  if (invalid) {
    reject(invalid.code, invalid.msg);
    return;
  }

  const rule = rules.take([body.name]);
  if (rule) {
    reject(rule.code, rule.msg ?? `fake ${rule.code} error`, rule.status);
    return;
  }

  let room = rooms.get(body.name);
  if (!room) {
    room = newRoom(body);
    rooms.set(body.name, room);
  }
  record.answer = room;
  sendJson(response, 200, room);
}

// Validate a POST /control body and apply it. Throws an Error with a
// message for the client, and then changes nothing.
function control(body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new Error('control body must be a JSON object');
  }
  const prefix = body.room ?? '';
  if (typeof prefix !== 'string') {
    throw new Error('"room" must be a string');
  }
  for (const name of ['apiKey', 'apiSecret']) {
    if (body[name] !== undefined && (typeof body[name] !== 'string' || body[name] === '')) {
      throw new Error(`"${name}" must be a non-empty string`);
    }
  }
  let rule;
  if (body.error !== undefined) {
    if (!(body.error in TWIRP_STATUS)) {
      throw new Error(`unknown Twirp error code "${body.error}": expected one of ${Object.keys(TWIRP_STATUS).join(', ')}`);
    }
    const count = body.count ?? 1;
    if (!Number.isInteger(count) || count < 1) {
      throw new Error('"count" must be a positive integer');
    }
    if (body.msg !== undefined && typeof body.msg !== 'string') {
      throw new Error('"msg" must be a string');
    }
    const status = body.status ?? TWIRP_STATUS[body.error];
    if (!Number.isInteger(status) || status < 400 || status > 599) {
      throw new Error('"status" must be an HTTP error status from 400 to 599');
    }
    rule = { kind: 'twirp', code: body.error, count, msg: body.msg, status, prefix };
  }
  if (body.delayMs !== undefined && !(Number.isInteger(body.delayMs) && body.delayMs >= 0)) {
    throw new Error('"delayMs" must be a non-negative integer');
  }

  if (body.reset === true) {
    requests.length = 0;
    rooms.clear();
    rules.clear();
    delayMs = 0;
  }
  for (const name of ['apiKey', 'apiSecret']) {
    if (body[name] !== undefined) {
      credentials[name] = body[name];
    }
  }
  if (rule) {
    rules.add(rule);
  }
  if (body.delayMs !== undefined) {
    delayMs = body.delayMs;
  }
}

function controlState() {
  return { apiKey: credentials.apiKey ?? null, rules: rules.list(), delayMs };
}

async function handle(request, text, response) {
  const url = new URL(request.url, 'http://127.0.0.1');

  if (url.pathname === CREATE_ROOM_PATH && request.method === 'POST') {
    await createRoom(request, text, response);
  } else if (url.pathname.startsWith('/twirp/')) {
    sendTwirpError(response, 'bad_route', `no handler for ${request.method} ${url.pathname}`);
  } else if (request.method === 'GET' && url.pathname === '/requests') {
    const prefix = url.searchParams.get('room');
    const selected = prefix === null
      ? requests
      : requests.filter((r) => typeof r.body?.name === 'string' && r.body.name.startsWith(prefix));
    sendJson(response, 200, selected);
  } else if (request.method === 'GET' && url.pathname === '/rooms') {
    sendJson(response, 200, [...rooms.values()]);
  } else if (request.method === 'POST' && url.pathname === '/control') {
    try {
      control(parseJson(text));
    } catch (error) {
      sendJson(response, 400, { error: error.message });
      return;
    }
    sendJson(response, 200, controlState());
  } else if (request.method === 'GET' && url.pathname === '/control') {
    sendJson(response, 200, controlState());
  } else {
    sendJson(response, 404, { error: `no route for ${request.method} ${url.pathname}` });
  }
}

const initial = parseCredentials(process.argv);
credentials.apiKey = initial.apiKey;
credentials.apiSecret = initial.apiSecret;
serve(parsePort(process.argv), handle);
