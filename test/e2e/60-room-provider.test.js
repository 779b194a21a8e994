'use strict';

// Room providers: the "http" provider against the fake room service, and
// failures of either provider. A match whose room cannot be made fails,
// both users get a "failed" push, and the worker stays up.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');

test.before(lib.resetAllSettings);

const HTTP_SETTINGS = ['matchmaker.room_provider', 'matchmaker.room_url',
  'matchmaker.max_attempts', 'matchmaker.retry_base'];
const MAX_ATTEMPTS = 2;

function useHttpProvider(t) {
  t.after(() => lib.resetSettings(HTTP_SETTINGS));
  return lib.setSettings({
    'matchmaker.room_provider': 'http',
    'matchmaker.room_url': lib.env.roomsUrl,
    'matchmaker.max_attempts': MAX_ATTEMPTS,
    'matchmaker.retry_base': 100,
  });
}

// Check that the match failed and that each user got one "failed" push.
async function assertFailedWithPushes(pair, match) {
  assert.equal(match.status, 'failed');
  assert.ok(match.last_error, `failed match ${match.id} must record last_error`);

  const intents = await lib.waitForIntents(pair, 'failed');
  const outbox = await lib.waitForOutbox(intents.map((i) => i.id));
  for (const intent of intents) {
    const rows = outbox.filter((o) => o.intent_id === intent.id);
    assert.equal(rows.length, 1, `intent ${intent.id} must have one outbox row`);
    assert.equal(rows[0].status, 'sent');
    const pushed = await lib.deliveries(rows[0].push_token);
    assert.equal(pushed.length, 1);
    assert.deepEqual(pushed[0].body.data, { type: 'failed', intent_id: intent.id, match_id: match.id });
  }
}

test('http provider room reaches pushes', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await useHttpProvider(t);
  const name = 'httproom';
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  const inserted = await lib.insertIntents(pair, mood);

  const match = await lib.settledMatch(pair);
  assert.equal(match.status, 'ready', `match ${match.id}: last_error ${match.last_error}`);
  const requests = await lib.roomRequests(pair[0].user);
  assert.equal(requests.length, 1);
  const [request] = requests;
  assert.equal(request.body.match_id, match.id);
  assert.equal(request.body.mood, mood);
  assert.deepEqual([...request.body.users].sort(), pair.map((u) => u.user).sort());
  assert.match(request.headers['content-type'] ?? '', /^application\/json/);
  assert.equal(match.room, request.answer.room);

  await lib.waitForOutbox(inserted.map((i) => i.id));
  for (const user of pair) {
    const [push] = await lib.deliveries(user.token);
    assert.equal(push.body.data.type, 'match');
    assert.equal(push.body.data.room, request.answer.room);
    assert.equal(push.body.data.token, request.answer.tokens[user.user]);
  }
});

// The worker leases new matches as it writes them, but only as many as it
// has free request slots. The others wait, unleased, for a slot.
test('new matches leased up to free slots', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await useHttpProvider(t);
  t.after(() => lib.resetSettings(['matchmaker.max_inflight']));
  await lib.setSettings({ 'matchmaker.max_inflight': 2 });
  const name = 'slots';
  const prefix = `${name}-${lib.runTag}-`;
  t.after(() => lib.roomsControl({ delayMs: 0, user: prefix }));
  await lib.roomsControl({ delayMs: 1500, user: prefix });
  const mood = await lib.newMood(name);
  const users = lib.users(name, 6);
  const [worker] = await lib.workers();
  const inserted = await lib.insertIntents(users, mood);

  // One pass pairs all six. The first rooms take 1.5 s, so the leases
  // are still in place when the three matches show up.
  const matches = await lib.waitForRows(`
    SELECT m.id, m.claimed_by, m.attempts, m.xmin::text AS xmin,
           (SELECT array_agg(DISTINCT i.xmin::text) FROM matchmaker.intents i
            WHERE i.match_id = m.id) AS intent_xmins
    FROM matchmaker.matches m
    WHERE m.mood = ${lib.literal(mood)} ORDER BY m.id`, 3, 10000, 'three matches');
  const leased = matches.filter((m) => m.claimed_by !== null);
  const unleased = matches.filter((m) => m.claimed_by === null);
  assert.ok(leased.length >= 1, 'no new match was leased');
  assert.ok(leased.length <= 2, `${leased.length} of 3 new matches leased with 2 request slots`);
  for (const match of leased) {
    assert.equal(match.claimed_by, worker.pid);
    assert.equal(match.attempts, 1);
    // The transaction that matched the intents wrote the lease, not a claim.
    assert.deepEqual(match.intent_xmins, [match.xmin]);
  }
  assert.ok(unleased.length >= 1, 'a match beyond the free slots must wait unleased');
  for (const match of unleased) {
    assert.equal(match.attempts, 0);
  }

  // Every match gets its room with one request, and every user a push.
  for (let i = 0; i < 6; i += 2) {
    const match = await lib.settledMatch(users.slice(i, i + 2));
    assert.equal(match.status, 'ready', `match ${match.id}: last_error ${match.last_error}`);
    assert.equal(match.attempts, 1);
  }
  const requests = await lib.roomRequests(prefix);
  assert.equal(requests.length, 3);
  const outbox = await lib.waitForOutbox(inserted.map((i) => i.id));
  assert.equal(outbox.length, 6);
  for (const row of outbox) {
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
    assert.equal(row.attempts, 1);
  }
});

