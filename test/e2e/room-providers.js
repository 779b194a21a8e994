'use strict';

// Helpers for the room-provider tests: pairing two users until their
// pushes are out, and the fake LiveKit RoomService that test/e2e/run
// starts (its address is in MM_LIVEKIT_BASE).

const assert = require('node:assert/strict');
const lib = require('./lib.js');

const livekitBase = process.env.MM_LIVEKIT_BASE;
if (!livekitBase) {
  throw new Error('MM_LIVEKIT_BASE is not set: run the tests through test/e2e/run');
}

// Pair two users in a private mood and wait until the match left pending
// and both pushes were sent. Returns the users, the mood, the match, the
// intents and the push data of each user, all in user order.
async function pairAndPush(name) {
  const mood = await lib.newMood(name);
  const pair = lib.users(name, 2);
  const inserted = await lib.insertIntents(pair, mood);
  const match = await lib.settledMatch(pair);
  const outbox = await lib.waitForOutbox(inserted.map((i) => i.id));
  for (const row of outbox) {
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
  }

  const intents = await lib.intentsOf(pair);
  const pushes = [];
  for (const user of pair) {
    const delivered = await lib.deliveries(user.token);
    assert.equal(delivered.length, 1, `${user.user} must get one push, got ${delivered.length}`);
    pushes.push(delivered[0].body.data);
  }
  return { pair, mood, match, intents, pushes };
}

async function matchById(matchId) {
  return lib.row(`SELECT * FROM matchmaker.matches WHERE id = ${Number(matchId)}`);
}

async function livekitRequest(path, body) {
  const options = { signal: AbortSignal.timeout(10000) };
  if (body !== undefined) {
    options.method = 'POST';
    options.headers = { 'Content-Type': 'application/json' };
    options.body = JSON.stringify(body);
  }
  const response = await fetch(`${livekitBase}${path}`, options);
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${options.method ?? 'GET'} ${livekitBase}${path} returned ${response.status}: ${text}`);
  }
  return JSON.parse(text);
}

// Change the LiveKit fake; see test/fake/livekit.js.
function livekitControl(body) {
  return livekitRequest('/control', body);
}

// Return the CreateRoom requests for one room, or all of them.
function livekitRequests(room) {
  const query = room === undefined ? '' : `?room=${encodeURIComponent(room)}`;
  return livekitRequest(`/requests${query}`);
}

module.exports = {
  livekitBase,
  livekitControl,
  livekitRequests,
  matchById,
  pairAndPush,
};
