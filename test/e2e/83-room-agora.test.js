'use strict';

// Room provider "agora": the worker mints one AccessToken2 ("007") RTC
// token per user without any HTTP call. Each token is parsed with Agora's
// own npm package (agora-token), and its signature is recomputed here
// from the app certificate.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const zlib = require('node:zlib');
const { AccessToken2, ServiceRtc, kRtcServiceType } = require('agora-token/src/AccessToken2');
const lib = require('./lib.js');
const { pairAndPush } = require('./room-providers.js');

// The app id and certificate of Agora's AccessToken2 test vectors
// (test/AccessToken2Test.js in the agora-token package).
const APP_ID = '970CA35de60c44645bbae8a215061b33';
const APP_CERTIFICATE = '5CFd2fd1755d40ecb72977518be15d3b';
const OTHER_CERTIFICATE = 'a'.repeat(32);

// The vector with uid 2882341273, issue_ts 1111111, expire 600, salt 1
// and only the join privilege.
const VECTOR_TOKEN = '007eJxTYBBbsMMnKq7p9Hf/HcIX5kce9b518kCiQgSr5Zrp4X1Tu6UUGCzNDZwdjU1TUs0Mkk1MzExMk5ISUy0SjQxNDcwMk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGaZYpJmYGSSkpiVwMRhYWRsYmhkbmxgDCaiTj';

const DEFAULT_TTL = 3600;
// Every test that pairs users sets all of these, and they are reset once
// at the end.
const AGORA_SETTINGS = {
  'matchmaker.room_provider': 'agora',
  'matchmaker.agora_app_id': APP_ID,
  'matchmaker.agora_app_certificate': APP_CERTIFICATE,
  'matchmaker.room_token_ttl': DEFAULT_TTL,
  'matchmaker.max_attempts': 2,
  'matchmaker.retry_base': 100,
};

const JOIN = ServiceRtc.kPrivilegeJoinChannel;
const PUBLISHER_PRIVILEGES = [JOIN, ServiceRtc.kPrivilegePublishAudioStream,
  ServiceRtc.kPrivilegePublishVideoStream, ServiceRtc.kPrivilegePublishDataStream];

test.before(lib.resetAllSettings);
test.after(() => lib.resetSettings(Object.keys(AGORA_SETTINGS)));

function useAgora(extra = {}) {
  return lib.setSettings({ ...AGORA_SETTINGS, ...extra });
}

function u32le(value) {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32LE(value >>> 0);
  return buffer;
}

// Inflate a token's content and split it into the signature and the
// signed fields that follow it.
function inflateToken(token) {
  assert.match(token, /^007[A-Za-z0-9+/]+={0,2}$/, 'a token is "007" and standard base64');
  const content = zlib.inflateSync(Buffer.from(token.slice(3), 'base64'));
  const signatureLength = content.readUInt16LE(0);
  return {
    content,
    signature: content.subarray(2, 2 + signatureLength),
    signingInfo: content.subarray(2 + signatureLength),
  };
}

// Compute the AccessToken2 signature: HMAC-SHA256 keyed by the issue time
// over the certificate text, keyed by the salt over that, and the result
// keys the HMAC of the signed fields.
function agoraSignature(certificate, issueTs, salt, signingInfo) {
  const byTime = crypto.createHmac('sha256', u32le(issueTs)).update(certificate).digest();
  const bySalt = crypto.createHmac('sha256', u32le(salt)).update(byTime).digest();
  return crypto.createHmac('sha256', bySalt).update(signingInfo).digest();
}

