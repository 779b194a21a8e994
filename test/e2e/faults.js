'use strict';

// Shared parts of the fault tests (test/e2e/9x-fault-*.test.js): a steady
// background load of intents, server control (pg_ctl as the cluster's OS
// user), and one invariant checker that every fault test ends with.
//
// The checker is split in two so that it can be tested itself.
// collectState() reads the tables, the worker list, the push receiver and
// the server log. findViolations() is a pure function of that snapshot,
// and returns one message per broken invariant.

const { execFile } = require('node:child_process');
const assert = require('node:assert/strict');
const lib = require('./lib.js');

const pg = {
  bin: process.env.MM_PG_BIN,
  data: process.env.MM_PGDATA,
  osUser: process.env.MM_PG_OS_USER,
};

// Poll interval of the fault tests: short, so that faults resolve quickly.
const POLL_INTERVAL_MS = 300;

// Statuses an intent may settle in, and the push each one must get.
const PUSH_TYPE_OF = {
  waiting: null,
  cancelled: null,
  matched: 'match',
  failed: 'failed',
  expired: 'expired',
};

// The line PostgreSQL logs for a background worker killed by a signal.
const KILLED_WORKER_LINE =
  /background worker "matchmaker worker" \(PID (\d+)\) was terminated by signal 9: Killed/;

// Run a command and resolve with its stdout; reject with its stderr.
function run(command, args) {
  return new Promise((resolve, reject) => {
    execFile(command, args, (error, stdout, stderr) => {
      if (error) {
        reject(new Error(`${command} ${args.join(' ')} failed: ${stderr.trim() || error.message}`));
        return;
      }
      resolve(stdout);
    });
  });
}

// Run pg_ctl on the test cluster, as its OS user when this process is root.
async function pgCtl(...args) {
  if (!pg.bin || !pg.data) {
    throw new Error('MM_PG_BIN and MM_PGDATA are not set: run the tests through test/e2e/run');
  }
  const command = [`${pg.bin}/pg_ctl`, '-D', pg.data, ...args];
  if (process.getuid() === 0) {
    return run('runuser', ['-u', pg.osUser, '--', ...command]);
  }
  return run(command[0], command.slice(1));
}

// Run SQL through psql in another database of the cluster.
function sqlIn(database, query) {
  return run('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', database, '-c', query]);
}

// Stop the cluster with "pg_ctl -m immediate" (no checkpoint, like a
// power cut for everything but the files) and start it again.
async function restartImmediate() {
  await pgCtl('-m', 'immediate', '-w', 'stop');
  await pgCtl('-l', lib.env.pgLog, '-w', '-t', '60', 'start');
}

// Return the pid of the worker's LISTEN connection, or undefined.
async function listenerPid() {
  const found = await lib.row(`
    SELECT pid FROM pg_stat_activity
    WHERE application_name = 'matchmaker listener' AND query ILIKE 'LISTEN%'`);
  return found?.pid;
}

// Wait until exactly one worker runs, and return it.
async function oneWorker(timeoutMs = 30000) {
  const [worker] = await lib.waitFor(async () => {
    const list = await lib.workers();
    return list.length === 1 && list;
  }, timeoutMs, 'exactly one matchmaker worker');
  return worker;
}

// Start from the settings in postgresql.conf, then point the worker at
// the fake "http" room service, which costs nothing per room, poll every
// POLL_INTERVAL_MS, and apply the extra settings.
async function useFakeRooms(extra = {}) {
  await lib.resetAllSettings();
  await lib.setSettings({
    'matchmaker.room_provider': 'http',
    'matchmaker.room_url': lib.env.roomsUrl,
    'matchmaker.poll_interval': POLL_INTERVAL_MS,
    ...extra,
  });
}

// Make the given moods exist. Used after CREATE EXTENSION brought the
// moods table back with only its seeded rows.
async function ensureMoods(moods) {
  const values = moods.map((m) => `(${lib.literal(m)})`).join(', ');
  await lib.sql(`INSERT INTO matchmaker.moods (mood) VALUES ${values} ON CONFLICT DO NOTHING`);
}

// A background inserter: every tick it inserts one batch of new users,
// spread over the moods, so that ratePerSecond intents arrive per second.
// A batch that fails (server restarting, extension dropped) is retried
// until its rows are in the table. The table decides which rows of a
// broken batch committed. Each user has exactly one intent.
class IntentLoad {
  constructor(name, moods, { ratePerSecond = 100, tickMs = 100, users } = {}) {
    this.name = name;
    this.moods = moods;
    this.batchSize = Math.max(1, Math.round((ratePerSecond * tickMs) / 1000));
    this.tickMs = tickMs;
    this.makeUsers = users ?? ((n, from) => lib.users(name, from + n).slice(from));
    this.inserted = [];
    this.insertedAt = new Map();
    this.failedAttempts = 0;
    this.lastError = undefined;
    this.running = false;
  }

