'use strict';

// Secrets stay out of logs and recorded errors. With every secret set,
// providers fail: a wrong URL, and 401 answers whose body echoes the
// request's headers, bearer token included. The recorded errors and the
// server log (at DEBUG1 during this file, so that every handled error is
// logged) must contain none of the secrets.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const lib = require('./lib.js');
const { makeFcmAccount, pairAndSettle, trustFcmAccount } = require('./push-providers.js');

const SETTINGS = [
  'log_min_messages',
  'matchmaker.webhook_secret',
  'matchmaker.agora_app_id',
  'matchmaker.agora_app_certificate',
  'matchmaker.livekit_api_key',
  'matchmaker.livekit_api_secret',
  'matchmaker.room_provider',
  'matchmaker.room_url',
  'matchmaker.push_provider',
  'matchmaker.fcm_project_id',
  'matchmaker.fcm_key_file',
  'matchmaker.fcm_token_url',
  'matchmaker.fcm_url',
  'matchmaker.max_attempts',
  'matchmaker.retry_base',
];

const webhookSecret = `whsec_${crypto.randomBytes(32).toString('base64')}`;
const agoraCertificate = crypto.randomBytes(16).toString('hex');
const livekitSecret = crypto.randomBytes(24).toString('base64url');

let account;
let logOffset;
// The bearer tokens the worker sent, as the receiver recorded them.
const bearerTokens = [];
// Every error text the worker recorded in this file.
const recordedErrors = [];

// Return every secret value, and for each bearer token its first 20
// characters too, since an error keeps only the start of a long body.
function secretValues() {
  const keyText = fs.readFileSync(account.file, 'utf8');
  const privateKey = JSON.parse(keyText).private_key;
  const values = [
    webhookSecret,
    webhookSecret.slice('whsec_'.length),
    agoraCertificate,
    livekitSecret,
    // a line from the middle of the FCM private key
    privateKey.split('\n')[5],
  ];
  for (const token of bearerTokens) {
    values.push(token, token.slice(0, 20));
  }
  return values;
}

// Return the bearer tokens of the deliveries whose path starts with
// pathPrefix.
async function bearerTokensSentTo(pathPrefix) {
  const pushed = await lib.deliveries();
  return pushed
    .filter((d) => d.url.startsWith(pathPrefix) && d.headers.authorization)
    .map((d) => d.headers.authorization.replace(/^Bearer /i, ''));
}

test.before(async () => {
  await lib.resetAllSettings();
  logOffset = lib.serverLogSize();
  account = makeFcmAccount();
  await trustFcmAccount(account);
  await lib.setSettings({
    log_min_messages: 'debug1',
    'matchmaker.webhook_secret': webhookSecret,
    'matchmaker.agora_app_id': crypto.randomBytes(16).toString('hex'),
    'matchmaker.agora_app_certificate': agoraCertificate,
    'matchmaker.livekit_api_key': 'APImatchmaker',
    'matchmaker.livekit_api_secret': livekitSecret,
    'matchmaker.fcm_project_id': account.projectId,
    'matchmaker.fcm_key_file': account.file,
    'matchmaker.fcm_token_url': account.tokenUrl,
    'matchmaker.max_attempts': 2,
    'matchmaker.retry_base': 100,
  });
});

test.after(() => lib.resetSettings(SETTINGS));

test('webhook 401 echo records no secret', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const { rows } = await pairAndSettle('secret-webhook', () =>
    lib.pushControl({ fail: 2, status: 401, echoHeaders: true, to: lib.pushPrefix('secret-webhook') }));

  for (const row of rows) {
    assert.equal(row.status, 'failed', `outbox ${row.id} must fail on a 401`);
    assert.match(row.last_error ?? '', /^HTTP 401: /);
    recordedErrors.push(row.last_error);
  }
});

test('livekit wrong URL records no secret', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await lib.setSettings({
    'matchmaker.room_provider': 'livekit',
    'matchmaker.room_url': await lib.closedUrl(''),
  });

  const { match, rows } = await pairAndSettle('secret-refused');
  assert.equal(match.status, 'failed');
  assert.match(match.last_error ?? '', /^gave up after 2 attempts: /);
  recordedErrors.push(match.last_error);
  // the "failed" pushes that follow reach the receiver and record no error
  for (const row of rows) {
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
  }
});

test('livekit 401 echo redacts token', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  // CreateRoom goes to the receiver, which echoes the LiveKit JWT.
  await lib.setSettings({
    'matchmaker.room_provider': 'livekit',
    'matchmaker.room_url': lib.env.pushBase,
  });
  await lib.pushControl({ fail: 1, status: 401, echoHeaders: true, to: '' });

  const { match } = await pairAndSettle('secret-livekit');
  assert.equal(match.status, 'failed');
  assert.match(match.last_error ?? '', /^HTTP 401: .*\[redacted\]/);
  const sent = await bearerTokensSentTo('/twirp/');
  assert.ok(sent.length >= 1, 'the receiver must have got the CreateRoom request');
  bearerTokens.push(...sent);
  recordedErrors.push(match.last_error);
});

test('fcm 401 echo redacts access token', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  // The token comes from the FCM fake; the sends go to the receiver.
  await lib.resetSettings(['matchmaker.room_provider', 'matchmaker.room_url']);
  await lib.setSettings({
    'matchmaker.push_provider': 'fcm',
    'matchmaker.fcm_url': lib.env.pushBase,
  });
  await lib.pushControl({ fail: 4, status: 401, echoHeaders: true, to: '' });

  const { rows } = await pairAndSettle('secret-fcm');
  for (const row of rows) {
    assert.equal(row.status, 'failed', `outbox ${row.id} must fail on a 401`);
    assert.match(row.last_error ?? '', /\[redacted\]/);
    recordedErrors.push(row.last_error);
  }
  const sent = await bearerTokensSentTo(`/v1/projects/${account.projectId}/`);
  assert.ok(sent.length >= 2, 'the receiver must have got both sends');
  bearerTokens.push(...sent);
});

test('errors and log hold no secret', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  assert.ok(recordedErrors.length >= 6, `the earlier tests recorded ${recordedErrors.length} errors`);
  const log = lib.serverLogSince(logOffset);
  assert.match(log, /\[redacted\]/, 'the log must show the redacted LiveKit failure');
  for (const secret of secretValues()) {
    assert.ok(secret.length >= 16, `secret "${secret}" is too short to search for`);
    for (const error of recordedErrors) {
      assert.ok(!error.includes(secret), `recorded error contains a secret: ${error}`);
    }
    assert.ok(!log.includes(secret), 'the server log contains a secret');
  }
});
