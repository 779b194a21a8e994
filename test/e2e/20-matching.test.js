'use strict';

// Pairing: two waiting intents of one mood become one match with a Janus
// room, and each user gets exactly one "match" push.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');

test.before(lib.resetAllSettings);

test('same mood pairs into one match', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  // A seeded mood, so no intent of an earlier test may still wait in it.
  await lib.cancelWaiting();
  const mood = 'happy';
  const pair = lib.users('pair', 2);
  const inserted = await lib.insertIntents(pair, mood);
  const intentIds = inserted.map((i) => i.id);

  const intents = await lib.waitForIntents(pair, 'matched');
  const matchId = intents[0].match_id;
  assert.ok(Number.isInteger(matchId), 'a matched intent must have a match_id');
  assert.equal(intents[1].match_id, matchId, 'both intents must be in the same match');

  const match = await lib.waitFor(async () => {
    const m = await lib.row(`SELECT * FROM matchmaker.matches WHERE id = ${matchId}`);
    return m && m.status !== 'pending' && m;
  }, lib.WORKER_TIMEOUT_MS, `match ${matchId} to leave pending`);
  assert.equal(match.status, 'ready', `match ${matchId}: last_error ${match.last_error}`);
  assert.equal(match.mood, mood);
  assert.ok(match.room, 'a ready match must have a room');
  assert.deepEqual([...match.user_ids].sort(), pair.map((u) => u.user).sort());
  assert.deepEqual([...match.intent_ids].sort(), [...intentIds].sort());

  // The room exists in Janus and is private, so "list" does not show it.
  const client = await lib.JanusClient.connect();
  t.after(() => client.close());
  const room = lib.janusRoomId(match.room);
  const exists = await client.request({ request: 'exists', room });
  assert.equal(exists.exists, true, `room ${room} not found in Janus`);
  const listed = await client.request({ request: 'list' });
  assert.ok(!listed.list.some((r) => r.room === room), `private room ${room} is listed`);

  const outbox = await lib.waitForOutbox(intentIds);
  assert.equal(outbox.length, 2, 'one outbox row per user');
  for (const row of outbox) {
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
    assert.equal(row.attempts, 1);
    assert.equal(row.match_id, matchId);
  }

  const pushed = await lib.deliveries(lib.pushPrefix('pair'));
  const tokens = new Set();
  for (const [index, user] of pair.entries()) {
    const mine = pushed.filter((d) => d.body.to === user.token);
    assert.equal(mine.length, 1, `${user.user} must get exactly one push, got ${mine.length}`);
    const [push] = mine;
    const row = outbox.find((o) => o.intent_id === intentIds[index]);

    assert.match(push.headers['content-type'], /^application\/json/);
    assert.equal(push.headers['webhook-id'], String(row.id));
    assert.equal(push.body.data.type, 'match');
    assert.equal(push.body.data.intent_id, intentIds[index]);
    assert.equal(push.body.data.match_id, matchId);
    assert.equal(push.body.data.mood, mood);
    assert.equal(String(push.body.data.room), match.room);
    assert.equal(typeof push.body.data.token, 'string');
    assert.ok(push.body.data.token.length > 0, 'the room token must not be empty');
    tokens.add(push.body.data.token);
  }
  assert.equal(tokens.size, 2, 'each user must get a distinct room token');
});

test('different moods do not pair', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const moodA = await lib.newMood('apart-a');
  const moodB = await lib.newMood('apart-b');
  const moodControl = await lib.newMood('apart-c');
  const [a, b] = lib.users('apart', 2);
  const control = lib.users('apart-control', 2);

  // One statement, so the pass that matches the control pair also reads
  // a and b: one pass covers every mood, up to matchmaker.batch_size
  // waiting intents.
  await lib.insertIntents([
    { ...a, mood: moodA },
    { ...b, mood: moodB },
    ...control.map((u) => ({ ...u, mood: moodControl })),
  ]);
  await lib.waitForIntents(control, 'matched');

  const intents = await lib.intentsOf([a, b]);
  assert.equal(intents.length, 2);
  for (const intent of intents) {
    assert.equal(intent.status, 'waiting', `${intent.user_id} must still wait`);
    assert.equal(intent.match_id, null);
  }
  await lib.cancelWaiting();
});

test('oldest intents pair first', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const mood = await lib.newMood('oldest');
  const [first, second, third] = lib.users('oldest', 3);

  await lib.insertIntents([first], mood);
  await lib.insertIntents([second, third], mood);
  const [matched1, matched2] = await lib.waitForIntents([first, second], 'matched');
  assert.equal(matched1.match_id, matched2.match_id, 'the two oldest intents must pair');

  const [left] = await lib.intentsOf([third]);
  assert.equal(left.status, 'waiting', 'the newest intent must be left waiting');
  await lib.cancelWaiting();
});
