'use strict';

// Faults of the catalog under a steady load: the extension dropped and
// created again while the worker runs, and DROP DATABASE of a database the
// worker does not serve and of the one it serves.

const test = require('node:test');
const assert = require('node:assert/strict');
const lib = require('./lib.js');
const faults = require('./faults.js');

test.before(() => faults.useFakeRooms());
test.after(lib.resetAllSettings);

// Check the invariants for the users, and that the worker carried on
// without exiting since logOffset.
async function assertCarriedOn(prefix, logOffset, users, worker) {
  await faults.assertInvariants(prefix, logOffset, { expectedUsers: users.map((u) => u.user) });
  assert.equal((await faults.oneWorker()).pid, worker.pid, 'the worker must carry on');
  assert.deepEqual(workerExits(lib.serverLogSince(logOffset)), []);
}

// Lines in which the postmaster reports that the worker exited.
function workerExits(log) {
  return log.split('\n').filter((line) => /background worker "matchmaker worker" \(PID \d+\) exited/.test(line));
}

// DROP EXTENSION locks the extension's tables one after another, while
// inserts and the worker lock them in their own order, so PostgreSQL may
// pick the DROP as the victim of a deadlock.  An operator runs it again.
async function dropExtension(t) {
  for (let attempt = 1; ; attempt++) {
    try {
      await lib.sql('DROP EXTENSION matchmaker');
      return;
    } catch (error) {
      if (attempt >= 5 || !/deadlock detected/.test(error.message)) {
        throw error;
      }
      t.diagnostic(`DROP EXTENSION attempt ${attempt} was a deadlock victim; running it again`);
    }
  }
}

test('extension dropped and created under load', { timeout: 120000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const name = 'fdrop';
  const { load, prefix } = await faults.startLoad(t, name);
  const worker = await faults.oneWorker();
  await lib.sleep(1500);

  await dropExtension(t);
  const droppedAt = Date.now();
  await lib.sleep(1500);
  await lib.sql('CREATE EXTENSION matchmaker');
  const createdAt = Date.now();
  // The load puts its moods back when its inserts fail for them.
  const probeMood = await lib.newMood(`${name}-probe`);
  const probeMs = await faults.timeToMatch(`${name}-probe`, probeMood);
  t.diagnostic(`dropped for ${createdAt - droppedAt} ms; probe pair matched ${probeMs} ms after its insert`);

  await lib.sleep(1500);
  await load.stop();
  // Intents from before the DROP went with the tables; every one confirmed
  // after the CREATE must be there and settle.
  const after = load.insertedSince(createdAt);
  assert.ok(after.length > 0, 'the load must insert after the CREATE');
  await assertCarriedOn(prefix, logOffset, after, worker);
});

test('unserved database dropped under load', { timeout: 120000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const name = 'fdbo';
  const database = `fault_other_${lib.runTag}`;
  const worker = await faults.oneWorker();
  await lib.sql(`CREATE DATABASE ${database}`);
  await faults.sqlIn(database, 'CREATE EXTENSION matchmaker');
  const { load, prefix } = await faults.startLoad(t, name);
  await lib.sleep(1000);

  await lib.sql(`DROP DATABASE ${database} WITH (FORCE)`);
  await lib.sleep(1500);
  const inserted = await load.stop();
  await assertCarriedOn(prefix, logOffset, inserted, worker);
});

test('served database dropped under load', { timeout: 120000 }, async (t) => {
  const logOffset = lib.serverLogSize();
  const name = 'fdbs';
  const database = `fault_served_${lib.runTag}`;
  await lib.sql(`CREATE DATABASE ${database}`);
  await faults.sqlIn(database, 'CREATE EXTENSION matchmaker');
  t.after(async () => {
    await lib.resetSettings(['matchmaker.database']);
    await lib.sql(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  });

  // Move the worker to the new database.
  await lib.setSettings({ 'matchmaker.database': database });
  await lib.waitFor(async () => {
    const found = await lib.row(`
      SELECT datname FROM pg_stat_activity WHERE backend_type = 'matchmaker worker'`);
    return found?.datname === database;
  }, 30000, `the worker to serve ${database}`);

  // A load in that database: while it runs, psql connects there by
  // default, so this test reaches the default database with sqlIn().
  const load = new faults.IntentLoad(name, ['happy', 'sad'], { ratePerSecond: 50 });
  t.after(() => load.stop());
  const previous = process.env.PGDATABASE;
  process.env.PGDATABASE = database;
  let droppedAt;
  try {
    load.start();
    await lib.sleep(1500);
    droppedAt = Date.now();
    await faults.sqlIn('postgres', `DROP DATABASE ${database} WITH (FORCE)`);
    await lib.sleep(500);
    await load.stop();
  } finally {
    process.env.PGDATABASE = previous;
  }
  t.diagnostic(`${load.inserted.length} intents inserted in ${database} before the DROP`);

  // The worker cannot start without its database: the postmaster restarts
  // it every second (bgw_restart_time), as the README documents. Count the
  // exits over 5 s.
  await lib.sleep(5000);
  const exits = workerExits(lib.serverLogSince(logOffset));
  t.diagnostic(`${exits.length} worker exits in ${Date.now() - droppedAt} ms after the DROP`);
  assert.ok(exits.length >= 2, 'the worker must keep trying to start');
  assert.ok(exits.length <= 8, `${exits.length} worker exits in 5 s: a crash loop faster than once a second`);
  assert.match(lib.serverLogSince(logOffset), new RegExp(`database "${database}" does not exist`));

  // Serving the default database again brings the worker back.
  const resetAt = Date.now();
  await lib.resetSettings(['matchmaker.database']);
  await lib.waitFor(async () => {
    const found = await lib.row(`
      SELECT datname FROM pg_stat_activity WHERE backend_type = 'matchmaker worker'`);
    return found?.datname === 'postgres';
  }, 30000, 'the worker to serve postgres again');
  const probeMood = await lib.newMood(`${name}-probe`);
  const probeMs = await faults.timeToMatch(`${name}-probe`, probeMood);
  t.diagnostic(`worker back ${Date.now() - resetAt} ms after the reset (probe ${probeMs} ms)`);

  const state = await faults.collectState(`${name}-${lib.runTag}-`, lib.pushPrefix(name), logOffset);
  const violations = faults.findViolations(state, {});
  assert.deepEqual(violations, [], violations.join('\n'));
});
