'use strict';

// Checks of the test harness itself: the cluster, Janus and the fakes
// respond as the other tests expect. These do not need the worker, so they
// also pass with MM_PRELOAD= (an empty preload list).

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const lib = require('./lib.js');

test('cluster runs SQL', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  assert.equal(await lib.sql('SELECT 1 + 1'), '2');
  const result = await lib.row("SELECT current_setting('listen_addresses') AS listen");
  assert.equal(result.listen, '', 'the cluster must not listen on TCP');
});

test('janus serves info on loopback', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const url = new URL(lib.env.janusUrl);
  assert.equal(url.hostname, '127.0.0.1');
  const response = await fetch(`${lib.env.janusUrl}/info`);
  const info = await response.json();
  assert.equal(info.janus, 'server_info');
  assert.deepEqual(Object.keys(info.plugins), ['janus.plugin.audiobridge']);
  assert.deepEqual(Object.keys(info.transports), ['janus.transport.http']);
});

test('janus room accepts only allowed tokens', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  const client = await lib.JanusClient.connect();
  t.after(() => client.close());
  const room = crypto.randomInt(1, 2 ** 47);
  const token = crypto.randomBytes(12).toString('hex');

  const created = await client.request({
    request: 'create',
    room,
    is_private: true,
    permanent: false,
    allowed: [token],
  });
  assert.equal(created.audiobridge, 'created', JSON.stringify(created));

  const exists = await client.request({ request: 'exists', room });
  assert.equal(exists.exists, true);

  const refused = await client.requestAsync({ request: 'join', room, token: 'made-up' });
  assert.equal(refused.error_code, 489, JSON.stringify(refused));

  const joined = await client.requestAsync({ request: 'join', room, token });
  assert.equal(joined.audiobridge, 'joined', JSON.stringify(joined));
  assert.equal(joined.room, room);

  const destroyed = await client.request({ request: 'destroy', room });
  assert.equal(destroyed.audiobridge, 'destroyed', JSON.stringify(destroyed));
});

test('push receiver records and fails on request', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const to = `harness-${lib.runTag}-${crypto.randomBytes(3).toString('hex')}`;
  await lib.pushControl({ fail: 1, status: 429, retryAfter: '2', to });

  const post = () => fetch(lib.env.pushUrl, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'webhook-id': '17' },
    body: JSON.stringify({ to, data: { type: 'test' } }),
  });
  const first = await post();
  assert.equal(first.status, 429);
  assert.equal(first.headers.get('retry-after'), '2');
  const second = await post();
  assert.equal(second.status, 200);

  const recorded = await lib.deliveries(to);
  assert.equal(recorded.length, 2);
  assert.equal(recorded[0].headers['webhook-id'], '17');
  assert.deepEqual(recorded[0].body, { to, data: { type: 'test' } });
  assert.deepEqual(recorded.map((d) => d.status), [429, 200]);
  assert.ok(recorded[1].at >= recorded[0].at);
});

test('room service returns rooms and garbage', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  const user = `harness-${lib.runTag}-${crypto.randomBytes(3).toString('hex')}`;
  const post = () => fetch(lib.env.roomsUrl, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ match_id: 1, mood: 'happy', users: [user, `${user}-b`] }),
  });

  const good = await (await post()).json();
  assert.equal(typeof good.room, 'string');
  assert.deepEqual(Object.keys(good.tokens).sort(), [user, `${user}-b`].sort());

  await lib.roomsControl({ garbage: 1, variant: 'text', user });
  const garbage = await post();
  assert.equal(garbage.status, 200);
  assert.equal(await garbage.text(), 'this is not JSON');

  await lib.roomsControl({ fail: 1, status: 500, user });
  assert.equal((await post()).status, 500);

  const recorded = await lib.roomRequests(user);
  assert.equal(recorded.length, 3);
});
