'use strict';

// Provider faults under a steady load: a room service that refuses
// connections, hangs, stalls mid-body or returns something other than a
// room, and push storms of 429 with Retry-After in each of its forms. Each fault
// hits a bounded number of requests, so with max_attempts retries every
// match and push must still succeed; the invariants allow no failure.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');
const faults = require('./faults.js');

const REQUEST_TIMEOUT_MS = 1000;

test.before(() => faults.useFakeRooms({
  'matchmaker.retry_base': 100,
  // Above the Retry-After of the storms below: a longer one fails the
  // push. The worker counts an HTTP date from the current whole second,
  // so it may read a date 2 s ahead as 3 s.
  'matchmaker.retry_max': 5000,
  'matchmaker.request_timeout': REQUEST_TIMEOUT_MS,
}));
test.after(async () => {
  await lib.roomsControl({ reset: true });
  await lib.resetAllSettings();
});

// Responses of the room service that are not a room. "hang" and "stall"
// end in the worker's request timeout, the others in an invalid response.
const ROOM_FAULTS = ['hang', 'stall', 'html', 'truncated', 'huge', 'wrong-types', 'missing-user',
  'long-room', 'long-token'];
const FAULTY_REQUESTS = 15;

test('room service faults under load', { timeout: 180000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const { load, prefix } = await faults.startLoad(t, 'froom');
  const worker = await faults.oneWorker();
  await lib.sleep(500);

  // Refused connections for 1.5 s.
  await lib.setSettings({ 'matchmaker.room_url': await lib.closedUrl('/rooms') });
  await lib.sleep(1500);
  await lib.setSettings({ 'matchmaker.room_url': lib.env.roomsUrl });

  // Each bad response, for the next FAULTY_REQUESTS room requests of the load.
  for (const variant of ROOM_FAULTS) {
    const startedAt = Date.now();
    await lib.roomsControl({ garbage: FAULTY_REQUESTS, variant, user: prefix });
    await lib.waitFor(async () => {
      // An empty control request changes nothing and lists the rules.
      const { rules } = await lib.roomsControl({});
      return !rules.some((rule) => rule.prefix === prefix);
    }, 20000, `the ${variant} responses to be sent`);
    t.diagnostic(`${variant}: ${FAULTY_REQUESTS} responses sent in ${Date.now() - startedAt} ms`);
  }
  await lib.sleep(500);
  const inserted = await load.stop();

  const state = await faults.assertInvariants(prefix, logOffset, {
    expectedUsers: inserted.map((u) => u.user),
  });
  const requests = await lib.roomRequests(prefix);
  for (const variant of ROOM_FAULTS) {
    const served = requests.filter((r) => r.garbage === variant).length;
    assert.equal(served, FAULTY_REQUESTS, `the room service must have answered ${variant} ${FAULTY_REQUESTS} times`);
  }
  const retried = await lib.row(`
    SELECT count(*) AS n FROM matchmaker.matches
    WHERE id IN (${state.matches.map((m) => m.id).join(', ')}) AND attempts > 1`);
  t.diagnostic(`${inserted.length} intents, ${state.matches.length} matches, ${retried.n} retried`);
  assert.ok(retried.n >= ROOM_FAULTS.length, 'the faults must have made matches retry');
  assert.equal((await faults.oneWorker()).pid, worker.pid, 'the worker must survive bad answers');
});

// Retry-After forms: delay-seconds, an HTTP date, and a value that is
// neither, which the worker must ignore in favour of its own backoff.
// minGapMs is the least time between a 429 and the next attempt.
const STORMS = [
  { name: 'fstorm-s', retryAfter: '1', minGapMs: 950 },
  // The date is 2 s after the response, in whole seconds, so at least 1 s.
  { name: 'fstorm-d', retryAfter: 'date+2', minGapMs: 950 },
  { name: 'fstorm-g', retryAfter: 'soon, maybe', minGapMs: 0 },
];
const STORM_SIZE = 150;

for (const storm of STORMS) {
  test(`push 429 storm, Retry-After ${storm.retryAfter}`, { timeout: 120000 }, async (t) => {
    const logOffset = lib.serverLogSize();
    const { load, prefix } = await faults.startLoad(t, storm.name);
    await lib.sleep(300);
    await lib.pushControl({ fail: STORM_SIZE, status: 429, retryAfter: storm.retryAfter, to: `push-${prefix}` });
    await lib.sleep(2000);
    const inserted = await load.stop();

    const state = await faults.assertInvariants(prefix, logOffset, {
      expectedUsers: inserted.map((u) => u.user),
    });
    const throttled = state.deliveries.filter((d) => d.status === 429);
    assert.equal(throttled.length, STORM_SIZE, 'every 429 of the storm must have been sent');

    // After each 429, the next attempt of the same push waits as asked.
    const gaps = [];
    for (const push of throttled) {
      const next = state.deliveries.find((d) => d.seq > push.seq &&
        d.headers['webhook-id'] === push.headers['webhook-id']);
      assert.ok(next, `push ${push.headers['webhook-id']} was not retried after a 429`);
      gaps.push(next.at - push.at);
    }
    const least = Math.min(...gaps);
    t.diagnostic(`${inserted.length} intents; ${throttled.length} 429s; gap to the retry: least ${least} ms, most ${Math.max(...gaps)} ms`);
    assert.ok(least >= storm.minGapMs, `a retry came ${least} ms after a 429 with Retry-After: ${storm.retryAfter}`);
  });
}
