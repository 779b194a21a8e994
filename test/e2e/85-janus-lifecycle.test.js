'use strict';

// Janus room lifecycle: the worker destroys a match's AudioBridge room
// when the app calls matchmaker.end_match(), when matchmaker.room_lifetime
// has passed since the match became ready, and after a crash of the
// worker, from the room id and secret kept in matches.plan.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');
const { matchById } = require('./room-providers.js');

// The lowest room_lifetime the server accepts, in seconds.
const MIN_LIFETIME = 10;
// How long a room may outlive its due time: the close pass runs every
// poll_interval (500 ms by default), and the machine may be loaded.
const CLOSE_TIMEOUT_MS = 15000;

// Settings that tests here change. The file resets them at the end too,
// in case a test failed before restoring them.
const CHANGED_SETTINGS = ['matchmaker.room_lifetime', 'matchmaker.room_url',
  'matchmaker.max_attempts', 'matchmaker.retry_base'];

test.before(lib.resetAllSettings);
test.after(() => lib.resetSettings(CHANGED_SETTINGS));

// Return whether Janus has the room, through a session of the test.
async function roomExists(room) {
  const client = await lib.JanusClient.connect();
  try {
    const answer = await client.request({ request: 'exists', room: lib.janusRoomId(room) });
    assert.equal(answer.audiobridge, 'success', `exists ${room}: ${JSON.stringify(answer)}`);
    return answer.exists;
  } finally {
    await client.close();
  }
}

// Pair two users in a private mood and return them with their ready match.
async function pairReady(name) {
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  await lib.insertIntents(pair, mood);
  const match = await lib.settledMatch(pair);
  assert.equal(match.status, 'ready', `match ${match.id}: last_error ${match.last_error}`);
  return { pair, match };
}

// Wait until the worker recorded the room of the match as destroyed, and
// return the match.
function waitForClosed(matchId, timeoutMs = CLOSE_TIMEOUT_MS) {
  return lib.waitFor(async () => {
    const match = await matchById(matchId);
    return match.room_closed_at !== null && match;
  }, timeoutMs, `room of match ${matchId} to be recorded as destroyed`);
}

function endMatch(matchId) {
  return lib.sql(`SELECT matchmaker.end_match(${Number(matchId)})`);
}

test('end_match destroys the room', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const { match } = await pairReady('end');
  assert.equal(match.room, String(match.plan.room), 'the match names the room of its plan');
  assert.equal(await roomExists(match.room), true, `room ${match.room} must exist while the call runs`);
  assert.equal(match.ended_at, null);

  assert.equal(await endMatch(match.id), 't', 'the first end_match returns true');
  assert.equal(await endMatch(match.id), 'f', 'a second end_match returns false');
  const closed = await waitForClosed(match.id);
  assert.notEqual(closed.ended_at, null);
  assert.equal(await roomExists(match.room), false, `room ${match.room} must be gone`);
  assert.equal(closed.status, 'ready', 'ending a call does not change the match status');
});

test('end_match of unknown match is false', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const [{ max }] = await lib.rows('SELECT coalesce(max(id), 0) AS max FROM matchmaker.matches');
  assert.equal(await endMatch(max + 1000000), 'f');
});

test('room lifetime destroys the room', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  t.after(() => lib.resetSettings(['matchmaker.room_lifetime']));
  await lib.setSettings({ 'matchmaker.room_lifetime': MIN_LIFETIME });
  const { match } = await pairReady('lifetime');
  assert.equal(await roomExists(match.room), true, `room ${match.room} must exist at first`);

  const closed = await waitForClosed(match.id, MIN_LIFETIME * 1000 + CLOSE_TIMEOUT_MS);
  const [{ lived }] = await lib.rows(`
    SELECT extract(epoch FROM room_closed_at - ready_at)::float8 AS lived
    FROM matchmaker.matches WHERE id = ${match.id}`);
  assert.ok(lived >= MIN_LIFETIME, `the room lived ${lived} s, less than room_lifetime`);
  assert.equal(closed.ended_at, null, 'nobody called end_match');
  assert.equal(await roomExists(match.room), false, `room ${match.room} must be gone`);
});

test('worker crash leaves no room', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const logOffset = lib.serverLogSize();

  // The first match is ready and ends after the restart. The second is
  // ready and ended right before the kill, so its room may still be open.
  // The worker is killed as soon as it has planned the room of the third
  // match, which is often before Janus has made it.
  const open = await pairReady('crash-open');
  const ended = await pairReady('crash-ended');
  const moodMaking = await lib.newMood('crash-making');
  const making = lib.users('crash-making', 2);
  await lib.insertIntents(making, moodMaking);
  const planned = await lib.waitFor(async () => {
    const [intent] = await lib.intentsOf(making);
    if (!intent || intent.match_id === null) {
      return false;
    }
    const match = await matchById(intent.match_id);
    return match.plan !== null && match;
  }, lib.WORKER_TIMEOUT_MS, 'the worker to plan the room of the second match', 10);
  assert.equal(await endMatch(ended.match.id), 't');
  await lib.killWorker();

  // After the restart the third match gets its room, and then ends.
  const restarted = await lib.settledMatch(making);
  assert.equal(restarted.id, planned.id);
  assert.equal(restarted.status, 'ready', `match ${restarted.id}: last_error ${restarted.last_error}`);
  assert.deepEqual(restarted.plan, planned.plan, 'the restarted worker keeps the planned room');
  assert.equal(await endMatch(restarted.id), 't');
  assert.equal(await endMatch(open.match.id), 't');

  for (const match of [open.match, ended.match, restarted]) {
    await waitForClosed(match.id);
    const room = match.plan.room;
    assert.equal(await roomExists(room), false, `room ${room} of match ${match.id} must be gone`);
  }
  assert.match(lib.serverLogSince(logOffset), /terminated by signal 9/, 'the worker must have been killed');
});

test('room of failed match is closed', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await lib.setSettings({
    'matchmaker.room_url': await lib.closedUrl('/janus'),
    'matchmaker.max_attempts': 1,
    'matchmaker.retry_base': 100,
  });
  const name = 'failed-close';
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  await lib.insertIntents(pair, mood);
  const failed = await lib.settledMatch(pair);
  assert.equal(failed.status, 'failed');
  assert.notEqual(failed.plan, null, 'the failed match keeps its planned room');

  // Janus never made the room, so its destroy returns "no such room",
  // which counts as destroyed once Janus is reachable again.
  await lib.resetSettings(['matchmaker.room_url', 'matchmaker.max_attempts', 'matchmaker.retry_base']);
  await waitForClosed(failed.id);
  assert.equal(await roomExists(failed.plan.room), false);
});
