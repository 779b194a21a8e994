'use strict';

// Bad and unusual inputs: expiry under a TimeZone with daylight saving,
// multi-byte text and values at and past each length limit of the schema
// (user_id 128 bytes, push_token 4096 bytes, mood 32 characters of
// [a-z0-9_-]), carried through the room service and the pushes.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');
const faults = require('./faults.js');

test.before(lib.resetAllSettings);
test.after(lib.resetAllSettings);

// Insert one intent with a fixed created_at in a session whose TimeZone is
// zone, and return expires_at - created_at in seconds.
async function ttlAt(zone, createdAt, user) {
  const seconds = await lib.sql(`
    SET TimeZone = ${lib.literal(zone)};
    WITH inserted AS (
      INSERT INTO matchmaker.intents (user_id, mood, push_token, created_at)
      VALUES (${lib.literal(user.user)}, 'happy', ${lib.literal(user.token)},
              ${lib.literal(createdAt)}::timestamptz)
      RETURNING created_at, expires_at)
    SELECT extract(epoch FROM expires_at - created_at)::float8 FROM inserted`);
  await lib.sql(`UPDATE matchmaker.intents SET status = 'cancelled'
                 WHERE user_id = ${lib.literal(user.user)} AND status = 'waiting'`);
  return Number(seconds);
}

test('expiry across daylight saving', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  // Europe/Berlin moves from +01 to +02 at 2027-03-28 02:00 and back at
  // 2027-10-31 03:00. A day-long intent_ttl reads back from the setting as
  // "1d", a calendar day in interval arithmetic, which would be 23 or 25
  // hours across these changes.
  t.after(() => lib.resetSettings(['matchmaker.intent_ttl']));
  const cases = [
    ['2027-03-27 12:00 Europe/Berlin', 86400],
    ['2027-10-30 12:00 Europe/Berlin', 86400],
    ['2027-03-28 01:59:30 Europe/Berlin', 60],
    ['2027-10-31 02:30 Europe/Berlin', 3600],
  ];
  const users = lib.users('fdst', cases.length * 2);
  let k = 0;
  for (const [createdAt, ttl] of cases) {
    await lib.setSettings({ 'matchmaker.intent_ttl': ttl });
    for (const zone of ['Europe/Berlin', 'UTC']) {
      const seconds = await ttlAt(zone, createdAt, users[k++ % users.length]);
      assert.equal(seconds, ttl, `intent_ttl ${ttl} s from ${createdAt} in TimeZone ${zone} gave ${seconds} s`);
    }
  }
});

test('worker expires under Europe/Berlin', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await lib.setSettings({ TimeZone: 'Europe/Berlin', 'matchmaker.intent_ttl': 2 });
  t.after(() => lib.resetSettings(['TimeZone', 'matchmaker.intent_ttl']));
  const logOffset = lib.serverLogSize();
  const mood = await lib.newMood('fberlin');
  const users = lib.users('fberlin', 3);
  await lib.insertIntents(users, mood);

  // Two pair up and the third expires two seconds after its insert.
  const state = await faults.assertInvariants(`fberlin-${lib.runTag}-`, logOffset, { settleTimeoutMs: 15000 });
  await lib.waitForIntents([users[2]], 'expired', 15000);
  const after = await faults.assertInvariants(`fberlin-${lib.runTag}-`, logOffset);
  assert.equal(state.matches.length, 1);
  const expired = await lib.row(`
    SELECT extract(epoch FROM expires_at - created_at)::float8 AS ttl,
           current_setting('TimeZone') AS zone
    FROM matchmaker.intents WHERE user_id = ${lib.literal(users[2].user)}`);
  assert.equal(expired.ttl, 2);
  assert.equal(expired.zone, 'Europe/Berlin');
  assert.equal(after.deliveries.filter((d) => d.body.data.type === 'expired').length, 1);
});

// Pad text with a character to the given number of UTF-8 bytes, and top
// it off with "a" where the character does not fit.
function padBytes(text, bytes, filler) {
  let result = text;
  while (Buffer.byteLength(result + filler) <= bytes) {
    result += filler;
  }
  while (Buffer.byteLength(result) < bytes) {
    result += 'a';
  }
  assert.equal(Buffer.byteLength(result), bytes, `cannot pad "${text}" to ${bytes} bytes with "${filler}"`);
  return result;
}

// Return psql's error for SQL that must fail, or fail the test.
async function sqlError(query) {
  try {
    await lib.sql(query);
  } catch (error) {
    return error.message;
  }
  assert.fail(`expected an error from: ${query.slice(0, 200)}`);
}

