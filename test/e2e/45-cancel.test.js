'use strict';

// An intent cancelled with UPDATE or removed with DELETE is never matched.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');

test.before(lib.resetAllSettings);

test('cancelled and deleted intents unmatched', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const mood = await lib.newMood('cancel');
  const controlMood = await lib.newMood('cancel-c');
  const [cancelled, deleted, third, fourth] = lib.users('cancel', 4);
  const control = lib.users('cancel-control', 2);

  const [cancelledIntent] = await lib.insertIntents([cancelled], mood);
  await lib.sql(`UPDATE matchmaker.intents SET status = 'cancelled' WHERE id = ${cancelledIntent.id}`);
  const [deletedIntent] = await lib.insertIntents([deleted], mood);
  await lib.sql(`DELETE FROM matchmaker.intents WHERE id = ${deletedIntent.id}`);

  // third is alone in its mood once the pass that matches the control
  // pair (inserted in the same statement) has run.
  await lib.insertIntents([
    { ...third, mood },
    ...control.map((u) => ({ ...u, mood: controlMood })),
  ]);
  await lib.waitForIntents(control, 'matched');
  const [thirdWaiting] = await lib.intentsOf([third]);
  assert.equal(thirdWaiting.status, 'waiting', 'third must not pair with a cancelled or deleted intent');

  await lib.insertIntents([fourth], mood);
  const [thirdMatched, fourthMatched] = await lib.waitForIntents([third, fourth], 'matched');
  assert.equal(thirdMatched.match_id, fourthMatched.match_id);
  const match = await lib.row(`SELECT user_ids FROM matchmaker.matches WHERE id = ${thirdMatched.match_id}`);
  assert.deepEqual([...match.user_ids].sort(), [third.user, fourth.user].sort());
  await lib.waitForOutbox([thirdMatched.id, fourthMatched.id]);

  const [cancelledRow] = await lib.intentsOf([cancelled]);
  assert.equal(cancelledRow.status, 'cancelled');
  assert.equal(cancelledRow.match_id, null);
  assert.deepEqual(await lib.intentsOf([deleted]), []);
  assert.deepEqual(await lib.outboxOf([cancelledIntent.id, deletedIntent.id]), []);
  assert.deepEqual(await lib.deliveries(cancelled.token), []);
  assert.deepEqual(await lib.deliveries(deleted.token), []);
});
