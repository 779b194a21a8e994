'use strict';

// Faults of the processes, each under a steady load of intents: the worker
// killed with SIGKILL, the worker and its LISTEN connection ended with
// pg_terminate_backend, and the whole server stopped in immediate mode.
// After each, the load stops, the worker finishes, and every invariant of
// faults.js must hold. Rooms come from the fake "http" room service, which
// costs nothing per room; the Janus path under a kill is 90-crash.test.js.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');
const faults = require('./faults.js');

test.before(() => faults.useFakeRooms());
test.after(lib.resetAllSettings);

test('worker killed four times under load', { timeout: 120000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const { load, prefix } = await faults.startLoad(t, 'fkill');
  const probeMood = await lib.newMood('fkill-probe');
  const killed = [];
  await lib.sleep(1000);

  for (let k = 0; k < 3; k++) {
    const worker = await faults.oneWorker();
    const killedAt = Date.now();
    killed.push(worker.pid);
    await lib.killWorker(60000);
    t.diagnostic(`kill ${k + 1}: new worker after ${Date.now() - killedAt} ms`);
    await lib.sleep(1500);
  }
  const killedAt = Date.now();
  killed.push((await faults.oneWorker()).pid);
  await lib.killWorker(60000);
  const probeMs = await faults.timeToMatch('fkill-probe', probeMood, 60000);
  t.diagnostic(`kill 4: probe pair matched ${Date.now() - killedAt} ms after the kill (${probeMs} ms after its insert)`);

  await lib.sleep(1000);
  const inserted = await load.stop();
  t.diagnostic(`${inserted.length} intents inserted, ${load.failedAttempts} insert attempts failed during restarts`);
  const state = await faults.assertInvariants(prefix, logOffset, {
    expectedUsers: inserted.map((u) => u.user),
    killedPids: killed,
  });
  assert.ok(state.matches.length >= inserted.length / 2 - 2, 'the load must have been matched');
  const kills = state.log.split('\n').filter((line) => faults.KILLED_WORKER_LINE.test(line));
  assert.equal(kills.length, killed.length, 'the log must show each kill once');
});

test('worker terminated under load', { timeout: 120000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const { load, prefix } = await faults.startLoad(t, 'fterm');
  await lib.sleep(1000);

  const worker = await faults.oneWorker();
  const stoppedAt = Date.now();
  const [{ terminated }] = await lib.rows(`SELECT pg_terminate_backend(${worker.pid}) AS terminated`);
  assert.equal(terminated, true);
  const next = await lib.waitFor(async () => {
    const list = await lib.workers();
    return list.length === 1 && list[0].pid !== worker.pid && list[0];
  }, 30000, 'a new worker after pg_terminate_backend');
  t.diagnostic(`new worker ${next.pid} after ${Date.now() - stoppedAt} ms`);

  await lib.sleep(1500);
  const inserted = await load.stop();
  await faults.assertInvariants(prefix, logOffset, { expectedUsers: inserted.map((u) => u.user) });
  assert.equal(load.failedAttempts, 0, `inserts must not fail: ${load.lastError}`);
});

// Insert a pair without the insert triggers, so that nothing sets the
// worker's latch, then NOTIFY the worker's channel in the same
// transaction. The pair is found through the LISTEN connection, or else
// by the poll sweep. Returns the milliseconds until both are matched.
async function probeThroughNotify(pair, mood) {
  const values = pair.map((u) => `(${lib.literal(u.user)}, ${lib.literal(mood)}, ${lib.literal(u.token)}, now() + interval '1 min')`);
  const startedAt = Date.now();
  await lib.sql(`
    BEGIN;
    SET LOCAL session_replication_role = replica;
    INSERT INTO matchmaker.intents (user_id, mood, push_token, expires_at) VALUES ${values.join(', ')};
    NOTIFY matchmaker;
    COMMIT;`);
  await lib.waitForIntents(pair, 'matched', 10000);
  return Date.now() - startedAt;
}

