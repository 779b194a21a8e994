'use strict';

// An intent that waits intent_ttl seconds alone expires, and its user gets
// an "expired" push.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');

test.before(lib.resetAllSettings);

const TTL_SECONDS = 2;

test('lone intent expires with push', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await lib.setSettings({ 'matchmaker.intent_ttl': TTL_SECONDS });
  t.after(() => lib.resetSettings(['matchmaker.intent_ttl']));
  const mood = await lib.newMood('expiry');
  const [lone, late] = lib.users('expiry', 2);

  const [inserted] = await lib.insertIntents([lone], mood);
  const [waiting] = await lib.intentsOf([lone]);
  const ttlMs = Date.parse(waiting.expires_at) - Date.parse(waiting.created_at);
  assert.equal(ttlMs, TTL_SECONDS * 1000, 'expires_at must be created_at + intent_ttl');

  const [expired] = await lib.waitForIntents([lone], 'expired', (TTL_SECONDS + 10) * 1000);
  assert.equal(expired.match_id, null);

  const [row] = await lib.waitForOutbox([inserted.id]);
  assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
  const pushed = await lib.deliveries(lone.token);
  assert.equal(pushed.length, 1, 'exactly one push for the expired intent');
  assert.deepEqual(pushed[0].body.data, { type: 'expired', intent_id: inserted.id, mood });
  assert.equal(pushed[0].headers['webhook-id'], String(row.id));

  // An expired intent is no partner for a later one.
  const control = lib.users('expiry-control', 2);
  const controlMood = await lib.newMood('expiry-c');
  await lib.insertIntents([
    { ...late, mood },
    ...control.map((u) => ({ ...u, mood: controlMood })),
  ]);
  await lib.waitForIntents(control, 'matched');
  const [lateIntent] = await lib.intentsOf([late]);
  assert.equal(lateIntent.status, 'waiting', 'a new intent must not pair with an expired one');
  await lib.cancelWaiting();
});
