'use strict';

// The invariant checker of the fault tests must catch each kind of broken
// state, or a fault test that passes proves nothing. Each case breaks one
// invariant of a valid snapshot and expects its message.

const test = require('node:test');
const assert = require('node:assert/strict');
const { findViolations } = require('./faults.js');

// A settled snapshot: users a and b matched and pushed, c expired and
// pushed, d waiting. Worker 100 runs.
function validState() {
  const delivery = (id, to, intentId, type) => ({
    status: 200,
    headers: { 'webhook-id': String(id) },
    body: { to, data: { type, intent_id: intentId } },
  });
  return {
    intents: [
      { id: 1, user_id: 'a', mood: 'happy', push_token: 'push-a', status: 'matched', match_id: 7 },
      { id: 2, user_id: 'b', mood: 'happy', push_token: 'push-b', status: 'matched', match_id: 7 },
      { id: 3, user_id: 'c', mood: 'sad', push_token: 'push-c', status: 'expired', match_id: null },
      { id: 4, user_id: 'd', mood: 'sad', push_token: 'push-d', status: 'waiting', match_id: null },
    ],
    matches: [
      { id: 7, mood: 'happy', status: 'ready', intent_ids: [1, 2], user_ids: ['a', 'b'], room: 'r7', claimed_by: null },
    ],
    outbox: [
      { id: 11, intent_id: 1, match_id: 7, push_token: 'push-a', status: 'sent', claimed_by: null, type: 'match' },
      { id: 12, intent_id: 2, match_id: 7, push_token: 'push-b', status: 'sent', claimed_by: null, type: 'match' },
      { id: 13, intent_id: 3, match_id: null, push_token: 'push-c', status: 'sent', claimed_by: null, type: 'expired' },
    ],
    deadLeases: [],
    deliveries: [
      delivery(11, 'push-a', 1, 'match'),
      delivery(11, 'push-a', 1, 'match'),
      delivery(12, 'push-b', 2, 'match'),
      delivery(13, 'push-c', 3, 'expired'),
    ],
    workers: [{ pid: 100 }],
    log: 'LOG:  matchmaker worker started\n',
  };
}

test('checker accepts valid state', () => {
  assert.deepEqual(findViolations(validState(), { expectedUsers: ['a', 'b', 'c', 'd'] }), []);
});

const cases = [
  ['lost intent', (s) => s.intents.pop(), /1 inserted intents are missing/],
  ['intent in two matches', (s) => s.matches.push({ ...s.matches[0], id: 8, claimed_by: null }),
    /intent 1 .* is in matches \[7,8\]/],
  ['waiting intent in a match', (s) => { s.matches[0].intent_ids = [1, 4]; },
    /intent 4 is waiting but in matches/],
  ['match stuck pending', (s) => { s.matches[0].status = 'pending'; s.matches[0].claimed_by = 55; },
    /match 7 is stuck in pending \(claimed_by 55\)/],
  ['ready match still claimed', (s) => { s.matches[0].claimed_by = 55; },
    /match 7 is ready but claimed_by 55/],
  ['failed match not allowed', (s) => {
    s.matches[0].status = 'failed';
    s.intents[0].status = 'failed';
    s.intents[1].status = 'failed';
  }, /match 7 failed/],
  ['match disagrees with intent', (s) => { s.intents[1].status = 'cancelled'; },
    /match 7 is ready but intent 2 is cancelled/],
  ['push stuck pending', (s) => { s.outbox[0].status = 'pending'; }, /outbox 11 is pending/],
  ['push missing', (s) => { s.outbox.splice(1, 1); },
    /intent 2 is matched and needs one "match" push, has \[\]/],
  ['two pushes for one intent', (s) => s.outbox.push({ ...s.outbox[0], id: 14 }),
    /intent 1 is matched and needs one "match" push, has \[match,match\]/],
  ['push never received', (s) => { s.deliveries.splice(2, 1); },
    /outbox 12 is sent but the receiver never accepted it/],
  ['two webhook-ids for one user', (s) => s.deliveries.push({
    ...s.deliveries[0], headers: { 'webhook-id': '99' },
  }), /push-a received 2 different pushes: webhook-ids 11, 99/],
  ['lease of a dead worker', (s) => s.deadLeases.push({ tab: 'outbox', id: 5, claimed_by: 4242 }),
    /outbox 5 is leased to pid 4242, which is gone/],
  ['worker not running', (s) => { s.workers = []; }, /0 matchmaker workers run/],
  ['PANIC in the log', (s) => { s.log += 'PANIC:  could not write\n'; }, /server log: PANIC/],
  ['unexpected kill in the log', (s) => {
    s.log += 'LOG:  background worker "matchmaker worker" (PID 321) was terminated by signal 9: Killed\n';
  }, /server log: .*PID 321/],
  ['backend crash in the log', (s) => {
    s.log += 'LOG:  server process (PID 9) was terminated by signal 11: Segmentation fault\n';
  }, /server log: .*signal 11/],
];

for (const [name, breakState, expected] of cases) {
  test(`checker catches ${name}`, () => {
    const state = validState();
    breakState(state);
    const violations = findViolations(state, { expectedUsers: ['a', 'b', 'c', 'd'] });
    assert.ok(violations.some((v) => expected.test(v)),
      `expected a violation matching ${expected}, got ${JSON.stringify(violations)}`);
  });
}

test('checker allows kills of the test', () => {
  const state = validState();
  state.log += 'LOG:  background worker "matchmaker worker" (PID 321) was terminated by signal 9: Killed\n';
  assert.deepEqual(findViolations(state, { killedPids: [321] }), []);
});