test('LISTEN connection terminated under load', { timeout: 120000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const { load, prefix } = await faults.startLoad(t, 'flisten');
  const probeMood = await lib.newMood('flisten-probe');
  await lib.waitFor(faults.listenerPid, 15000, 'the worker\'s LISTEN connection');

  // A NOTIFY alone wakes the worker at once while it listens.
  const listening = await probeThroughNotify(lib.users('flisten-up', 2), probeMood);
  t.diagnostic(`probe through NOTIFY while listening: ${listening} ms`);

  // End the LISTEN connection twice. The worker reconnects at once after
  // the first, but waits 5 s after a connection attempt before the next
  // (LISTEN_RETRY_MS in worker.c), so the second leaves it without a
  // LISTEN connection for a while. Notifications sent meanwhile are lost,
  // and may only delay a match until the next poll sweep.
  const first = await faults.listenerPid();
  await lib.sql(`SELECT pg_terminate_backend(${first})`);
  const second = await lib.waitFor(async () => {
    const pid = await faults.listenerPid();
    return pid !== first && pid;
  }, 15000, 'the worker to reconnect its LISTEN connection');

  // The load stops before the second: its commits set the worker's latch,
  // which would hide a lost notification, so the probes below time the
  // poll sweep alone.
  await lib.sleep(1000);
  const inserted = await load.stop();
  await lib.sql(`SELECT pg_terminate_backend(${second})`);
  const downAt = Date.now();
  const latencies = [];
  for (let i = 0; i < 8 && (await faults.listenerPid()) === undefined; i++) {
    latencies.push(await probeThroughNotify(lib.users(`flisten-p${i}`, 2), probeMood));
    await lib.sleep(100);
  }
  const pid = await lib.waitFor(faults.listenerPid, 15000, 'the LISTEN connection to come back');
  const downMs = Date.now() - downAt;
  t.diagnostic(`LISTEN connection down for ${downMs} ms; probe latencies meanwhile ${latencies.join(', ')} ms`);
  assert.ok(latencies.length >= 3, `only ${latencies.length} probes ran while the LISTEN connection was down`);
  // The bound: one poll interval, plus time for psql and the matching pass
  // on a loaded 2-core machine.
  const bound = faults.POLL_INTERVAL_MS + 700;
  assert.ok(Math.max(...latencies) <= bound,
    `a match took ${Math.max(...latencies)} ms with the LISTEN connection down, more than ${bound} ms`);
  assert.ok(downMs <= 5000 + 2000, `the LISTEN connection was down for ${downMs} ms`);

  // A payload at PostgreSQL's limit (7999 bytes) does the worker no harm.
  await lib.sql(`SELECT pg_notify('matchmaker', repeat('x', 7999))`);
  const [worker] = await lib.workers();
  await lib.sleep(500);
  assert.equal(await faults.listenerPid(), pid, 'a long payload must not break the LISTEN connection');

  await faults.assertInvariants(prefix, logOffset, { expectedUsers: inserted.map((u) => u.user) });
  assert.equal((await faults.oneWorker()).pid, worker.pid, 'the worker must not restart');
  const lost = lib.serverLogSince(logOffset).match(/lost its LISTEN connection/g) ?? [];
  assert.ok(lost.length >= 1, 'the worker must log the lost LISTEN connection');
});

test('server stopped in immediate mode', { timeout: 120000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const { load, prefix } = await faults.startLoad(t, 'fimm');
  const probeMood = await lib.newMood('fimm-probe');
  await lib.sleep(1500);

  const stoppedAt = Date.now();
  await faults.restartImmediate();
  const started = Date.now();
  const worker = await faults.oneWorker();
  t.diagnostic(`server back after ${started - stoppedAt} ms, worker ${worker.pid} after ${Date.now() - stoppedAt} ms`);
  const probeMs = await faults.timeToMatch('fimm-probe', probeMood, 60000);
  t.diagnostic(`probe pair matched ${Date.now() - stoppedAt} ms after the stop (${probeMs} ms after its insert)`);

  await lib.sleep(1000);
  const inserted = await load.stop();
  await faults.assertInvariants(prefix, logOffset, { expectedUsers: inserted.map((u) => u.user) });
  assert.match(lib.serverLogSince(logOffset), /received immediate shutdown request/);
});
