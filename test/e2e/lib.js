'use strict';

// Helpers for the end-to-end tests. test/e2e/run starts the cluster, Janus
// and the fakes, and passes their addresses in these environment variables:
//   PGHOST, PGPORT, PGUSER, PGDATABASE   the cluster (read by psql)
//   MM_PG_LOG                            the server log
//   MM_JANUS_URL                         Janus HTTP API, e.g. http://127.0.0.1:P/janus
//   MM_JANUS_SHORT_SESSION_URL           another Janus whose sessions time out after 2 s
//   MM_JANUS_SHORT_SESSION_LOG           and its log
//   MM_PUSH_BASE, MM_PUSH_URL            fake push receiver
//   MM_ROOMS_BASE, MM_ROOMS_URL          fake "http" room provider

const { execFile, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const env = {
  janusUrl: process.env.MM_JANUS_URL,
  janusShortSessionUrl: process.env.MM_JANUS_SHORT_SESSION_URL,
  janusShortSessionLog: process.env.MM_JANUS_SHORT_SESSION_LOG,
  pushBase: process.env.MM_PUSH_BASE,
  pushUrl: process.env.MM_PUSH_URL,
  roomsBase: process.env.MM_ROOMS_BASE,
  roomsUrl: process.env.MM_ROOMS_URL,
  pgLog: process.env.MM_PG_LOG,
};

for (const [name, value] of Object.entries(env)) {
  if (!value) {
    throw new Error(`environment variable for "${name}" is not set: run the tests through test/e2e/run`);
  }
}

// How long a test waits for the worker to finish something that should
// take well under a second. Generous, because the machine may be loaded.
const WORKER_TIMEOUT_MS = 15000;

// Time limit of one test, so that a hung test fails alone and its after
// hooks (which restore settings) still run.
const TEST_TIMEOUT_MS = 90000;

// Time for the worker to re-read its settings after pg_reload_conf().
// NOTE: nothing reports when the worker has applied a reload, so this is a
// fixed wait. A worker that sleeps on its latch wakes on SIGHUP at once.
const RELOAD_SETTLE_MS = 700;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Quote a value as an SQL string literal.
function literal(value) {
  return `'${String(value).replace(/'/g, "''")}'`;
}

// Run SQL through psql and return its unaligned, tuples-only output with
// the trailing newline removed. Rejects with psql's error message.
function sql(query) {
  const args = ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', query];
  return new Promise((resolve, reject) => {
    execFile('psql', args, { maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) {
        const message = stderr.trim() || error.message;
        reject(new Error(`psql failed: ${message}\nquery: ${query}`));
        return;
      }
      resolve(stdout.replace(/\n$/, ''));
    });
  });
}

// Run a SELECT and return its rows as objects (through json_agg, so
// bigint columns arrive as numbers and arrays as arrays).
async function rows(query) {
  const text = await sql(`SELECT coalesce(json_agg(q), '[]') FROM (${query}) q`);
  return JSON.parse(text);
}

async function row(query) {
  const result = await rows(query);
  return result[0];
}

