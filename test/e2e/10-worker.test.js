'use strict';

// The background worker runs and shows itself in pg_stat_activity.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');

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
