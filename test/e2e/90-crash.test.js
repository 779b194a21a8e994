'use strict';

// The worker is killed with SIGKILL while intents arrive. The postmaster
// then restarts every backend (a crash of a process attached to shared
// memory), and the new worker must finish the job: every intent matched
// once, every matched user one delivered "match" push, nothing left
// pending.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');

test.before(lib.resetAllSettings);

const INTENT_COUNT = 400;
const MOOD_COUNT = 4;
const BATCH_SIZE = 20;
// Kill the worker before these batches.
const KILL_BEFORE_BATCHES = new Set([4, 11]);

// Insert the intents of a batch that are not in the table yet. A batch
// whose connection broke during a crash restart may or may not have
// committed, so the rows in the table decide what is left to insert.
async function insertMissing(batch) {
  const present = new Set((await lib.intentsOf(batch)).map((i) => i.user_id));
  const missing = batch.filter((u) => !present.has(u.user));
  if (missing.length > 0) {
    await lib.insertIntents(missing);
  }
}

// Insert a batch, retrying through a crash restart of the server.
async function insertBatch(batch) {
  await lib.waitFor(async () => {
    await insertMissing(batch);
    return true;
  }, 60000, `batch starting with ${batch[0].user} to be inserted`, 200);
}

test('worker killed under load recovers', { timeout: 180000 }, async () => {
  const moods = [];
  for (let m = 0; m < MOOD_COUNT; m++) {
    moods.push(await lib.newMood(`crash${m}`));
  }
  const all = lib.users('crash', INTENT_COUNT).map((u, i) => ({ ...u, mood: moods[i % MOOD_COUNT] }));
  const logOffset = lib.serverLogSize();

  // Insert in batches, two at a time, killing the worker twice.
  const kills = [];
  for (let b = 0; b * BATCH_SIZE < all.length; b += 2) {
    if (KILL_BEFORE_BATCHES.has(b) || KILL_BEFORE_BATCHES.has(b + 1)) {
      kills.push(lib.killWorker(60000));
    }
    const first = all.slice(b * BATCH_SIZE, (b + 1) * BATCH_SIZE);
    const second = all.slice((b + 1) * BATCH_SIZE, (b + 2) * BATCH_SIZE);
    await Promise.all([insertBatch(first), second.length > 0 ? insertBatch(second) : null]);
  }
  await Promise.all(kills);

  // Wait until no intent of ours waits with a partner, no match is
  // pending and no push is pending.
  await lib.waitFor(async () => {
    const state = await lib.row(`
      SELECT
        (SELECT count(*) FROM matchmaker.intents i
          WHERE i.user_id LIKE ${lib.literal(`crash-${lib.runTag}-%`)}) AS intents,
        (SELECT coalesce(max(w.n), 0) FROM (
          SELECT count(*) AS n FROM matchmaker.intents i
          WHERE i.user_id LIKE ${lib.literal(`crash-${lib.runTag}-%`)} AND i.status = 'waiting'
          GROUP BY i.mood) w) AS most_waiting,
        (SELECT count(*) FROM matchmaker.matches m
          WHERE m.mood = ANY (${lib.literal(`{${moods.join(',')}}`)}) AND m.status = 'pending') AS matches_pending,
        (SELECT count(*) FROM matchmaker.outbox o
          JOIN matchmaker.intents i ON i.id = o.intent_id
          WHERE i.user_id LIKE ${lib.literal(`crash-${lib.runTag}-%`)} AND o.status = 'pending') AS pushes_pending`);
    return state.intents === INTENT_COUNT && state.most_waiting <= 1 &&
      state.matches_pending === 0 && state.pushes_pending === 0 && state;
  }, 90000, 'every intent to be matched and every push sent', 250);

  const intents = await lib.intentsOf(all);
  assert.equal(intents.length, INTENT_COUNT, 'each user must have exactly one intent');

  // Per mood, everything is matched except at most one odd intent.
  for (const mood of moods) {
    const mine = intents.filter((i) => i.mood === mood);
    const unmatched = mine.filter((i) => i.status !== 'matched');
    assert.ok(unmatched.length <= 1, `mood ${mood}: ${unmatched.length} intents not matched`);
    assert.equal(unmatched.length, mine.length % 2, `mood ${mood}: odd intents left over`);
    for (const intent of unmatched) {
      assert.ok(['waiting', 'expired'].includes(intent.status), `intent ${intent.id} is ${intent.status}`);
    }
  }

  // No intent in two matches, and every match agrees with its intents.
  const matched = intents.filter((i) => i.status === 'matched');
  const ids = intents.map((i) => i.id);
  const claims = await lib.rows(`
    SELECT intent_id, count(*) AS n, min(m.id) AS match_id, min(m.status) AS status
    FROM matchmaker.matches m, unnest(m.intent_ids) AS intent_id
    WHERE intent_id IN (${ids.join(', ')})
    GROUP BY intent_id`);
  const claimOf = new Map(claims.map((c) => [c.intent_id, c]));
  for (const intent of matched) {
    const claim = claimOf.get(intent.id);
    assert.ok(claim, `intent ${intent.id} is matched but in no match`);
    assert.equal(claim.n, 1, `intent ${intent.id} is in ${claim.n} matches`);
    assert.equal(claim.match_id, intent.match_id);
    assert.equal(claim.status, 'ready', `match ${claim.match_id} is ${claim.status}`);
  }
  assert.equal(claims.length, matched.length, 'a match names an intent that is not matched');

  // One outbox row per matched intent, sent, and one delivered "match"
  // push per matched user once deliveries are deduplicated by webhook-id.
  const outbox = await lib.outboxOf(matched.map((i) => i.id));
  const outboxOf = new Map();
  for (const row of outbox) {
    assert.ok(!outboxOf.has(row.intent_id), `intent ${row.intent_id} has two outbox rows`);
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
    outboxOf.set(row.intent_id, row);
  }
  const pushed = await lib.deliveries(lib.pushPrefix('crash'));
  const delivered = new Map();
  for (const push of pushed) {
    if (push.status >= 200 && push.status < 300 && push.body.data?.type === 'match') {
      const ids = delivered.get(push.body.to) ?? new Set();
      ids.add(push.headers['webhook-id']);
      delivered.set(push.body.to, ids);
    }
  }
  const userOf = new Map(all.map((u) => [u.user, u]));
  for (const intent of matched) {
    const row = outboxOf.get(intent.id);
    assert.ok(row, `matched intent ${intent.id} has no outbox row`);
    const ids = delivered.get(userOf.get(intent.user_id).token) ?? new Set();
    assert.deepEqual([...ids], [String(row.id)], `user ${intent.user_id} must get one match push`);
  }

  // Every room of a ready match exists in Janus.
  const rooms = await lib.rows(`
    SELECT DISTINCT room FROM matchmaker.matches
    WHERE id IN (${[...new Set(matched.map((i) => i.match_id))].join(', ')})`);
  const client = await lib.JanusClient.connect();
  try {
    for (const { room } of rooms) {
      const exists = await client.request({ request: 'exists', room: lib.janusRoomId(room) });
      assert.equal(exists.exists, true, `room ${room} not found in Janus`);
    }
  } finally {
    await client.close();
  }

  const log = lib.serverLogSince(logOffset);
  assert.match(log, /terminated by signal 9/, 'the server log must show the killed worker');
  await lib.cancelWaiting();
  const matchIds = [...new Set(matched.map((i) => i.match_id))];
  assert.equal(await lib.destroyRooms(matchIds), matchIds.length, 'every room must be destroyed with its secret');
});
