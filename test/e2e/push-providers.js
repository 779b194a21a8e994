'use strict';

// Helpers for the push-provider tests: signing keys made at test time,
// the fake FCM and APNs services that test/e2e/run starts (their
// addresses are in MM_FCM_BASE and MM_APNS_BASE), and pairing two users
// until their pushes leave pending.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const lib = require('./lib.js');

const fcmBase = process.env.MM_FCM_BASE;
const apnsBase = process.env.MM_APNS_BASE;
if (!fcmBase || !apnsBase) {
  throw new Error('MM_FCM_BASE and MM_APNS_BASE are not set: run the tests through test/e2e/run');
}

// Write a secret file the server reads: in a folder of the cluster's
// directory, mode 0600, owned by the cluster's OS user. The server rejects
// key files with group or world access.
function writeServerFile(name, text) {
  const clusterDir = process.env.PGHOST;
  const owner = fs.statSync(clusterDir);
  const dir = path.join(clusterDir, 'push-keys');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, name);
  fs.writeFileSync(file, text, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
  if (process.getuid() === 0) {
    fs.chownSync(dir, owner.uid, owner.gid);
    fs.chownSync(file, owner.uid, owner.gid);
  }
  return file;
}

// Make an RSA key and a service-account file for it, as the Firebase
// console would issue. Returns what the FCM fake and the settings need.
function makeFcmAccount() {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const account = {
    type: 'service_account',
    project_id: `mm-e2e-${lib.runTag}`,
    private_key_id: crypto.randomBytes(20).toString('hex'),
    private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    client_email: `push@mm-e2e-${lib.runTag}.iam.gserviceaccount.com`,
    token_uri: `${fcmBase}/token`,
  };
  return {
    file: writeServerFile(`fcm-${lib.runTag}.json`, JSON.stringify(account, null, 2)),
    publicKey: publicKey.export({ type: 'spki', format: 'pem' }),
    projectId: account.project_id,
    clientEmail: account.client_email,
    keyId: account.private_key_id,
    tokenUrl: `${fcmBase}/token`,
  };
}

// Make a P-256 key in a .p8 file (PKCS#8 PEM), with ten-character key and
// team ids like Apple's.
function makeApnsKey() {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const keyId = crypto.randomBytes(5).toString('hex').toUpperCase();
  return {
    file: writeServerFile(`AuthKey_${keyId}.p8`, privateKey.export({ type: 'pkcs8', format: 'pem' })),
    publicKey: publicKey.export({ type: 'spki', format: 'pem' }),
    keyId,
    teamId: crypto.randomBytes(5).toString('hex').toUpperCase(),
    topic: 'com.example.matchmaker',
  };
}

// Send a request to a fake and return its parsed JSON response. Rejects
// with the status and body when the fake returns an error.
async function fakeRequest(url, body) {
  const options = { signal: AbortSignal.timeout(10000) };
  if (body !== undefined) {
    options.method = 'POST';
    options.headers = { 'Content-Type': 'application/json' };
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${options.method ?? 'GET'} ${url} returned ${response.status}: ${text}`);
  }
  return JSON.parse(text);
}

// Change the FCM fake; see test/fake/fcm.js.
function fcmControl(body) {
  return fakeRequest(`${fcmBase}/control`, body);
}

// Reset the FCM fake and give it account's public key and identity, so
// that it accepts the worker's assertions and issues access tokens that
// last an hour.
function trustFcmAccount(account) {
  return fcmControl({
    reset: true,
    publicKey: account.publicKey,
    clientEmail: account.clientEmail,
    keyId: account.keyId,
    projectId: account.projectId,
    expiresIn: 3599,
  });
}

// Return the send requests the FCM fake got whose token starts with prefix.
function fcmDeliveries(prefix) {
  return fakeRequest(`${fcmBase}/deliveries?to=${encodeURIComponent(prefix)}`);
}

function fcmTokenRequests() {
  return fakeRequest(`${fcmBase}/token-requests`);
}

// Change the APNs fake; see test/fake/apns.js.
function apnsControl(body) {
  return fakeRequest(`${apnsBase}/control`, body);
}

// Return the pushes the APNs fake got whose device token starts with prefix.
function apnsDeliveries(prefix) {
  return fakeRequest(`${apnsBase}/deliveries?to=${encodeURIComponent(prefix)}`);
}

// Return the rows of matchmaker.dead_push_tokens for the given tokens.
function deadTokens(tokens) {
  return lib.rows(`
    SELECT push_token, provider, reason, created_at FROM matchmaker.dead_push_tokens
    WHERE push_token IN (${tokens.map(lib.literal).join(', ')})
    ORDER BY push_token`);
}

// No test here expects more attempts than this, so a row still pending
// after them has failed its test and the wait stops early.
const MAX_EXPECTED_ATTEMPTS = 3;

// Wait until the outbox rows of the intents leave pending and return
// them. Rejects with every row's status, attempts and last_error when
// that takes longer than timeoutMs or more than MAX_EXPECTED_ATTEMPTS.
async function settledOutbox(intentIds, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const outbox = await lib.outboxOf(intentIds);
    const pending = outbox.filter((o) => o.status === 'pending');
    if (outbox.length >= intentIds.length && pending.length === 0) {
      return outbox;
    }
    const stuck = pending.some((o) => o.attempts > MAX_EXPECTED_ATTEMPTS);
    if (stuck || Date.now() >= deadline) {
      const summary = outbox.map((o) =>
        `outbox ${o.id}: ${o.status} after ${o.attempts} attempts, last_error ${JSON.stringify(o.last_error)}`);
      throw new Error(`pushes of intents ${intentIds.join(', ')} did not settle: ${summary.join('; ')}`);
    }
    await lib.sleep(100);
  }
}

// Pair two users in a private mood after prepare(pair) has installed the
// fake's rules, and wait until both outbox rows leave pending. Returns the
// users, the match and the outbox row of each user, in user order.
async function pairAndSettle(name, prepare = async () => {}, timeoutMs = lib.WORKER_TIMEOUT_MS) {
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  await prepare(pair);
  const inserted = await lib.insertIntents(pair, mood);
  const intentIds = inserted.map((i) => i.id);
  const match = await lib.settledMatch(pair);
  const outbox = await settledOutbox(intentIds, timeoutMs);
  const rows = intentIds.map((id) => outbox.find((o) => o.intent_id === id));
  return { pair, mood, match, intentIds, rows };
}

module.exports = {
  apnsBase,
  apnsControl,
  apnsDeliveries,
  deadTokens,
  fcmBase,
  fcmControl,
  fcmDeliveries,
  fcmTokenRequests,
  makeApnsKey,
  makeFcmAccount,
  pairAndSettle,
  trustFcmAccount,
};
