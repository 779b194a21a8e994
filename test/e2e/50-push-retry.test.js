'use strict';

// Push delivery. The worker retries on 5xx, 429, timeouts and refused
// connections, with the same webhook-id on every attempt and never sooner
// than Retry-After. A 4xx other than 408 and 429 fails at once, and
// max_attempts bounds the retries.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');

test.before(lib.resetAllSettings);

// Pair two users in a private mood, after running prepare(users) (which
// installs the receiver's rules), and wait until both outbox rows leave
// pending. Returns the users, their intent ids and their outbox rows.
async function pairAndDeliver(name, prepare, timeoutMs = 30000) {
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  await prepare(pair);
  const inserted = await lib.insertIntents(pair, mood);
  const intentIds = inserted.map((i) => i.id);
  await lib.waitForIntents(pair, 'matched');
  const outbox = await lib.waitForOutbox(intentIds, timeoutMs);
  const rowOf = (index) => outbox.find((o) => o.intent_id === intentIds[index]);
  return { pair, intentIds, rowOf };
}

// Check that all deliveries are attempts of one outbox row.
function assertSameMessage(pushed, row) {
  for (const push of pushed) {
    assert.equal(push.headers['webhook-id'], String(row.id), 'webhook-id must be the outbox id on every attempt');
    assert.deepEqual(push.body, pushed[0].body, 'every attempt must carry the same body');
  }
}

test('push retried after 503 then delivered', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const { pair, rowOf } = await pairAndDeliver('retry503', ([first]) =>
    lib.pushControl({ fail: 2, status: 503, to: first.token }));

  const row = rowOf(0);
  assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
  assert.equal(row.attempts, 3);
  const pushed = await lib.deliveries(pair[0].token);
  assert.deepEqual(pushed.map((d) => d.status), [503, 503, 200]);
  assertSameMessage(pushed, row);

  const other = rowOf(1);
  assert.equal(other.status, 'sent');
  assert.equal(other.attempts, 1);
});

test('push rejected with 400 fails at once', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const { pair, rowOf } = await pairAndDeliver('reject400', ([first]) =>
    lib.pushControl({ fail: 5, status: 400, to: first.token }));

  const row = rowOf(0);
  assert.equal(row.status, 'failed');
  assert.equal(row.attempts, 1, 'a 400 must not be retried');
  assert.ok(row.last_error, 'a failed push must record last_error');
  assert.match(row.last_error, /400/);

  // Give a wrongly scheduled retry time to show up: four times retry_base.
  await lib.sleep(2000);
  const pushed = await lib.deliveries(pair[0].token);
  assert.equal(pushed.length, 1, 'a 400 must not be retried');
  const [after] = await lib.outboxOf([row.intent_id]);
  assert.equal(after.status, 'failed');

  assert.equal(rowOf(1).status, 'sent');
});

test('push fails after max_attempts', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await lib.setSettings({ 'matchmaker.max_attempts': 3, 'matchmaker.retry_base': 100 });
  t.after(() => lib.resetSettings(['matchmaker.max_attempts', 'matchmaker.retry_base']));

  const { pair, rowOf } = await pairAndDeliver('exhaust', ([first]) =>
    lib.pushControl({ fail: 100, status: 503, to: first.token }));

  const row = rowOf(0);
  assert.equal(row.status, 'failed');
  assert.equal(row.attempts, 3);
  assert.match(row.last_error ?? '', /503/);
  const pushed = await lib.deliveries(pair[0].token);
  assert.equal(pushed.length, 3);
  assertSameMessage(pushed, row);
});

test('push waits for Retry-After seconds', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const { pair, rowOf } = await pairAndDeliver('after-secs', ([first]) =>
    lib.pushControl({ fail: 1, status: 429, retryAfter: '2', to: first.token }));

  const row = rowOf(0);
  assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
  assert.equal(row.attempts, 2);
  const pushed = await lib.deliveries(pair[0].token);
  assert.deepEqual(pushed.map((d) => d.status), [429, 200]);
  assertSameMessage(pushed, row);
  const gap = pushed[1].at - pushed[0].at;
  assert.ok(gap >= 1950, `retry came ${gap} ms after a 429 with Retry-After: 2`);
});

