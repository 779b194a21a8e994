'use strict';

// Push provider "fcm" against the fake FCM service: the OAuth assertion
// (RS256, verified with jose), the cached access token, the message
// shape, and how each FCM error code is handled.

const test = require('node:test');
const assert = require('node:assert/strict');
const { importSPKI, jwtVerify } = require('jose');
const lib = require('./lib.js');
const {
  deadTokens,
  fcmBase,
  fcmControl,
  fcmDeliveries,
  fcmTokenRequests,
  makeFcmAccount,
  pairAndSettle,
  trustFcmAccount,
} = require('./push-providers.js');

const SETTINGS = [
  'matchmaker.push_provider',
  'matchmaker.fcm_project_id',
  'matchmaker.fcm_key_file',
  'matchmaker.fcm_token_url',
  'matchmaker.fcm_url',
];
const SCOPE = 'https://www.googleapis.com/auth/firebase.messaging';

let account;

test.before(async () => {
  await lib.resetAllSettings();
  account = makeFcmAccount();
  await trustFcmAccount(account);
  await lib.setSettings({
    'matchmaker.push_provider': 'fcm',
    'matchmaker.fcm_project_id': account.projectId,
    'matchmaker.fcm_key_file': account.file,
    'matchmaker.fcm_token_url': account.tokenUrl,
    'matchmaker.fcm_url': fcmBase,
  });
});

// Back to the webhook provider and push_url of postgresql.conf.
test.after(() => lib.resetSettings(SETTINGS));

// Check one successful send against the message the worker promises.
function assertMessage(push, user, intentId, match) {
  assert.equal(push.status, 200, `send to ${user.token}: ${JSON.stringify(push.problems)}`);
  assert.deepEqual(push.problems, []);
  assert.equal(push.url, `/v1/projects/${account.projectId}/messages:send`);
  assert.match(push.headers['content-type'], /^application\/json/);

  const { message } = push.body;
  assert.equal(message.token, user.token);
  const { token: roomToken, ...data } = message.data;
  assert.deepEqual(data, {
    type: 'match',
    intent_id: String(intentId),
    match_id: String(match.id),
    mood: match.mood,
    room: String(match.room),
  });
  assert.equal(typeof roomToken, 'string');
  assert.ok(roomToken.length > 0, 'the room token must not be empty');

  assert.equal(message.android.priority, 'high');
  assert.match(message.android.ttl, /^[0-9]+s$/);
  assert.deepEqual(message.apns, {
    headers: { 'apns-priority': '5', 'apns-push-type': 'background' },
    payload: { aps: { 'content-available': 1 } },
  });
}

test('fcm pair gets verified pushes', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const { pair, match, intentIds, rows } = await pairAndSettle('fcm');

  const requests = await fcmTokenRequests();
  assert.equal(requests.length, 1, 'one token request must serve both pushes');
  const [request] = requests;
  assert.equal(request.status, 200, `token request rejected: ${request.error}`);
  assert.equal(request.verified, true);
  assert.match(request.headers['content-type'], /^application\/x-www-form-urlencoded/);
  assert.equal(request.grantType, 'urn:ietf:params:oauth:grant-type:jwt-bearer');
  assert.deepEqual(request.header, { alg: 'RS256', typ: 'JWT', kid: account.keyId });

  // Verify the assertion here too, independently of the fake.
  const key = await importSPKI(account.publicKey, 'RS256');
  const { payload } = await jwtVerify(request.assertion, key, {
    algorithms: ['RS256'],
    issuer: account.clientEmail,
    audience: account.tokenUrl,
  });
  assert.equal(payload.scope, SCOPE);
  assert.equal(payload.exp - payload.iat, 3600);
  assert.ok(Math.abs(payload.iat - Date.now() / 1000) < 60, `iat ${payload.iat} is not now`);

  for (const [index, user] of pair.entries()) {
    const row = rows[index];
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
    assert.equal(row.attempts, 1);
    const pushed = await fcmDeliveries(user.token);
    assert.equal(pushed.length, 1, `${user.user} must get exactly one push`);
    assertMessage(pushed[0], user, intentIds[index], match);
    assert.equal(pushed[0].accessToken, request.accessToken);
  }
});

test('fcm access token reused', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const before = await fcmTokenRequests();
  const { pair, rows } = await pairAndSettle('fcm-cached');

  const after = await fcmTokenRequests();
  assert.equal(after.length, before.length, 'a valid access token must be reused');
  for (const [index, user] of pair.entries()) {
    assert.equal(rows[index].status, 'sent', `outbox ${rows[index].id}: last_error ${rows[index].last_error}`);
    const [push] = await fcmDeliveries(user.token);
    assert.equal(push.accessToken, before.at(-1).accessToken);
  }
});