// Call fn until it returns a truthy value and return that value. Rejects
// after timeoutMs with the description and the last value or error.
async function waitFor(fn, timeoutMs = WORKER_TIMEOUT_MS, description = 'condition',
  intervalMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await fn();
      lastError = undefined;
      if (last) {
        return last;
      }
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) {
      const detail = lastError ? `last error: ${lastError.message}` : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}; ${detail}`);
    }
    await sleep(intervalMs);
  }
}

// Run a SELECT until it returns count rows, and return those rows.
async function waitForRows(query, count, timeoutMs = WORKER_TIMEOUT_MS,
  description = `${count} rows`) {
  return waitFor(async () => {
    const list = await rows(query);
    return list.length === count && list;
  }, timeoutMs, description);
}

// A short random tag, so that ids from one run never collide with those
// of another run against the same cluster.
const runTag = crypto.randomBytes(3).toString('hex');

// Make n user ids for one test. Each user's push token is "push-" + id,
// so a test selects its own deliveries with the prefix "push-" + prefix.
function users(prefix, n) {
  const list = [];
  for (let i = 1; i <= n; i++) {
    const id = `${prefix}-${runTag}-u${i}`;
    list.push({ user: id, token: `push-${id}` });
  }
  return list;
}

function pushPrefix(prefix) {
  return `push-${prefix}-${runTag}-`;
}

// Insert intents, in the given order and in one statement, and return
// {id, user_id} rows in insertion order.
async function insertIntents(list, mood) {
  const values = list.map((u) => `(${literal(u.user)}, ${literal(u.mood ?? mood)}, ${literal(u.token)})`);
  const text = await sql(`
    WITH inserted AS (
      INSERT INTO matchmaker.intents (user_id, mood, push_token)
      VALUES ${values.join(', ')}
      RETURNING id, user_id)
    SELECT coalesce(json_agg(i ORDER BY i.id), '[]') FROM inserted i`);
  return JSON.parse(text);
}

// Create a mood that only the calling test uses, so that no intent of
// another test can become its partner. Mood names are at most 32 characters
// of [a-z0-9_-], starting with a letter.
async function newMood(name) {
  const mood = `e${runTag}-${name}`;
  if (!/^[a-z][a-z0-9_-]{0,31}$/.test(mood)) {
    throw new Error(`mood "${mood}" is not a valid mood name: use a shorter name of [a-z0-9_-]`);
  }
  await sql(`INSERT INTO matchmaker.moods (mood) VALUES (${literal(mood)}) ON CONFLICT DO NOTHING`);
  return mood;
}

// Wait until every intent of the users has one of the statuses, and
// return the intents.
async function waitForIntents(list, statuses, timeoutMs = WORKER_TIMEOUT_MS) {
  const expected = new Set(Array.isArray(statuses) ? statuses : [statuses]);
  return waitFor(async () => {
    const intents = await intentsOf(list);
    const done = intents.length === list.length && intents.every((i) => expected.has(i.status));
    return done && intents;
  }, timeoutMs, `intents of ${list.map((u) => u.user).join(', ')} to be ${[...expected].join(' or ')}`);
}

// Wait until the users are matched and their match has left pending,
// and return the match.
async function settledMatch(list, timeoutMs = 30000) {
  const intents = await waitForIntents(list, ['matched', 'failed'], timeoutMs);
  const matchId = intents[0].match_id;
  if (!Number.isInteger(matchId)) {
    throw new Error(`intent ${intents[0].id} of ${intents[0].user_id} has no match_id`);
  }
  return waitFor(async () => {
    const match = await row(`SELECT * FROM matchmaker.matches WHERE id = ${matchId}`);
    return match && match.status !== 'pending' && match;
  }, timeoutMs, `match ${matchId} to leave pending`);
}

// Return the outbox rows of the given intent ids, ordered by id.
async function outboxOf(intentIds) {
  if (intentIds.length === 0) {
    return [];
  }
  return rows(`SELECT * FROM matchmaker.outbox WHERE intent_id IN (${intentIds.join(', ')}) ORDER BY id`);
}

// Wait until the outbox rows of the intents are no longer pending and
// return them. Expects at least one row per intent.
async function waitForOutbox(intentIds, timeoutMs = WORKER_TIMEOUT_MS) {
  return waitFor(async () => {
    const outbox = await outboxOf(intentIds);
    const covered = new Set(outbox.map((o) => o.intent_id));
    const done = intentIds.every((id) => covered.has(id)) &&
      outbox.every((o) => o.status !== 'pending');
    return done && outbox;
  }, timeoutMs, `outbox rows of intents ${intentIds.join(', ')} to leave pending`);
}

// Cancel every waiting intent, so a test starts with no partner left over
// from an earlier test. The tests run one at a time.
async function cancelWaiting() {
  await sql("UPDATE matchmaker.intents SET status = 'cancelled' WHERE status = 'waiting'");
}

async function intentsOf(list) {
  const ids = list.map((u) => literal(u.user)).join(', ');
  return rows(`SELECT * FROM matchmaker.intents WHERE user_id IN (${ids}) ORDER BY id`);
}

// Set server parameters with ALTER SYSTEM, reload, and wait for the worker.
async function setSettings(settings) {
  for (const [name, value] of Object.entries(settings)) {
    await sql(`ALTER SYSTEM SET ${name} = ${literal(value)}`);
  }
  await sql('SELECT pg_reload_conf()');
  await sleep(RELOAD_SETTLE_MS);
}

async function resetSettings(names) {
  for (const name of names) {
    await sql(`ALTER SYSTEM RESET ${name}`);
  }
  await sql('SELECT pg_reload_conf()');
  await sleep(RELOAD_SETTLE_MS);
}

// Drop every ALTER SYSTEM setting, so a file starts from the settings in
// postgresql.conf even when an earlier file failed to restore its own.
async function resetAllSettings() {
  await sql('ALTER SYSTEM RESET ALL');
  await sql('SELECT pg_reload_conf()');
  await sleep(RELOAD_SETTLE_MS);
}

// Return the matchmaker background workers in pg_stat_activity.
async function workers(backendType = 'matchmaker worker') {
  return rows(`
    SELECT pid, backend_type, backend_start
    FROM pg_stat_activity
    WHERE backend_type = ${literal(backendType)}
    ORDER BY pid`);
}

// Send SIGKILL to the worker and wait until the postmaster has started a
// new one. Returns the new worker's pid.
async function killWorker(timeoutMs = 30000) {
  const [worker] = await waitFor(async () => {
    const list = await workers();
    return list.length > 0 && list;
  }, timeoutMs, 'a matchmaker worker to kill');
  process.kill(worker.pid, 'SIGKILL');
  const [next] = await waitFor(async () => {
    const list = await workers();
    return list.length > 0 && list[0].pid !== worker.pid && list;
  }, timeoutMs, `a new matchmaker worker after killing pid ${worker.pid}`);
  return next.pid;
}

// Return a loopback URL on which nothing listens: the port was free when
// this function closed its listener on it.
async function closedUrl(path) {
  const net = require('node:net');
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}${path}`;
}

