'use strict';

// Signed webhooks. With matchmaker.webhook_secret set, every attempt
// carries webhook-timestamp (the attempt's Unix time) and a Standard
// Webhooks v1 webhook-signature, checked here with the standardwebhooks
// package, both by the fake receiver and by the test itself.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { Webhook } = require('standardwebhooks');
const lib = require('./lib.js');
const { pairAndSettle } = require('./push-providers.js');

// A fresh 32-byte secret per run, inside the 24 to 64 bytes that
// matchmaker.webhook_secret accepts.
const secret = `whsec_${crypto.randomBytes(32).toString('base64')}`;

test.before(async () => {
  await lib.resetAllSettings();
  await lib.pushControl({ webhookSecret: secret });
  await lib.setSettings({ 'matchmaker.webhook_secret': secret });
});

test.after(async () => {
  await lib.resetSettings(['matchmaker.webhook_secret']);
  await lib.pushControl({ webhookSecret: null });
});

// Check one delivery's signature headers and verify it with the secret.
function assertSigned(push, row) {
  assert.equal(push.headers['webhook-id'], String(row.id), 'webhook-id must be the outbox id');
  assert.match(push.headers['webhook-timestamp'] ?? '', /^[0-9]+$/, 'webhook-timestamp must be Unix seconds');
  const skew = Number(push.headers['webhook-timestamp']) - Math.floor(push.at / 1000);
  assert.ok(Math.abs(skew) <= 5, `webhook-timestamp is ${skew} s away from the arrival time`);
  assert.match(push.headers['webhook-signature'] ?? '', /^v1,[A-Za-z0-9+/]{43}=$/,
    'webhook-signature must be "v1," and a base64 HMAC-SHA256');
  assert.equal(push.verified, true, `receiver did not verify: ${push.verifyError}`);
  const verified = new Webhook(secret).verify(push.rawBody, push.headers);
  assert.deepEqual(verified, push.body);
}

test('signed webhook verifies', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const { pair, rows } = await pairAndSettle('signed');

  for (const [index, user] of pair.entries()) {
    const row = rows[index];
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
    const pushed = await lib.deliveries(user.token);
    assert.equal(pushed.length, 1, `${user.user} must get exactly one push`);
    assertSigned(pushed[0], row);
  }
});

test('signed webhook fails other secret', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  // The check above can fail: the same delivery does not verify with
  // another secret, nor with its body changed.
  const [push] = await lib.deliveries(lib.pushPrefix('signed'));
  assert.ok(push, 'the previous test must have left a delivery');
  const other = new Webhook(`whsec_${crypto.randomBytes(32).toString('base64')}`);
  assert.throws(() => other.verify(push.rawBody, push.headers), /No matching signature/);
  const mine = new Webhook(secret);
  assert.throws(() => mine.verify(`${push.rawBody} `, push.headers), /No matching signature/);
});

test('signed webhook matches SQL signature', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const [push] = await lib.deliveries(lib.pushPrefix('signed'));
  assert.ok(push, 'the previous test must have left a delivery');
  const signature = await lib.sql(`SELECT matchmaker.webhook_signature(
    ${lib.literal(secret)}, ${lib.literal(push.headers['webhook-id'])},
    ${Number(push.headers['webhook-timestamp'])}, ${lib.literal(push.rawBody)})`);
  assert.equal(signature, push.headers['webhook-signature']);
});

test('signed webhook retry signs again', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const { pair, rows } = await pairAndSettle('signed-retry', ([first]) =>
    lib.pushControl({ fail: 1, status: 503, retryAfter: '2', to: first.token }));

  const row = rows[0];
  assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
  const pushed = await lib.deliveries(pair[0].token);
  assert.deepEqual(pushed.map((d) => d.status), [503, 200]);
  for (const push of pushed) {
    assertSigned(push, row);
  }
  const [first, second] = pushed.map((d) => Number(d.headers['webhook-timestamp']));
  assert.ok(second > first,
    `the retry 2 s later must carry its own timestamp, got ${first} then ${second}`);
});

// Last in this file, because it clears the secret for the rest of it.
test('webhook unsigned without secret', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await lib.resetSettings(['matchmaker.webhook_secret']);
  await lib.pushControl({ webhookSecret: null });

  const { pair, rows } = await pairAndSettle('unsigned');
  for (const [index, user] of pair.entries()) {
    assert.equal(rows[index].status, 'sent', `outbox ${rows[index].id}: last_error ${rows[index].last_error}`);
    const [push] = await lib.deliveries(user.token);
    assert.equal(push.headers['webhook-id'], String(rows[index].id));
    assert.equal(push.headers['webhook-signature'], undefined);
    assert.equal(push.headers['webhook-timestamp'], undefined);
  }
});