test('room service 503 retried', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await useHttpProvider(t);
  const name = 'room503';
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  await lib.roomsControl({ fail: 1, status: 503, user: `${name}-${lib.runTag}-` });
  await lib.insertIntents(pair, mood);

  const match = await lib.settledMatch(pair);
  assert.equal(match.status, 'ready', `match ${match.id}: last_error ${match.last_error}`);
  assert.equal(match.attempts, 2);
  const requests = await lib.roomRequests(`${name}-${lib.runTag}-`);
  assert.deepEqual(requests.map((r) => r.status), [503, 200]);
  assert.deepEqual(requests[1].body, requests[0].body, 'a retry must request the same room');
  assert.equal(match.room, requests[1].answer.room);
});

test('room service 500 fails match', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await useHttpProvider(t);
  const name = 'room500';
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  await lib.roomsControl({ fail: 100, status: 500, user: `${name}-${lib.runTag}-` });
  await lib.insertIntents(pair, mood);

  const match = await lib.settledMatch(pair);
  assert.equal(match.attempts, MAX_ATTEMPTS);
  assert.match(match.last_error ?? '', /500/);
  const requests = await lib.roomRequests(`${name}-${lib.runTag}-`);
  assert.equal(requests.length, MAX_ATTEMPTS, 'one room request per attempt');
  await assertFailedWithPushes(pair, match);
});

test('garbage room answers fail match', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await useHttpProvider(t);
  const [before] = await lib.workers();
  assert.ok(before, 'no matchmaker worker running');
  const logOffset = lib.serverLogSize();

  const variants = ['text', 'html', 'truncated', 'array', 'no-room', 'no-tokens',
    'wrong-types', 'missing-user', 'empty', 'bad-escape'];
  // One mood per variant, so that each pair is made of its own users.
  const pairs = [];
  const intents = [];
  for (const variant of variants) {
    const mood = await lib.newMood(`g-${variant}`);
    const pair = lib.users(`garbage-${variant}`, 2);
    await lib.roomsControl({ garbage: 100, variant, user: `garbage-${variant}-${lib.runTag}-` });
    pairs.push({ variant, pair });
    intents.push(...pair.map((u) => ({ ...u, mood })));
  }
  await lib.insertIntents(intents);

  for (const { variant, pair } of pairs) {
    const match = await lib.settledMatch(pair);
    assert.equal(match.status, 'failed', `variant ${variant}: expected a failed match`);
    assert.ok(match.last_error, `variant ${variant}: last_error must be set`);
    // psql drops bytes that are not UTF-8 from its output, so the server
    // checks the stored text: convert_from() raises an error on them
    await lib.sql(`SELECT convert_from(convert_to(last_error, 'UTF8'), 'UTF8')
      FROM matchmaker.matches WHERE id = ${match.id}`);
    const requests = await lib.roomRequests(`garbage-${variant}-${lib.runTag}-`);
    assert.ok(requests.length >= 1, `variant ${variant}: no room request`);
    assert.ok(requests.length <= MAX_ATTEMPTS,
      `variant ${variant}: ${requests.length} room requests, more than max_attempts`);
    await assertFailedWithPushes(pair, match);
  }

  const after = await lib.workers();
  assert.deepEqual(after.map((w) => w.pid), [before.pid], 'the worker must survive bad answers');
  const log = lib.serverLogSince(logOffset);
  assert.doesNotMatch(log, /matchmaker.*(exited with exit code|terminated by signal)/);
});

test('unreachable janus fails match', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  const names = ['matchmaker.room_url', 'matchmaker.max_attempts', 'matchmaker.retry_base'];
  t.after(() => lib.resetSettings(names));
  await lib.setSettings({
    'matchmaker.room_url': await lib.closedUrl('/janus'),
    'matchmaker.max_attempts': MAX_ATTEMPTS,
    'matchmaker.retry_base': 100,
  });
  const name = 'nojanus';
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  await lib.insertIntents(pair, mood);

  const match = await lib.settledMatch(pair);
  assert.equal(match.attempts, MAX_ATTEMPTS);
  await assertFailedWithPushes(pair, match);
});
