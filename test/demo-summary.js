#!/usr/bin/env node
'use strict';

// Summary of a test/demo run: counts from the database, rooms checked on
// Janus, pushes counted at the fake receiver, latency percentiles, and the
// checks that nothing was lost.
//
//   node test/demo-summary.js [--rate N] [--calls FILE]
//
// --rate is the target insert rate, printed next to the achieved one.
// --calls is the record of test/demo-calls.js: rooms it found when their
// match became ready count as verified, and the rest are checked here.
// Reads the database through psql with the PG* environment variables, and
// needs MM_JANUS_URL (Janus HTTP API) and MM_PUSH_BASE (fake receiver).
//
// Exit status: 0 when every check passed, 1 when one failed, 2 when a
// source could not be read.
//
// Latencies subtract PostgreSQL's now() at the insert (intents.created_at)
// from the receiver's Date.now() at arrival, so both clocks must be the
// same machine's, as they are in test/demo.

const fs = require('node:fs');
const {
  JANUS_CONCURRENCY,
  JanusClient,
  closeConnections,
  forEachBounded,
  queryRows,
  requestJson,
  requireEnv,
} = require('./demo-lib.js');

// The receiver returns every delivery in one response, which grows with
// the run, so it gets a longer timeout than the Janus requests.
const DELIVERIES_TIMEOUT_MS = 120000;

function parseArgs(argv) {
  const options = { rate: null, calls: null };
  for (let i = 2; i < argv.length; i++) {
    if (argv[i] === '--rate' && i + 1 < argv.length) {
      options.rate = Number(argv[++i]);
    } else if (argv[i] === '--calls' && i + 1 < argv.length) {
      options.calls = argv[++i];
    } else {
      throw new Error(`unknown argument "${argv[i]}"; usage: demo-summary.js [--rate N] [--calls FILE]`);
    }
  }
  return options;
}

// Read intents, matches and pushes, with timestamps as ms since the epoch.
async function readDatabase() {
  return {
    intents: await queryRows(`
      SELECT id, status, match_id,
             (extract(epoch FROM created_at) * 1000)::float8 AS created_ms
      FROM matchmaker.intents`),
    matches: await queryRows(`
      SELECT id, status, room, intent_ids, room_closed_at IS NOT NULL AS closed
      FROM matchmaker.matches`),
    pushes: await queryRows(`
      SELECT id, intent_id, match_id, status, payload->>'type' AS type
      FROM matchmaker.outbox`),
  };
}

// Read the room checks test/demo-calls.js recorded, keyed by match id.
// Returns an empty map when there is no file.
function readCallRecords(path) {
  const checks = new Map();
  let ended = 0;
  let endErrors = 0;
  if (path === null || !fs.existsSync(path)) {
    return { checks, ended, endErrors };
  }
  for (const line of fs.readFileSync(path, 'utf8').split('\n')) {
    if (line === '') {
      continue;
    }
    const entry = JSON.parse(line);
    if (entry.ended) {
      ended++;
    } else if (entry.endError !== undefined) {
      endErrors++;
    } else {
      checks.set(String(entry.match), entry);
    }
  }
  return { checks, ended, endErrors };
}

// Ask Janus whether each room exists, through a session and AudioBridge
// handle of our own, with at most JANUS_CONCURRENCY requests in flight.
// Returns the rooms Janus reports missing, and errors for the requests
// that failed.
async function checkRooms(janusUrl, rooms) {
  const missing = [];
  const errors = [];
  if (rooms.length === 0) {
    return { missing, errors };
  }
  const janus = await JanusClient.connect(janusUrl);
  try {
    await forEachBounded(rooms, JANUS_CONCURRENCY, async (room) => {
      try {
        if (!(await janus.roomExists(room))) {
          missing.push(room);
        }
      } catch (error) {
        errors.push(`room ${room}: ${error.message}`);
      }
    });
  } finally {
    await janus.close();
  }
  return { missing, errors };
}

