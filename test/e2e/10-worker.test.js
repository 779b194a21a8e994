'use strict';

// The background worker runs and shows itself in pg_stat_activity,
// inserts wake it only in the database it serves, and it keeps one plan
// for each statement.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');
const faults = require('./faults.js');

test('worker listed in pg_stat_activity', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const list = await lib.waitFor(async () => {
    const found = await lib.workers();
    return found.length > 0 && found;
  }, lib.WORKER_TIMEOUT_MS, 'a backend whose backend_type contains "matchmaker"');

  assert.equal(list.length, 1, `expected one worker, got ${JSON.stringify(list)}`);
  assert.match(list[0].backend_type, /matchmaker/);
});

test('extension objects present', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const moods = await lib.rows('SELECT mood FROM matchmaker.moods');
  const names = moods.map((m) => m.mood);
  for (const mood of ['happy', 'sad', 'chill', 'bored', 'excited', 'lonely', 'curious', 'stressed']) {
    assert.ok(names.includes(mood), `seeded mood "${mood}" is missing`);
  }

  const stats = await lib.rows('SELECT * FROM matchmaker.stats');
  assert.ok(Array.isArray(stats));
});

// An insert wakes the worker only in the database the worker serves. In
// another database that has the extension, it must not start a pass.
test('inserts wake only the served database', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  const database = `other_${lib.runTag}`;
  await lib.sql(`CREATE DATABASE ${database}`);
  t.after(() => lib.sql(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`));
  await faults.sqlIn(database, 'CREATE EXTENSION matchmaker');
  // With a long poll interval, only a wake-up starts a transaction.
  t.after(() => lib.resetSettings(['matchmaker.poll_interval']));
  await lib.setSettings({ 'matchmaker.poll_interval': 60000 });
  await lib.sleep(1000);
  const [worker] = await lib.workers();
  const lastStart = async () =>
    (await lib.row(`SELECT query_start FROM pg_stat_activity WHERE pid = ${worker.pid}`)).query_start;
  const before = await lastStart();

  for (let i = 1; i <= 5; i++) {
    await faults.sqlIn(database, `
      INSERT INTO matchmaker.intents (user_id, mood, push_token)
      VALUES ('other-${lib.runTag}-u${i}', 'happy', 'push-other-${lib.runTag}-u${i}')`);
  }
  await lib.sleep(500);
  assert.equal(await lastStart(), before, 'an insert into another database woke the worker');

  // The same insert into the served database does wake it.
  const mood = await lib.newMood('wake');
  await lib.insertIntents(lib.users('wake', 1), mood);
  await lib.waitFor(async () => (await lastStart()) !== before, 5000,
    'the worker to start a transaction after an insert');
});

// The worker keeps one generic plan per statement (plan_cache_mode is
// force_generic_plan in its session). Planning the statements that take
// arrays at every pass once took a third of its CPU. test/e2e/run loads
// pg_stat_statements with track_planning on, which counts the plans.
test('worker statements keep their plans', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await lib.sql('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
  t.after(() => lib.sql('DROP EXTENSION IF EXISTS pg_stat_statements'));
  await lib.sql('SELECT pg_stat_statements_reset()');
  const mood = await lib.newMood('plans');
  const rounds = 12;
  for (let i = 1; i <= rounds; i++) {
    const pair = lib.users(`plans${i}`, 2);
    await lib.insertIntents(pair, mood);
    await lib.waitForIntents(pair, 'matched');
  }

  const statements = {
    'the matching query': "query LIKE '%FOR UPDATE OF i SKIP LOCKED%'",
    'the insert of matches': "query LIKE 'WITH pairs AS%'",
  };
  for (const [name, condition] of Object.entries(statements)) {
    const found = await lib.rows(`SELECT calls, plans FROM pg_stat_statements WHERE ${condition}`);
    assert.equal(found.length, 1, `expected ${name} once in pg_stat_statements, got ${JSON.stringify(found)}`);
    const [{ calls, plans }] = found;
    assert.ok(calls >= rounds, `${name} ran ${calls} times, expected ${rounds} or more`);
    // A plan is made again only after a table's statistics or definition
    // change, so a few at most.
    assert.ok(plans < calls / 2, `${name} was planned ${plans} times in ${calls} runs`);
  }
});