// Parse a token with agora-token and return its fields, after checking
// that it contains exactly one RTC service and that its signature is that
// of the certificate.
function parseToken(token, certificate) {
  const parsed = new AccessToken2('', '', 1, 0);
  assert.equal(parsed.from_string(token), true, `agora-token cannot parse ${token}`);
  assert.equal(parsed.services.length, 1, 'a token must hold one service');
  const [rtc] = parsed.services;
  assert.equal(rtc.service_type(), kRtcServiceType, 'the service must be RTC');

  const { signature, signingInfo } = inflateToken(token);
  const expected = agoraSignature(certificate, parsed.issueTs, parsed.salt, signingInfo);
  assert.equal(signature.toString('hex'), expected.toString('hex'), 'recomputed signature');
  assert.equal(parsed.verifySignature(certificate), true, 'agora-token verifySignature');
  assert.equal(parsed.verifySignature(OTHER_CERTIFICATE), false,
    'the signature must not pass with another certificate');

  return {
    appId: parsed.appId.toString(),
    issueTs: parsed.issueTs,
    expire: parsed.expire,
    salt: parsed.salt,
    channel: rtc.__channel_name.toString(),
    uid: rtc.__uid.toString(),
    privileges: { ...rtc.__privileges },
  };
}

function privilegesOf(ids, expire) {
  return Object.fromEntries(ids.map((id) => [String(id), expire]));
}

// Check the match pushes of an Agora match and the token of each user.
async function checkAgoraMatch({ pair, mood, match, intents, pushes }, ttl, before, after) {
  assert.equal(match.status, 'ready', `match ${match.id}: last_error ${match.last_error}`);
  const channel = `match-${match.id}`;
  assert.equal(match.room, channel);

  for (const [index, user] of pair.entries()) {
    const data = pushes[index];
    const intent = intents.find((i) => i.user_id === user.user);
    const uid = match.user_ids.indexOf(user.user) + 1;
    assert.ok(uid >= 1, `${user.user} is not in match ${match.id}`);

    assert.deepEqual(Object.keys(data).sort(),
      ['app_id', 'intent_id', 'match_id', 'mood', 'room', 'token', 'type', 'uid']);
    assert.equal(data.type, 'match');
    assert.equal(data.intent_id, intent.id);
    assert.equal(data.match_id, match.id);
    assert.equal(data.mood, mood);
    assert.equal(data.room, channel);
    assert.equal(data.app_id, APP_ID);
    assert.equal(data.uid, uid, `${user.user} is user ${uid} of the match`);

    const fields = parseToken(data.token, APP_CERTIFICATE);
    assert.equal(fields.appId, APP_ID);
    assert.equal(fields.channel, channel);
    assert.equal(fields.uid, String(uid));
    assert.ok(fields.issueTs >= before - 1, `issue_ts ${fields.issueTs} is before the pairing at ${before}`);
    assert.ok(fields.issueTs <= after + 1, `issue_ts ${fields.issueTs} is after the push at ${after}`);
    assert.equal(fields.expire, ttl, 'the token expires room_token_ttl after issue');
    assert.deepEqual(fields.privileges, privilegesOf(PUBLISHER_PRIVILEGES, ttl),
      'a publisher may join and publish audio, video and data until expiry');
  }
  assert.deepEqual(pushes.map((d) => d.uid).sort(), [1, 2], 'the users get uids 1 and 2');
}

function nowSeconds() {
  return Math.floor(Date.now() / 1000);
}

test('agora match pushes signed tokens', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await useAgora();
  const before = nowSeconds();
  const result = await pairAndPush('agora');
  const after = nowSeconds();
  await checkAgoraMatch(result, DEFAULT_TTL, before, after);
});

test('agora token ttl setting honoured', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const ttl = 600;
  await useAgora({ 'matchmaker.room_token_ttl': ttl });
  const before = nowSeconds();
  const result = await pairAndPush('agora-ttl');
  const after = nowSeconds();
  await checkAgoraMatch(result, ttl, before, after);
});

test('invalid agora app id fails match', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await useAgora({ 'matchmaker.agora_app_id': 'not-an-app-id' });
  const result = await pairAndPush('agora-badid');
  assert.equal(result.match.status, 'failed');
  assert.match(result.match.last_error ?? '', /32 hexadecimal/);
  for (const [index, intent] of result.intents.entries()) {
    assert.deepEqual(result.pushes[index],
      { type: 'failed', intent_id: intent.id, match_id: result.match.id });
  }
});