// Return the nearest-rank percentile p (0-100) of sorted values.
function percentile(sorted, p) {
  if (sorted.length === 0) {
    return NaN;
  }
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function countBy(rows, key) {
  const counts = {};
  for (const row of rows) {
    counts[row[key]] = (counts[row[key]] ?? 0) + 1;
  }
  return counts;
}

function formatCounts(counts, order) {
  const names = [...order, ...Object.keys(counts).filter((k) => !order.includes(k)).sort()];
  return names.map((name) => `${name} ${counts[name] ?? 0}`).join(', ');
}

function latencyRow(label, values) {
  const sorted = Float64Array.from(values).sort();
  const cell = (v) => (Number.isNaN(v) ? '-' : v.toFixed(1)).padStart(9);
  return `  ${label.padEnd(16)}${String(sorted.length).padStart(7)}` +
    [50, 90, 99, 100].map((p) => cell(percentile(sorted, p))).join('');
}

// Group the receiver's successful deliveries by webhook-id, keeping the
// first arrival of each, and count the repeats.
function indexDeliveries(deliveries) {
  const first = new Map();
  let duplicates = 0;
  let withoutId = 0;
  let rejected = 0;
  for (const delivery of deliveries) {
    if (delivery.status !== 200) {
      rejected++;
      continue;
    }
    const id = delivery.headers['webhook-id'];
    if (id === undefined) {
      withoutId++;
      continue;
    }
    const seen = first.get(id);
    if (seen === undefined) {
      first.set(id, delivery);
    } else {
      duplicates++;
      if (delivery.at < seen.at) {
        first.set(id, delivery);
      }
    }
  }
  return { first, duplicates, withoutId, rejected };
}

async function main() {
  const options = parseArgs(process.argv);
  const janusUrl = requireEnv('MM_JANUS_URL');
  const pushBase = requireEnv('MM_PUSH_BASE');

  const db = await readDatabase();
  const deliveries = await requestJson(`${pushBase}/deliveries`, undefined, DELIVERIES_TIMEOUT_MS);
  const received = indexDeliveries(deliveries);

  const intentById = new Map(db.intents.map((i) => [String(i.id), i]));
  const matchById = new Map(db.matches.map((m) => [String(m.id), m]));
  const problems = [];
  const problem = (kind, detail) => problems.push({ kind, detail });

  // Achieved insert rate, from the first to the last insert.
  let firstInsert = Infinity;
  let lastInsert = -Infinity;
  for (const intent of db.intents) {
    firstInsert = Math.min(firstInsert, intent.created_ms);
    lastInsert = Math.max(lastInsert, intent.created_ms);
  }
  const spanSeconds = db.intents.length > 1 ? (lastInsert - firstInsert) / 1000 : 0;
  const achievedRate = spanSeconds > 0 ? (db.intents.length - 1) / spanSeconds : NaN;

  // Check that every intent is in at most one match and that its match_id
  // agrees.
  const matchesOfIntent = new Map();
  for (const match of db.matches) {
    for (const intentId of match.intent_ids) {
      const key = String(intentId);
      matchesOfIntent.set(key, [...(matchesOfIntent.get(key) ?? []), match.id]);
    }
  }
  for (const [intentId, matchIds] of matchesOfIntent) {
    if (matchIds.length > 1) {
      problem('intent in two or more matches', `intent ${intentId} in matches ${matchIds.join(', ')}`);
    }
    const intent = intentById.get(intentId);
    if (intent === undefined) {
      problem('match names a missing intent', `intent ${intentId} of match ${matchIds[0]}`);
    } else if (String(intent.match_id) !== String(matchIds[0])) {
      problem('intent match_id disagrees with its match',
        `intent ${intentId} has match_id ${intent.match_id} but is in match ${matchIds[0]}`);
    }
  }

  for (const intent of db.intents) {
    if (intent.match_id === null) {
      continue;
    }
    const match = matchById.get(String(intent.match_id));
    if (match === undefined || !match.intent_ids.some((id) => String(id) === String(intent.id))) {
      problem('intent match_id disagrees with its match',
        `intent ${intent.id} has match_id ${intent.match_id}, which does not list it`);
    }
  }

  // Rooms of ready matches, checked on Janus: by test/demo-calls.js when
  // the match became ready, and here for the rooms it did not check.
  const readyMatches = db.matches.filter((m) => m.status === 'ready');
  const calls = readCallRecords(options.calls);
  const verifiedEarly = [];
  const uncheckedRooms = [];
  for (const match of readyMatches) {
    const check = calls.checks.get(String(match.id));
    if (check?.exists === true) {
      verifiedEarly.push(match.room);
    } else if (check?.exists === false) {
      problem('ready room missing on Janus', `room ${match.room} of match ${match.id}, when the match became ready`);
    } else {
      uncheckedRooms.push(match.room);
    }
  }
  const rooms = await checkRooms(janusUrl, uncheckedRooms);
  const verifiedLate = uncheckedRooms.length - rooms.missing.length - rooms.errors.length;
  const missingRooms = readyMatches.length - verifiedEarly.length - verifiedLate - rooms.errors.length;
  for (const room of rooms.missing) {
    problem('ready room missing on Janus', `room ${room}`);
  }
  for (const error of rooms.errors) {
    problem('Janus exists request failed', error);
  }

  // Match pushes at the receiver, keyed by intent, checked against the
  // match the database recorded.
  const matchPushOfIntent = new Map();
  let matchPushes = 0;
  let expiredPushes = 0;
  const pushIds = new Set(db.pushes.map((p) => String(p.id)));
  let unknownIds = 0;
  for (const [id, delivery] of received.first) {
    const data = delivery.body?.data;
    if (!pushIds.has(id)) {
      unknownIds++;
    }
    if (data?.type === 'expired') {
      expiredPushes++;
    }
    if (data?.type !== 'match') {
      continue;
    }
    matchPushes++;
    matchPushOfIntent.set(String(data.intent_id), delivery);
    const match = matchById.get(String(data.match_id));
    if (match === undefined) {
      problem('push names an unknown match', `webhook-id ${id}, match ${data.match_id}`);
    } else if (String(match.room) !== String(data.room)) {
      problem('push room differs from the match room',
        `webhook-id ${id}: push room ${data.room}, match ${match.id} room ${match.room}`);
    }
  }

  // Every matched intent got its match push, and every push the database
  // marks sent arrived.
  const matchedIntents = db.intents.filter((i) => i.status === 'matched');
  for (const intent of matchedIntents) {
    if (!matchPushOfIntent.has(String(intent.id))) {
      problem('matched intent without a delivered match push', `intent ${intent.id}, match ${intent.match_id}`);
    }
  }
  for (const push of db.pushes) {
    if (push.status === 'sent' && !received.first.has(String(push.id))) {
      problem('push marked sent but never received', `outbox ${push.id} (${push.type}, intent ${push.intent_id})`);
    }
  }

  // Anything left unfinished or failed.
  const intentCounts = countBy(db.intents, 'status');
  const matchCounts = countBy(db.matches, 'status');
  const pushCounts = countBy(db.pushes, 'status');
  if (matchCounts.pending) {
    problem('match still pending', `${matchCounts.pending} matches`);
  }
  if (matchCounts.failed) {
    problem('match failed', `${matchCounts.failed} matches; see matches.last_error`);
  }
  if (pushCounts.pending) {
    problem('push still pending', `${pushCounts.pending} pushes`);
  }
  if (pushCounts.failed) {
    problem('push failed', `${pushCounts.failed} pushes; see outbox.last_error`);
  }

  // Latencies of the match pushes: from each user's insert, and from the
  // later insert of the pair, which is when the worker could first match.
  const insertToPush = [];
  const pairToPush = [];
  for (const [intentId, delivery] of matchPushOfIntent) {
    const intent = intentById.get(intentId);
    const match = matchById.get(String(delivery.body.data.match_id));
    if (intent === undefined || match === undefined) {
      continue;
    }
    insertToPush.push(delivery.at - intent.created_ms);
    const pairedAt = Math.max(...match.intent_ids.map((id) => intentById.get(String(id))?.created_ms ?? NaN));
    if (!Number.isNaN(pairedAt)) {
      pairToPush.push(delivery.at - pairedAt);
    }
  }

  // Print the summary.
  const rateText = Number.isNaN(achievedRate) ? '-' : achievedRate.toFixed(1);
  const target = options.rate === null ? '' : ` (target ${options.rate}/s)`;
  const lines = [
    '',
    '== matchmaker demo summary ==',
    `intents   ${db.intents.length} inserted over ${spanSeconds.toFixed(1)} s: ${rateText}/s${target}`,
    `          ${formatCounts(intentCounts, ['matched', 'waiting', 'expired', 'cancelled', 'failed'])}`,
    `matches   ${db.matches.length}: ${formatCounts(matchCounts, ['ready', 'pending', 'failed'])}`,
    `rooms     ${verifiedEarly.length + verifiedLate} of ${readyMatches.length} ready matches have their room on Janus` +
      ` (${missingRooms} missing, ${rooms.errors.length} failed requests)`,
    `          ${verifiedEarly.length} checked when the match became ready, ${verifiedLate} at the end;` +
      ` ${calls.ended} calls ended (${calls.endErrors} errors), ${db.matches.filter((m) => m.closed).length}` +
      ' rooms destroyed by the worker',
    `pushes    database: ${formatCounts(pushCounts, ['sent', 'pending', 'failed'])}`,
    `          receiver: ${received.first.size} delivered (distinct webhook-id): ${matchPushes} match, ${expiredPushes} expired;` +
      ` ${received.duplicates} duplicate deliveries`,
  ];
  if (received.withoutId || received.rejected || unknownIds) {
    lines.push(`          receiver also saw ${received.withoutId} without webhook-id,` +
      ` ${received.rejected} not answered 200, ${unknownIds} with an id not in the outbox`);
  }
  lines.push(
    `latency   ms from insert to the push's arrival at the receiver`,
    `  ${''.padEnd(16)}${'count'.padStart(7)}${['p50', 'p90', 'p99', 'max'].map((h) => h.padStart(9)).join('')}`,
    latencyRow('insert to push', insertToPush),
    latencyRow('pair to push', pairToPush),
  );

  if (problems.length === 0) {
    lines.push('checks    ok: no intent lost or matched twice, every ready room is on Janus');
  } else {
    const byKind = countBy(problems, 'kind');
    lines.push(`checks    FAILED: ${problems.length} ${problems.length === 1 ? 'problem' : 'problems'}`);
    for (const [kind, count] of Object.entries(byKind)) {
      const examples = problems.filter((p) => p.kind === kind).slice(0, 3).map((p) => p.detail);
      lines.push(`  ${kind}: ${count} (e.g. ${examples.join('; ')})`);
    }
  }
  console.log(lines.join('\n'));
  return problems.length === 0 ? 0 : 1;
}

main().then(
  (status) => {
    closeConnections();
    process.exitCode = status;
  },
  (error) => {
    closeConnections();
    console.error(`demo-summary: ${error.message}`);
    process.exitCode = 2;
  },
);
