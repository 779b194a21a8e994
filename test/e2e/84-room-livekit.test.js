'use strict';

// Room provider "livekit": each user gets an HS256 access token for the
// room "match-<id>", checked with livekit-server-sdk's TokenVerifier.
// With matchmaker.room_url set, the worker first creates the room through
// RoomService CreateRoom (Twirp) on the fake LiveKit server, which checks
// the server token the same way and can respond with Twirp errors.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { TokenVerifier } = require('livekit-server-sdk');
const lib = require('./lib.js');
const {
  livekitBase,
  livekitControl,
  livekitRequests,
  pairAndPush,
} = require('./room-providers.js');

const API_KEY = `APIe2e${lib.runTag}`;
const API_SECRET = crypto.randomBytes(24).toString('base64url');
// Pushed to the apps only: nothing connects to it in these tests.
const LIVEKIT_URL = 'ws://127.0.0.1:7880';
const DEFAULT_TTL = 3600;
const MAX_ATTEMPTS = 3;

// Every test sets all of these, so a test starts from the same settings
// whatever the test before it changed, and they are reset once at the end.
const LIVEKIT_SETTINGS = {
  'matchmaker.room_provider': 'livekit',
  'matchmaker.room_url': '',
  'matchmaker.livekit_url': LIVEKIT_URL,
  'matchmaker.livekit_api_key': API_KEY,
  'matchmaker.livekit_api_secret': API_SECRET,
  'matchmaker.room_token_ttl': DEFAULT_TTL,
  'matchmaker.max_attempts': MAX_ATTEMPTS,
  'matchmaker.retry_base': 100,
};

test.before(async () => {
  await lib.resetAllSettings();
  await livekitControl({ reset: true, apiKey: API_KEY, apiSecret: API_SECRET });
});

test.after(() => lib.resetSettings(Object.keys(LIVEKIT_SETTINGS)));

// Switch the worker to LiveKit. roomUrl '' mints tokens only.
function useLivekit(roomUrl, extra = {}) {
  return lib.setSettings({ ...LIVEKIT_SETTINGS, 'matchmaker.room_url': roomUrl, ...extra });
}

function decodeHeader(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[0], 'base64url').toString('utf8'));
}

function nowSeconds() {
  return Math.floor(Date.now() / 1000);
}

// Check the match pushes of a LiveKit match and verify each user's token.
async function checkLivekitMatch({ pair, mood, match, intents, pushes }, ttl, before) {
  assert.equal(match.status, 'ready', `match ${match.id}: last_error ${match.last_error}`);
  const room = `match-${match.id}`;
  assert.equal(match.room, room);

  for (const [index, user] of pair.entries()) {
    const data = pushes[index];
    const intent = intents.find((i) => i.user_id === user.user);
    assert.deepEqual(Object.keys(data).sort(),
      ['intent_id', 'match_id', 'mood', 'room', 'token', 'type', 'url']);
    assert.equal(data.type, 'match');
    assert.equal(data.intent_id, intent.id);
    assert.equal(data.match_id, match.id);
    assert.equal(data.mood, mood);
    assert.equal(data.room, room);
    assert.equal(data.url, LIVEKIT_URL);

    assert.deepEqual(decodeHeader(data.token), { alg: 'HS256', typ: 'JWT' });
    const claims = await new TokenVerifier(API_KEY, API_SECRET).verify(data.token);
    assert.equal(claims.iss, API_KEY);
    assert.equal(claims.sub, user.user, 'the identity is the user id');
    assert.equal(claims.video?.room, room);
    assert.equal(claims.video?.roomJoin, true);
    assert.equal(claims.video?.canPublish, true);
    assert.equal(claims.video?.canSubscribe, true);
    assert.equal(claims.video?.roomCreate, undefined, 'a user token must not create rooms');
    assert.ok(Number.isInteger(claims.nbf), `nbf must be set: ${JSON.stringify(claims)}`);
    assert.ok(Number.isInteger(claims.exp), `exp must be set: ${JSON.stringify(claims)}`);
    assert.ok(claims.nbf >= before - 1, `nbf ${claims.nbf} is before the pairing at ${before}`);
    assert.ok(claims.exp > nowSeconds(), `exp ${claims.exp} has passed`);
    assert.equal(claims.exp - claims.nbf, ttl, 'the token lives room_token_ttl seconds');

    await assert.rejects(new TokenVerifier(API_KEY, `${API_SECRET}x`).verify(data.token),
      'the token must not verify with another secret');
  }
}

// Check that a CreateRoom request was one for the room, sent with a valid
// server token.
function checkCreateRoomRequest(request, room) {
  assert.deepEqual(request.body, { name: room, empty_timeout: 60, max_participants: 2 });
  assert.match(request.headers['content-type'] ?? '', /^application\/json/);
  assert.ok(request.claims, `the fake rejected the token: ${request.authError}`);
  assert.equal(request.claims.iss, API_KEY);
  assert.equal(request.claims.video?.roomCreate, true);
  assert.ok(Number.isInteger(request.claims.nbf), 'the server token must have nbf');
  assert.ok(request.claims.exp > request.claims.nbf, 'the server token must have exp after nbf');
}

