'use strict';

// Janus drops a session that gets no request for session_timeout seconds.
// The worker must notice the lost session and make rooms in a new one.
// This test points the worker at a second Janus whose session_timeout is
// 2 s, shorter than the worker's keepalive period.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const lib = require('./lib.js');

test.before(lib.resetAllSettings);

// Count the lines of the second Janus's log that match pattern.
function countLogLines(pattern) {
  const text = fs.readFileSync(lib.env.janusShortSessionLog, 'utf8');
  return text.split('\n').filter((line) => pattern.test(line)).length;
}

test('lost janus session replaced', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  const janusUrl = lib.env.janusShortSessionUrl;
  t.after(() => lib.resetSettings(['matchmaker.room_url']));
  await lib.setSettings({ 'matchmaker.room_url': janusUrl });
  const mood = await lib.newMood('session');
  const before = lib.users('session-a', 2);
  const after = lib.users('session-b', 2);
  const expiredBefore = countLogLines(/Timeout expired for session/);

  await lib.insertIntents(before, mood);
  const first = await lib.settledMatch(before);
  assert.equal(first.status, 'ready', `match ${first.id}: last_error ${first.last_error}`);
  const sessionsBefore = countLogLines(/Creating new session/);

  // Janus logs each session it drops for inactivity.
  await lib.waitFor(() => countLogLines(/Timeout expired for session/) > expiredBefore,
    20000, 'Janus to drop the worker\'s idle session');

  await lib.insertIntents(after, mood);
  const second = await lib.settledMatch(after);
  assert.equal(second.status, 'ready', `match ${second.id}: last_error ${second.last_error}`);
  assert.ok(countLogLines(/Creating new session/) > sessionsBefore,
    'the worker must create a new Janus session');

  const client = await lib.JanusClient.connect(janusUrl);
  t.after(() => client.close());
  for (const match of [first, second]) {
    const exists = await client.request({ request: 'exists', room: lib.janusRoomId(match.room) });
    assert.equal(exists.exists, true, `room ${match.room} of match ${match.id} not found`);
  }
});