  start() {
    this.running = true;
    this.loop = this.runLoop();
    return this;
  }

  async stop() {
    this.running = false;
    await this.loop;
    return this.inserted;
  }

  async runLoop() {
    while (this.running) {
      const startedAt = Date.now();
      const from = this.inserted.length;
      const batch = this.makeUsers(this.batchSize, from)
        .map((u, i) => ({ ...u, mood: this.moods[(from + i) % this.moods.length] }));
      if (!(await this.insertBatch(batch))) {
        break;
      }
      const confirmedAt = Date.now();
      for (const user of batch) {
        this.inserted.push(user);
        this.insertedAt.set(user.user, confirmedAt);
      }
      await lib.sleep(Math.max(0, this.tickMs - (Date.now() - startedAt)));
    }
  }

  // Insert the users of the batch that are not in the table yet, retrying
  // every 200 ms until the whole batch is present. Returns false when the
  // load was stopped before that.
  async insertBatch(batch) {
    while (this.running) {
      try {
        const present = new Set((await lib.intentsOf(batch)).map((i) => i.user_id));
        const missing = batch.filter((u) => !present.has(u.user));
        if (missing.length > 0) {
          await lib.insertIntents(missing);
        }
        return true;
      } catch (error) {
        this.failedAttempts += 1;
        this.lastError = error.message;
        if (/unknown mood/.test(error.message)) {
          await ensureMoods(this.moods).catch(() => {});
        }
        await lib.sleep(200);
      }
    }
    return false;
  }

  // Users whose batch was confirmed in the table at or after time ms.
  insertedSince(ms) {
    return this.inserted.filter((u) => this.insertedAt.get(u.user) >= ms);
  }
}

// Start a load of ratePerSecond intents/s over two moods of its own, stopped
// when the test ends even if a check fails. Returns the load and the
// user_id prefix of its users.
async function startLoad(t, name, ratePerSecond = 100) {
  const moods = [await lib.newMood(`${name}-a`), await lib.newMood(`${name}-b`)];
  const load = new IntentLoad(name, moods, { ratePerSecond }).start();
  t.after(() => load.stop());
  return { load, prefix: `${name}-${lib.runTag}-` };
}

// Wait until nothing of the users with this user_id prefix is in flight:
// no pending match, no pending push, and at most one waiting intent per
// mood (the odd one out).
async function settle(prefix, timeoutMs = 60000) {
  const p = lib.literal(prefix);
  return lib.waitFor(async () => {
    const state = await lib.row(`
      WITH mine AS (
        SELECT * FROM matchmaker.intents WHERE starts_with(user_id, ${p}))
      SELECT
        (SELECT count(*) FROM matchmaker.matches m
          WHERE m.status = 'pending'
            AND m.id IN (SELECT match_id FROM mine)) AS matches_pending,
        (SELECT count(*) FROM matchmaker.outbox o
          WHERE o.status = 'pending'
            AND o.intent_id IN (SELECT id FROM mine)) AS pushes_pending,
        (SELECT coalesce(max(n), 0) FROM (
          SELECT count(*) AS n FROM mine WHERE status = 'waiting'
          GROUP BY mood) w) AS most_waiting`);
    return state.matches_pending === 0 && state.pushes_pending === 0 &&
      state.most_waiting <= 1 && state;
  }, timeoutMs, `the intents of "${prefix}" to settle`, 250);
}