// Build the same token with agora-token, for comparing the content.
function packageToken({ channel, uid, issueTs, expire, salt, publisher }) {
  const token = new AccessToken2(APP_ID, APP_CERTIFICATE, issueTs, expire);
  token.salt = salt;
  const rtc = new ServiceRtc(channel, uid);
  for (const privilege of publisher ? PUBLISHER_PRIVILEGES : [JOIN]) {
    rtc.add_privilege(privilege, expire);
  }
  token.add_service(rtc);
  return token.build();
}

test('agora_token matches agora-token package', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const cases = [
    { channel: '7d72365eb983485397e3e3f9d460bdda', uid: 2882341273, issueTs: 1111111, expire: 600, salt: 1, publisher: false },
    { channel: '7d72365eb983485397e3e3f9d460bdda', uid: 0, issueTs: 1111111, expire: 600, salt: 1, publisher: false },
    { channel: 'match-42', uid: 1, issueTs: 1700000000, expire: 3600, salt: 99999999, publisher: true },
    { channel: 'match-43', uid: 2, issueTs: 1700000001, expire: 60, salt: 7, publisher: false },
    { channel: 'c'.repeat(64), uid: 4294967295, issueTs: 4294967295, expire: 86400, salt: 4294967295, publisher: true },
  ];

  for (const input of cases) {
    const label = JSON.stringify(input);
    const token = await lib.sql(`SELECT matchmaker.agora_token(${lib.literal(APP_ID)},
      ${lib.literal(APP_CERTIFICATE)}, ${lib.literal(input.channel)}, ${input.uid},
      ${input.issueTs}, ${input.expire}, ${input.salt}, ${input.publisher})`);

    const fields = parseToken(token, APP_CERTIFICATE);
    assert.equal(fields.appId, APP_ID, label);
    assert.equal(fields.channel, input.channel, label);
    assert.equal(fields.uid, input.uid === 0 ? '' : String(input.uid), `${label}: uid 0 is the empty string`);
    assert.equal(fields.issueTs, input.issueTs, label);
    assert.equal(fields.expire, input.expire, label);
    assert.equal(fields.salt, input.salt, label);
    const privileges = input.publisher ? PUBLISHER_PRIVILEGES : [JOIN];
    assert.deepEqual(fields.privileges, privilegesOf(privileges, input.expire), label);

    // zlib may compress the same content differently, so compare content.
    const expected = inflateToken(packageToken(input)).content;
    assert.equal(inflateToken(token).content.toString('hex'), expected.toString('hex'),
      `${label}: content must equal that of agora-token`);
  }

  const [vector] = cases;
  const token = await lib.sql(`SELECT matchmaker.agora_token(${lib.literal(APP_ID)},
    ${lib.literal(APP_CERTIFICATE)}, ${lib.literal(vector.channel)}, ${vector.uid},
    ${vector.issueTs}, ${vector.expire}, ${vector.salt}, false)`);
  assert.equal(inflateToken(token).content.toString('hex'),
    inflateToken(VECTOR_TOKEN).content.toString('hex'), 'published vector');
});

test('agora_token rejects invalid input', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const call = (appId, uid, salt) => lib.sql(`SELECT matchmaker.agora_token(${lib.literal(appId)},
    ${lib.literal(APP_CERTIFICATE)}, 'match-1', ${uid}, 1700000000, 600, ${salt}, true)`);

  await assert.rejects(call('970CA35de60c44645bbae8a215061b3', 1, 1), /32 hexadecimal/);
  await assert.rejects(call('970CA35de60c44645bbae8a215061b3x', 1, 1), /32 hexadecimal/);
  await assert.rejects(call(APP_ID, -1, 1), /32 unsigned bits/);
  await assert.rejects(call(APP_ID, 4294967296, 1), /32 unsigned bits/);
  await assert.rejects(call(APP_ID, 1, 4294967296), /32 unsigned bits/);
});