// Return the lines of the server log written after the given byte offset.
function serverLogSince(offset) {
  const text = fs.readFileSync(env.pgLog, 'utf8');
  return text.slice(offset);
}

function serverLogSize() {
  return fs.statSync(env.pgLog).size;
}

// Start a push receiver of the calling test's own, with extra options of
// test/fake/push-receiver.js such as --tls-cert and --tls-key. Returns
// its port and stop(), which the test calls when it is done with it.
async function startPushReceiver(options = []) {
  const script = path.join(__dirname, '..', 'fake', 'push-receiver.js');
  const child = spawn(process.execPath, [script, '--port', '0', ...options],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  let output = '';
  const port = await new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      output += chunk;
      const match = /^listening 127\.0\.0\.1:(\d+)$/m.exec(output);
      if (match) {
        resolve(Number(match[1]));
      }
    });
    child.on('exit', (code) => reject(new Error(`push receiver exited with code ${code}: ${output}`)));
  });
  const stop = () => new Promise((resolve) => {
    if (child.exitCode !== null) {
      resolve();
      return;
    }
    child.once('exit', resolve);
    child.kill('SIGTERM');
  });
  return { port, stop };
}

async function httpJson(url, options = {}) {
  const response = await fetch(url, {
    ...options,
    headers: { 'Content-Type': 'application/json', ...(options.headers ?? {}) },
    signal: options.signal ?? AbortSignal.timeout(10000),
  });
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${options.method ?? 'GET'} ${url} returned ${response.status}: ${text}`);
  }
  return JSON.parse(text);
}

// Return the pushes the fake receiver got, optionally only those whose
// "to" starts with prefix.
async function deliveries(prefix) {
  const query = prefix === undefined ? '' : `?to=${encodeURIComponent(prefix)}`;
  return httpJson(`${env.pushBase}/deliveries${query}`);
}

// Change how the fake push receiver responds; see test/fake/push-receiver.js.
async function pushControl(body) {
  return httpJson(`${env.pushBase}/control`, { method: 'POST', body: JSON.stringify(body) });
}

// Return the requests the fake room service got, optionally only those
// naming a user that starts with prefix.
async function roomRequests(prefix) {
  const query = prefix === undefined ? '' : `?user=${encodeURIComponent(prefix)}`;
  return httpJson(`${env.roomsBase}/requests${query}`);
}

// Change how the fake room service responds; see test/fake/room-service.js.
async function roomsControl(body) {
  return httpJson(`${env.roomsBase}/control`, { method: 'POST', body: JSON.stringify(body) });
}

function transaction() {
  return crypto.randomBytes(8).toString('hex');
}

// POST a Janus API request to path below the base URL (by default the
// main Janus) and return the parsed response. Janus returns 200 even for
// its own errors, so the caller checks the "janus" field.
async function janus(path, body, baseUrl = env.janusUrl) {
  return httpJson(`${baseUrl}${path}`, {
    method: 'POST',
    body: JSON.stringify({ transaction: transaction(), ...body }),
  });
}

// A Janus session with one AudioBridge handle, owned by a test.
class JanusClient {
  constructor(baseUrl, sessionId, handleId) {
    this.baseUrl = baseUrl;
    this.sessionId = sessionId;
    this.handleId = handleId;
  }

  static async connect(baseUrl = env.janusUrl) {
    const created = await janus('', { janus: 'create' }, baseUrl);
    if (created.janus !== 'success') {
      throw new Error(`Janus create failed: ${JSON.stringify(created)}`);
    }
    const sessionId = created.data.id;
    const attached = await janus(`/${sessionId}`, {
      janus: 'attach',
      plugin: 'janus.plugin.audiobridge',
    }, baseUrl);
    if (attached.janus !== 'success') {
      throw new Error(`Janus attach failed: ${JSON.stringify(attached)}`);
    }
    return new JanusClient(baseUrl, sessionId, attached.data.id);
  }

  // Send a synchronous AudioBridge request and return the plugin's data,
  // which carries error_code when the plugin rejected the request.
  async request(body) {
    const answer = await janus(`/${this.sessionId}/${this.handleId}`, { janus: 'message', body },
      this.baseUrl);
    if (answer.janus !== 'success') {
      throw new Error(`Janus message failed: ${JSON.stringify(answer)}`);
    }
    return answer.plugindata.data;
  }

  // Send an asynchronous AudioBridge request (such as join) and return the
  // plugin's data from the event that carries its result.
  async requestAsync(body, timeoutMs = 10000) {
    const id = transaction();
    const answer = await httpJson(`${this.baseUrl}/${this.sessionId}/${this.handleId}`, {
      method: 'POST',
      body: JSON.stringify({ janus: 'message', transaction: id, body }),
    });
    if (answer.janus === 'success' && answer.plugindata) {
      return answer.plugindata.data;
    }
    if (answer.janus !== 'ack') {
      throw new Error(`Janus message failed: ${JSON.stringify(answer)}`);
    }
    const event = await this.nextEvent((e) => e.transaction === id && e.plugindata, timeoutMs);
    return event.plugindata.data;
  }

  // Long-poll the session until an event satisfies accept.
  async nextEvent(accept, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const event = await httpJson(`${this.baseUrl}/${this.sessionId}?maxev=1`, {
        signal: AbortSignal.timeout(Math.max(deadline - Date.now(), 1)),
      });
      if (accept(event)) {
        return event;
      }
    }
    throw new Error(`no matching Janus event within ${timeoutMs} ms`);
  }

  async close() {
    const path = `/${this.sessionId}`;
    await janus(`${path}/${this.handleId}`, { janus: 'detach' }, this.baseUrl).catch(() => {});
    await janus(path, { janus: 'destroy' }, this.baseUrl).catch(() => {});
  }
}

// Destroy the Janus rooms of the given matches with the secret the worker
// stored in matches.plan. Each AudioBridge room runs its own mixer thread
// until it is destroyed, so a test that makes many rooms removes them.
// Returns the number of rooms destroyed.
async function destroyRooms(matchIds) {
  if (matchIds.length === 0) {
    return 0;
  }
  const matches = await rows(`
    SELECT room, plan->>'secret' AS secret FROM matchmaker.matches
    WHERE id IN (${matchIds.join(', ')}) AND room IS NOT NULL`);
  const client = await JanusClient.connect();
  let destroyed = 0;
  try {
    for (const match of matches) {
      const body = { request: 'destroy', room: janusRoomId(match.room), permanent: false };
      if (match.secret) {
        body.secret = match.secret;
      }
      const result = await client.request(body);
      if (result.audiobridge === 'destroyed') {
        destroyed += 1;
      }
    }
  } finally {
    await client.close();
  }
  return destroyed;
}

// Janus room ids are integers unless the plugin uses string ids, so a room
// stored as text is sent back as a number.
function janusRoomId(room) {
  if (!/^[0-9]+$/.test(String(room))) {
    throw new Error(`room "${room}" is not a numeric Janus room id`);
  }
  const id = Number(room);
  if (!Number.isSafeInteger(id)) {
    throw new Error(`room "${room}" is larger than 2^53-1 and cannot be sent in JSON exactly`);
  }
  return id;
}

module.exports = {
  JanusClient,
  TEST_TIMEOUT_MS,
  WORKER_TIMEOUT_MS,
  cancelWaiting,
  closedUrl,
  deliveries,
  destroyRooms,
  env,
  insertIntents,
  intentsOf,
  janus,
  janusRoomId,
  killWorker,
  literal,
  newMood,
  outboxOf,
  pushControl,
  pushPrefix,
  resetAllSettings,
  resetSettings,
  roomRequests,
  roomsControl,
  row,
  rows,
  runTag,
  serverLogSince,
  serverLogSize,
  setSettings,
  settledMatch,
  sleep,
  sql,
  startPushReceiver,
  users,
  waitFor,
  waitForRows,
  waitForIntents,
  waitForOutbox,
  workers,
};