test('livekit tokens without room_url', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await useLivekit('');
  const requestsBefore = (await livekitRequests()).length;
  const before = nowSeconds();
  const result = await pairAndPush('lk-tokens');
  await checkLivekitMatch(result, DEFAULT_TTL, before);
  assert.equal((await livekitRequests()).length, requestsBefore, 'no CreateRoom without room_url');
});

test('livekit token ttl setting honoured', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const ttl = 300;
  await useLivekit('', { 'matchmaker.room_token_ttl': ttl });
  const before = nowSeconds();
  const result = await pairAndPush('lk-ttl');
  await checkLivekitMatch(result, ttl, before);
});

test('CreateRoom once per match', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await useLivekit(livekitBase);
  const before = nowSeconds();
  const result = await pairAndPush('lk-create');
  await checkLivekitMatch(result, DEFAULT_TTL, before);

  const room = `match-${result.match.id}`;
  const requests = await livekitRequests(room);
  assert.equal(requests.length, 1, 'one CreateRoom request per match');
  assert.equal(requests[0].status, 200);
  checkCreateRoomRequest(requests[0], room);
  assert.equal(result.match.attempts, 1);
});

test('CreateRoom retryable errors retried', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await useLivekit(livekitBase);
  const cases = [
    { error: 'unavailable', status: 503 },
    { error: 'internal', status: 500 },
    { error: 'deadline_exceeded', status: 408 },
    // A Twirp server sends resource_exhausted as 403, but a rate limiter
    // in front of LiveKit may respond with 429.
    { error: 'resource_exhausted', status: 429 },
  ];

  for (const [index, rule] of cases.entries()) {
    const label = `${rule.error} ${rule.status}`;
    await livekitControl({ ...rule, count: 1 });
    const result = await pairAndPush(`lk-retry${index}`);
    assert.equal(result.match.status, 'ready', `${label}: last_error ${result.match.last_error}`);
    assert.equal(result.match.attempts, 2, `${label}: one failed attempt, then success`);

    const room = `match-${result.match.id}`;
    const requests = await livekitRequests(room);
    assert.deepEqual(requests.map((r) => r.status), [rule.status, 200], label);
    assert.deepEqual(requests[1].body, requests[0].body, `${label}: a retry must create the same room`);
    checkCreateRoomRequest(requests[1], room);
    assert.equal(result.pushes[0].type, 'match', label);
  }
});

test('CreateRoom 4xx fails match', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await useLivekit(livekitBase);
  const cases = [
    { error: 'invalid_argument', status: 400 },
    { error: 'permission_denied', status: 403 },
    { error: 'not_found', status: 404 },
    { error: 'failed_precondition', status: 412 },
  ];

  for (const [index, rule] of cases.entries()) {
    const label = `${rule.error} ${rule.status}`;
    // One error only: a retry would succeed and leave the match ready.
    await livekitControl({ ...rule, count: 1 });
    const result = await pairAndPush(`lk-fail${index}`);
    const { match } = result;
    assert.equal(match.status, 'failed', `${label}: the match must fail`);
    assert.equal(match.attempts, 1, `${label}: a 4xx must not be retried`);
    assert.match(match.last_error ?? '', new RegExp(rule.error), `${label}: last_error names the Twirp code`);

    const requests = await livekitRequests(`match-${match.id}`);
    assert.deepEqual(requests.map((r) => r.status), [rule.status], label);
    for (const [i, intent] of result.intents.entries()) {
      assert.equal(intent.status, 'failed', label);
      assert.deepEqual(result.pushes[i], { type: 'failed', intent_id: intent.id, match_id: match.id }, label);
    }
  }
});

test('CreateRoom 409 counts as created', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await useLivekit(livekitBase);
  await livekitControl({ error: 'already_exists', count: 1 });
  const before = nowSeconds();
  const result = await pairAndPush('lk-exists');
  await checkLivekitMatch(result, DEFAULT_TTL, before);
  assert.equal(result.match.attempts, 1);

  const requests = await livekitRequests(`match-${result.match.id}`);
  assert.deepEqual(requests.map((r) => r.status), [409]);
  assert.equal(requests[0].code, 'already_exists');
});

test('wrong livekit secret fails match', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await useLivekit(livekitBase, { 'matchmaker.livekit_api_secret': `${API_SECRET}-wrong` });
  const { match, pushes } = await pairAndPush('lk-badsecret');
  assert.equal(match.status, 'failed');
  assert.match(match.last_error ?? '', /unauthenticated/);

  const requests = await livekitRequests(`match-${match.id}`);
  assert.deepEqual(requests.map((r) => r.status), [401]);
  assert.match(requests[0].authError ?? '', /signature/);
  assert.deepEqual(pushes.map((p) => p.type), ['failed', 'failed']);
});

test('missing livekit api key fails match', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await useLivekit('', { 'matchmaker.livekit_api_key': '' });
  const { match, pushes } = await pairAndPush('lk-nokey');
  assert.equal(match.status, 'failed');
  assert.equal(match.attempts, MAX_ATTEMPTS, 'a missing key is retried, in case it gets set');
  assert.match(match.last_error ?? '', /livekit_api_key/);
  assert.deepEqual(pushes.map((p) => p.type), ['failed', 'failed']);
});