test('fcm permanent errors mark token dead', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const cases = ['UNREGISTERED', 'SENDER_ID_MISMATCH', 'INVALID_ARGUMENT'];
  const results = await Promise.all(cases.map((code) =>
    pairAndSettle(`fcm-${code.toLowerCase().replace(/_/g, '-')}`, ([first]) =>
      fcmControl({ errorCode: code, count: 5, to: first.token }))));

  // Give a wrongly scheduled retry time to show up: twice retry_base.
  await lib.sleep(1000);
  for (const [index, code] of cases.entries()) {
    const { pair, rows } = results[index];
    const row = rows[0];
    assert.equal(row.status, 'failed', `${code}: outbox ${row.id} is ${row.status}`);
    assert.equal(row.attempts, 1, `${code} must not be retried`);
    assert.match(row.last_error ?? '', new RegExp(code));
    const pushed = await fcmDeliveries(pair[0].token);
    assert.equal(pushed.length, 1, `${code} must not be retried`);

    const dead = await deadTokens(pair.map((u) => u.token));
    assert.equal(dead.length, 1, `${code}: exactly the refused token must be dead`);
    assert.equal(dead[0].push_token, pair[0].token);
    assert.equal(dead[0].provider, 'fcm');
    assert.match(dead[0].reason, new RegExp(code));

    assert.equal(rows[1].status, 'sent', `${code}: the partner's push must still go out`);
  }
});

test('fcm transient errors retried', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const cases = [
    { code: 'QUOTA_EXCEEDED', status: 429 },
    { code: 'UNAVAILABLE', status: 503, retryAfter: 2 },
    { code: 'INTERNAL', status: 500 },
  ];
  const results = await Promise.all(cases.map(({ code, retryAfter }) =>
    pairAndSettle(`fcm-${code.toLowerCase().replace(/_/g, '-')}`, ([first]) =>
      fcmControl({ errorCode: code, to: first.token, retryAfter }))));

  for (const [index, { code, status, retryAfter }] of cases.entries()) {
    const { pair, rows } = results[index];
    const row = rows[0];
    assert.equal(row.status, 'sent', `${code}: outbox ${row.id}: last_error ${row.last_error}`);
    assert.equal(row.attempts, 2, `${code} must be retried once`);
    const pushed = await fcmDeliveries(pair[0].token);
    assert.deepEqual(pushed.map((d) => d.status), [status, 200], code);
    assert.deepEqual(pushed[1].body, pushed[0].body, `${code}: the retry must send the same message`);
    if (retryAfter !== undefined) {
      const gap = pushed[1].at - pushed[0].at;
      assert.ok(gap >= retryAfter * 1000 - 50, `${code}: retry came ${gap} ms after Retry-After: ${retryAfter}`);
    }
    assert.deepEqual(await deadTokens([pair[0].token]), [], `${code} must not mark the token dead`);
  }
});

test('fcm 401 renews access token', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const before = await fcmTokenRequests();
  await fcmControl({ revokeTokens: true });
  const { pair, rows } = await pairAndSettle('fcm-401');

  const fresh = (await fcmTokenRequests()).slice(before.length);
  assert.ok(fresh.length >= 1, 'a 401 must make the worker fetch a new access token');
  assert.ok(fresh.length <= 2, `two refused pushes need at most two new tokens, got ${fresh.length}`);
  for (const request of fresh) {
    assert.equal(request.status, 200, `token request rejected: ${request.error}`);
  }
  const freshTokens = fresh.map((r) => r.accessToken);

  for (const [index, user] of pair.entries()) {
    const row = rows[index];
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
    const pushed = await fcmDeliveries(user.token);
    assert.deepEqual(pushed.map((d) => d.status), [401, 200], `${user.user}: refused once, then sent`);
    assert.notEqual(pushed[1].accessToken, pushed[0].accessToken);
    assert.ok(freshTokens.includes(pushed[1].accessToken), 'the retry must use a new access token');
  }
  assert.deepEqual(await deadTokens(pair.map((u) => u.token)), []);
});

test('fcm access token renewed early', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  // Tokens that live 2 s. The first pair is refused once (the revoked
  // token), and gets such a token.
  await fcmControl({ expiresIn: 2, revokeTokens: true });
  t.after(() => fcmControl({ expiresIn: 3599 }));
  const first = await pairAndSettle('fcm-short');
  const [firstPush] = (await fcmDeliveries(first.pair[0].token)).filter((d) => d.status === 200);
  assert.ok(firstPush, 'the first pair must be delivered');

  // By now the token is past the middle of its life, so the worker must
  // fetch a new one before sending instead of running into a 401.
  await lib.sleep(1500);
  const before = await fcmTokenRequests();
  const second = await pairAndSettle('fcm-renewed');

  const fresh = (await fcmTokenRequests()).slice(before.length);
  assert.ok(fresh.length >= 1, 'the worker must renew a token before it expires');
  for (const [index, user] of second.pair.entries()) {
    const row = second.rows[index];
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
    const pushed = await fcmDeliveries(user.token);
    assert.deepEqual(pushed.map((d) => d.status), [200], `${user.user}: sent with a valid token`);
    assert.notEqual(pushed[0].accessToken, firstPush.accessToken);
  }
});
