'use strict';

// The room token in a "match" push lets its user join the Janus room, and
// a token that was not issued does not.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');

test.before(lib.resetAllSettings);

// Pair two users in a private mood and return the room and each user's
// pushed token.
async function pairAndCollectTokens(name) {
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  const inserted = await lib.insertIntents(pair, mood);
  await lib.waitForIntents(pair, 'matched');
  await lib.waitForOutbox(inserted.map((i) => i.id));

  const pushed = await lib.deliveries(lib.pushPrefix(name));
  const tokens = pair.map((user) => {
    const push = pushed.find((d) => d.body.to === user.token && d.body.data?.type === 'match');
    assert.ok(push, `no match push for ${user.user}`);
    return push.body.data.token;
  });
  const room = pushed.find((d) => d.body.to === pair[0].token).body.data.room;
  return { room: lib.janusRoomId(room), tokens };
}

test('pushed token joins the room', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  const { room, tokens } = await pairAndCollectTokens('join');

  for (const token of tokens) {
    const client = await lib.JanusClient.connect();
    t.after(() => client.close());
    const joined = await client.requestAsync({ request: 'join', room, token, display: 'e2e' });
    assert.equal(joined.audiobridge, 'joined', `join with pushed token: ${JSON.stringify(joined)}`);
    assert.equal(joined.room, room);
  }
});

test('made-up token rejected with 489', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  const { room } = await pairAndCollectTokens('join-bad');
  const client = await lib.JanusClient.connect();
  t.after(() => client.close());

  const rejected = await client.requestAsync({ request: 'join', room, token: `made-up-${lib.runTag}` });
  assert.equal(rejected.error_code, 489, `join with a made-up token: ${JSON.stringify(rejected)}`);

  const noToken = await client.requestAsync({ request: 'join', room });
  assert.equal(noToken.error_code, 489, `join without a token: ${JSON.stringify(noToken)}`);
});