// Read what the invariants are about, for the intents whose user_id starts
// with prefix. That is those intents, every match naming one of them,
// their outbox rows and the deliveries to their push tokens. Add leases of
// dead processes, the workers, and the server log since logOffset.
async function collectState(prefix, pushPrefix, logOffset) {
  const p = lib.literal(prefix);
  const intents = await lib.rows(`
    SELECT id, user_id, mood, push_token, status, match_id
    FROM matchmaker.intents WHERE starts_with(user_id, ${p}) ORDER BY id`);
  const matches = await lib.rows(`
    SELECT m.id, m.mood, m.status, m.intent_ids, m.user_ids, m.room, m.claimed_by
    FROM matchmaker.matches m
    WHERE EXISTS (SELECT 1 FROM matchmaker.intents i
                  WHERE starts_with(i.user_id, ${p}) AND i.id = ANY (m.intent_ids))
    ORDER BY m.id`);
  const outbox = await lib.rows(`
    SELECT o.id, o.intent_id, o.match_id, o.push_token, o.status, o.claimed_by,
           o.payload->>'type' AS type, o.last_error
    FROM matchmaker.outbox o
    WHERE o.intent_id IN (SELECT id FROM matchmaker.intents WHERE starts_with(user_id, ${p}))
    ORDER BY o.id`);
  // Rows anywhere in the database still leased to a process that is gone.
  const deadLeases = await lib.rows(`
    SELECT 'matches' AS tab, id, claimed_by FROM matchmaker.matches
    WHERE status = 'pending' AND claimed_by IS NOT NULL
      AND claimed_by NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
    UNION ALL
    SELECT 'outbox', id, claimed_by FROM matchmaker.outbox
    WHERE status = 'pending' AND claimed_by IS NOT NULL
      AND claimed_by NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)`);
  return {
    intents,
    matches,
    outbox,
    deadLeases,
    deliveries: await lib.deliveries(pushPrefix),
    workers: await lib.workers(),
    log: lib.serverLogSince(logOffset),
  };
}

// Return one message per broken invariant in a snapshot from
// collectState(). Options:
//   expectedUsers      user ids that must each have an intent (nothing lost)
//   allowFailedMatches a match may fail (the fault makes rooms fail)
//   killedPids         worker pids the test killed with SIGKILL; their
//                      "terminated by signal 9" lines are allowed
function findViolations(state, options = {}) {
  const violations = [];
  const intentById = new Map(state.intents.map((i) => [i.id, i]));
  const killed = new Set((options.killedPids ?? []).map(Number));

  // Nothing lost: every user the load saw committed has an intent.
  if (options.expectedUsers) {
    const present = new Set(state.intents.map((i) => i.user_id));
    const lost = options.expectedUsers.filter((u) => !present.has(u));
    if (lost.length > 0) {
      violations.push(`${lost.length} inserted intents are missing, e.g. ${lost.slice(0, 3).join(', ')}`);
    }
  }

  // Each matched or failed intent is in exactly one match, its own; others
  // are in none.
  const matchesOf = new Map();
  for (const match of state.matches) {
    for (const id of match.intent_ids) {
      matchesOf.set(id, [...(matchesOf.get(id) ?? []), match.id]);
    }
  }
  for (const intent of state.intents) {
    const inMatches = matchesOf.get(intent.id) ?? [];
    if (!(intent.status in PUSH_TYPE_OF)) {
      violations.push(`intent ${intent.id} has unknown status ${intent.status}`);
    } else if (intent.status === 'matched' || intent.status === 'failed') {
      if (inMatches.length !== 1 || inMatches[0] !== intent.match_id) {
        violations.push(`intent ${intent.id} (${intent.status}, match_id ${intent.match_id}) is in matches [${inMatches}]`);
      }
    } else if (inMatches.length > 0 || intent.match_id !== null) {
      violations.push(`intent ${intent.id} is ${intent.status} but in matches [${inMatches}]`);
    }
  }

  // Each match has settled, holds no lease, and agrees with its intents.
  for (const match of state.matches) {
    if (match.status !== 'ready' && match.status !== 'failed') {
      violations.push(`match ${match.id} is stuck in ${match.status} (claimed_by ${match.claimed_by})`);
    }
    if (match.status === 'failed' && !options.allowFailedMatches) {
      violations.push(`match ${match.id} failed`);
    }
    if (match.claimed_by !== null) {
      violations.push(`match ${match.id} is ${match.status} but claimed_by ${match.claimed_by}`);
    }
    if (match.status === 'ready' && !match.room) {
      violations.push(`match ${match.id} is ready without a room`);
    }
    const expectedStatus = match.status === 'ready' ? 'matched' : 'failed';
    match.intent_ids.forEach((id, k) => {
      const intent = intentById.get(id);
      if (!intent) {
        violations.push(`match ${match.id} names intent ${id}, which is not one of the test's`);
      } else if (intent.user_id !== match.user_ids[k] || intent.mood !== match.mood) {
        violations.push(`match ${match.id} disagrees with intent ${id} on user or mood`);
      } else if (match.status !== 'pending' && intent.status !== expectedStatus) {
        violations.push(`match ${match.id} is ${match.status} but intent ${id} is ${intent.status}`);
      }
    });
  }

  // Each intent has exactly the outbox row its status calls for, sent.
  const outboxOf = new Map();
  for (const row of state.outbox) {
    outboxOf.set(row.intent_id, [...(outboxOf.get(row.intent_id) ?? []), row]);
    if (row.status !== 'sent') {
      violations.push(`outbox ${row.id} is ${row.status} (claimed_by ${row.claimed_by}, last_error ${row.last_error})`);
    } else if (row.claimed_by !== null) {
      violations.push(`outbox ${row.id} is sent but claimed_by ${row.claimed_by}`);
    }
  }
  for (const intent of state.intents) {
    const type = PUSH_TYPE_OF[intent.status];
    const rowsOf = outboxOf.get(intent.id) ?? [];
    if (type === null && rowsOf.length > 0) {
      violations.push(`intent ${intent.id} is ${intent.status} but has outbox rows ${rowsOf.map((r) => r.id)}`);
    } else if (type && (rowsOf.length !== 1 || rowsOf[0].type !== type)) {
      violations.push(`intent ${intent.id} is ${intent.status} and needs one "${type}" push, has [${rowsOf.map((r) => r.type)}]`);
    } else if (type && type !== 'expired' && rowsOf[0].match_id !== intent.match_id) {
      violations.push(`outbox ${rowsOf[0].id} names match ${rowsOf[0].match_id}, intent ${intent.id} is in ${intent.match_id}`);
    }
  }
  for (const lease of state.deadLeases) {
    violations.push(`${lease.tab} ${lease.id} is leased to pid ${lease.claimed_by}, which is gone`);
  }

  // The receiver got every sent row at least once, under its own
  // webhook-id, and never two webhook-ids for one user: each user of a
  // fault test has exactly one intent, so one push.
  const accepted = state.deliveries.filter((d) => d.status >= 200 && d.status < 300);
  const idsTo = new Map();
  for (const delivery of accepted) {
    const ids = idsTo.get(delivery.body.to) ?? new Set();
    ids.add(delivery.headers['webhook-id']);
    idsTo.set(delivery.body.to, ids);
  }
  for (const row of state.outbox) {
    const got = accepted.some((d) => d.headers['webhook-id'] === String(row.id) &&
      d.body.to === row.push_token && d.body.data?.intent_id === row.intent_id);
    if (row.status === 'sent' && !got) {
      violations.push(`outbox ${row.id} is sent but the receiver never accepted it`);
    }
  }
  for (const [to, ids] of idsTo) {
    if (ids.size > 1) {
      violations.push(`${to} received ${ids.size} different pushes: webhook-ids ${[...ids].join(', ')}`);
    }
  }

  // The worker runs, and the log shows no crash but the kills of the test.
  if (state.workers.length !== 1) {
    violations.push(`${state.workers.length} matchmaker workers run, expected 1`);
  }
  for (const line of state.log.split('\n')) {
    if (/PANIC/.test(line)) {
      violations.push(`server log: ${line}`);
    }
    if (/terminated by signal/.test(line)) {
      const kill = KILLED_WORKER_LINE.exec(line);
      if (!kill || !killed.has(Number(kill[1]))) {
        violations.push(`server log: ${line}`);
      }
    }
  }
  return violations;
}