test('limits and multi-byte values rejected', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const prefix = `fbad-${lib.runTag}-`;
  const insert = (user, mood, token) => `INSERT INTO matchmaker.intents (user_id, mood, push_token)
    VALUES (${lib.literal(user)}, ${lib.literal(mood)}, ${lib.literal(token)})`;
  const cases = [
    // 129 bytes in ASCII and with a two-byte character at the end
    [insert(padBytes(prefix, 129, 'a'), 'happy', 'push-x'), /user_id is too long/],
    [insert(`${padBytes(prefix, 127, 'a')}é`, 'happy', 'push-x'), /user_id is too long/],
    [insert(padBytes(prefix, 132, '😀'), 'happy', 'push-x'), /user_id is too long/],
    [insert('', 'happy', 'push-x'), /user_id must not be empty/],
    [insert(`${prefix}tok`, 'happy', padBytes('push-', 4097, 'a')), /push_token is too long/],
    [insert(`${prefix}tok2`, 'happy', padBytes('push-', 4098, '🎧')), /push_token is too long/],
    [insert(`${prefix}tok3`, 'happy', ''), /push_token must not be empty/],
    [insert(`${prefix}mood`, 'h😀ppy', 'push-x'), /unknown mood/],
    ["INSERT INTO matchmaker.moods (mood) VALUES ('h😀ppy')", /moods_mood_format/],
    ["INSERT INTO matchmaker.moods (mood) VALUES ('Happy')", /moods_mood_format/],
    [`INSERT INTO matchmaker.moods (mood) VALUES ('${'m'.repeat(33)}')`, /moods_mood_format/],
  ];
  for (const [query, expected] of cases) {
    assert.match(await sqlError(query), expected, query.slice(0, 120));
  }
  const [{ n }] = await lib.rows(`SELECT count(*) AS n FROM matchmaker.intents WHERE starts_with(user_id, ${lib.literal(prefix)})`);
  assert.equal(n, 0, 'no rejected intent may be stored');
});

test('unusual values matched and pushed', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await lib.setSettings({ 'matchmaker.room_provider': 'http', 'matchmaker.room_url': lib.env.roomsUrl });
  t.after(() => lib.resetSettings(['matchmaker.room_provider', 'matchmaker.room_url']));
  const logOffset = lib.serverLogSize();
  const name = 'fodd';
  const prefix = `${name}-${lib.runTag}-`;
  // A mood at its 32-character limit.
  const mood = `m${lib.runTag}${'z'.repeat(25)}`;
  assert.equal(mood.length, 32);
  await lib.sql(`INSERT INTO matchmaker.moods (mood) VALUES (${lib.literal(mood)})`);

  // Two user ids of exactly 128 bytes, then ids that need quoting or
  // escaping in SQL and JSON, or that are more than one code point per
  // character. Every other token is exactly 4096 bytes of 4-byte characters.
  const ids = [
    padBytes(prefix, 128, 'a'),
    padBytes(prefix, 128, '😀'),
    ...['quote"back\\slash', 'new\nline\ttab', '"}, "injected": {"', 'עברית-RTL\u200f',
      '👩‍👩‍👧‍👦 family', 'e\u0301 combining', "it's", '%_like'].map((s, i) => `${prefix}${i}${s}`),
  ];
  const users = ids.map((user, i) => ({
    user,
    token: i % 2 === 0 ? padBytes(`push-${user}`, 4096, '🎧') : `push-${user}`,
  }));
  assert.equal(Buffer.byteLength(users[0].user), 128);
  assert.equal(Buffer.byteLength(users[1].user), 128);
  const load = new faults.IntentLoad(`${name}-load`, [await lib.newMood(`${name}-load`)], { ratePerSecond: 50 });
  t.after(() => load.stop());
  load.start();
  await lib.insertIntents(users, mood);

  await lib.sleep(1000);
  await load.stop();
  await faults.assertInvariants(`${name}-load-${lib.runTag}-`, logOffset);
  const state = await faults.assertInvariants(prefix, logOffset);
  assert.equal(state.matches.length, users.length / 2);

  // The room service got each user id exactly, and each user got a push
  // to their exact token with the token the room service made for them.
  const requests = await lib.roomRequests(prefix);
  for (const user of users) {
    const request = requests.find((r) => r.status === 200 && r.body.users.includes(user.user));
    assert.ok(request, `no room request names ${JSON.stringify(user.user)}`);
    const pushes = state.deliveries.filter((d) => d.body.to === user.token);
    assert.equal(pushes.length, 1, `one push to the token of ${JSON.stringify(user.user)}`);
    assert.equal(pushes[0].body.data.token, request.answer.tokens[user.user]);
    assert.equal(pushes[0].body.data.mood, mood);
  }
});
