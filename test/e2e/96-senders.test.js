'use strict';

// Sender processes (matchmaker.senders = 1). Under a load that fills the
// worker's request slots, the worker and the sender both claim matches.
// A sender ended under load is started again and nothing is lost. After
// each, every invariant of faults.js must hold.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');
const faults = require('./faults.js');

// Rooms take this long, so that a few slots per process fill up.
const ROOM_DELAY_MS = 100;

// Restart the cluster in fast mode, so that a postmaster setting applies.
async function restart() {
  await faults.pgCtl('-m', 'fast', '-w', 'stop');
  await faults.pgCtl('-l', lib.env.pgLog, '-w', '-t', '60', 'start');
}

// Wait until the worker and one sender run, and return the sender.
async function oneSender(timeoutMs = 30000) {
  await faults.oneWorker(timeoutMs);
  const [sender] = await lib.waitFor(async () => {
    const list = await lib.workers('matchmaker sender');
    return list.length === 1 && list;
  }, timeoutMs, 'exactly one matchmaker sender');
  return sender;
}

test.before(async () => {
  await faults.useFakeRooms({ 'matchmaker.max_inflight': 4 });
  await lib.sql('ALTER SYSTEM SET matchmaker.senders = 1');
  await restart();
  await lib.roomsControl({ delayMs: ROOM_DELAY_MS });
});

test.after(async () => {
  await lib.roomsControl({ reset: true });
  await lib.sql('ALTER SYSTEM RESET matchmaker.senders');
  await restart();
  await lib.resetAllSettings();
});

test('worker and sender share requests', { timeout: 120000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const sender = await oneSender();
  const [worker] = await lib.workers();
  const { load, prefix } = await faults.startLoad(t, 'fsend', 200);

  // The processes that hold leases on pending matches, sampled while the
  // load runs.
  const holders = new Set();
  const until = Date.now() + 4000;
  while (Date.now() < until) {
    const rows = await lib.rows(`
      SELECT DISTINCT claimed_by FROM matchmaker.matches
      WHERE status = 'pending' AND claimed_by IS NOT NULL`);
    for (const row of rows) {
      holders.add(row.claimed_by);
    }
    await lib.sleep(20);
  }
  const inserted = await load.stop();
  t.diagnostic(`${inserted.length} intents inserted; leases held by ${[...holders].join(', ')}`);

  assert.ok(holders.has(worker.pid), `the worker (pid ${worker.pid}) held no lease`);
  assert.ok(holders.has(sender.pid), `the sender (pid ${sender.pid}) held no lease`);
  await faults.assertInvariants(prefix, logOffset);
});

test('sender ended under load', { timeout: 120000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const sender = await oneSender();
  const { load, prefix } = await faults.startLoad(t, 'fsendkill', 200);
  await lib.sleep(1500);

  const ended = await lib.row(`SELECT pg_terminate_backend(${sender.pid}) AS ok`);
  assert.equal(ended.ok, true);
  const next = await lib.waitFor(async () => {
    const list = await lib.workers('matchmaker sender');
    return list.length === 1 && list[0].pid !== sender.pid && list[0];
  }, 30000, 'a new sender');
  t.diagnostic(`sender ${sender.pid} ended, sender ${next.pid} started`);
  await lib.sleep(1500);

  await load.stop();
  await faults.assertInvariants(prefix, logOffset);
});