// Wait for the intents of prefix to settle, then assert every invariant.
// Returns the snapshot, for checks of the test's own.
async function assertInvariants(prefix, logOffset, options = {}) {
  await settle(prefix, options.settleTimeoutMs);
  const state = await collectState(prefix, `push-${prefix}`, logOffset);
  const violations = findViolations(state, options);
  assert.deepEqual(violations, [], `invariants broken for "${prefix}":\n${violations.join('\n')}`);
  return state;
}

// Insert a new pair in mood, retrying while the server is down, and return
// the milliseconds from the first try until both are matched.
async function timeToMatch(name, mood, timeoutMs = 30000) {
  const pair = lib.users(name, 2);
  const startedAt = Date.now();
  await lib.waitFor(async () => {
    await lib.insertIntents(pair, mood);
    return true;
  }, timeoutMs, `a probe pair "${name}" to be inserted`, 100);
  await lib.waitForIntents(pair, 'matched', timeoutMs);
  return Date.now() - startedAt;
}

module.exports = {
  IntentLoad,
  KILLED_WORKER_LINE,
  POLL_INTERVAL_MS,
  assertInvariants,
  collectState,
  ensureMoods,
  findViolations,
  listenerPid,
  oneWorker,
  pgCtl,
  restartImmediate,
  settle,
  sqlIn,
  startLoad,
  timeToMatch,
  useFakeRooms,
};