test('push waits for Retry-After date', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  // The receiver sends the date 3 s after its response; HTTP dates have
  // whole seconds, so the date is at least 2 s away when it is sent.
  const { pair, rowOf } = await pairAndDeliver('after-date', ([first]) =>
    lib.pushControl({ fail: 1, status: 503, retryAfter: 'date+3', to: first.token }));

  const row = rowOf(0);
  assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
  const pushed = await lib.deliveries(pair[0].token);
  assert.deepEqual(pushed.map((d) => d.status), [503, 200]);
  const gap = pushed[1].at - pushed[0].at;
  assert.ok(gap >= 1950, `retry came ${gap} ms after a 503 with Retry-After: ${pushed[0].retryAfter}`);
});

test('push retried after timeout', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await lib.setSettings({ 'matchmaker.request_timeout': 300 });
  t.after(() => lib.resetSettings(['matchmaker.request_timeout']));

  const name = 'timeout';
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  await lib.pushControl({ delayMs: 1500, to: pair[0].token });
  const inserted = await lib.insertIntents(pair, mood);

  // Once the first, slow attempt has arrived, let the next one through.
  await lib.waitFor(async () => (await lib.deliveries(pair[0].token)).length >= 1);
  await lib.pushControl({ delayMs: 0, to: pair[0].token });

  const [row] = await lib.waitForOutbox([inserted[0].id], 30000);
  assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
  assert.ok(row.attempts >= 2, `a timed-out push must be retried, attempts = ${row.attempts}`);
  const pushed = await lib.deliveries(pair[0].token);
  assert.ok(pushed.length >= 2);
  assertSameMessage(pushed, row);
});

test('push retried after refused connection', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  const names = ['matchmaker.push_url', 'matchmaker.retry_base'];
  await lib.setSettings({ 'matchmaker.push_url': await lib.closedUrl('/push'), 'matchmaker.retry_base': 300 });
  t.after(() => lib.resetSettings(names));

  const name = 'refused';
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  const inserted = await lib.insertIntents(pair, mood);
  const intentIds = inserted.map((i) => i.id);

  // Wait until an attempt has failed for the refused connection, then
  // point the worker back at the receiver.
  const failed = await lib.waitFor(async () => {
    const outbox = await lib.outboxOf(intentIds);
    return outbox.find((o) => o.attempts >= 1 && o.last_error);
  }, lib.WORKER_TIMEOUT_MS, 'a push attempt to fail on a refused connection');
  assert.equal(failed.status, 'pending', 'a refused connection must be retried');
  await lib.resetSettings(names);

  const outbox = await lib.waitForOutbox(intentIds, 30000);
  for (const row of outbox) {
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
  }
  const retried = outbox.find((o) => o.id === failed.id);
  assert.ok(retried.attempts >= 2);
});

// The transaction that records a ready room inserts its two pushes already
// leased to the worker, which sends them without a claim in between.
test('pushes leased with their room', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  const name = 'pushlease';
  const prefix = lib.pushPrefix(name);
  t.after(() => lib.pushControl({ delayMs: 0, to: prefix }));
  await lib.pushControl({ delayMs: 1500, to: prefix });
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  const [worker] = await lib.workers();
  const inserted = await lib.insertIntents(pair, mood);
  const intentIds = inserted.map((i) => i.id);

  // The receiver holds each push for 1.5 s, so the leases are still in
  // place when the rows show up.
  const pending = await lib.waitForRows(`
    SELECT o.id, o.status, o.claimed_by, o.attempts, o.xmin::text AS xmin,
           m.status AS match_status, m.xmin::text AS match_xmin
    FROM matchmaker.outbox o JOIN matchmaker.matches m ON m.id = o.match_id
    WHERE o.intent_id IN (${intentIds.join(', ')})`, 2, 10000, 'two pushes');
  for (const row of pending) {
    assert.equal(row.status, 'pending');
    assert.equal(row.claimed_by, worker.pid);
    assert.equal(row.attempts, 1);
    assert.equal(row.match_status, 'ready');
    assert.equal(row.xmin, row.match_xmin, `outbox ${row.id} was leased after its room was recorded`);
  }

  const outbox = await lib.waitForOutbox(intentIds, 30000);
  for (const row of outbox) {
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
    assert.equal(row.attempts, 1);
  }
});
