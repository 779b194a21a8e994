#!/usr/bin/env node
'use strict';

// Computes one phase's figures for bench/run from the database and the
// fake push receiver, prints them as one JSON object on stdout, and writes
// the phase's data files for gnuplot.
//
//   node bench/analyze.js throughput --name NAME --out DIR --push-base URL
//        --since-intent ID --since-match ID [--warmup S] [--shards N]
//        [--from-ms T --seconds S]
//   node bench/analyze.js latency --out DIR --push-base URL
//        --since-intent ID --since-match ID [--shards N]
//
// The phase is every intent and match with an id above the --since ids,
// and every delivery the receiver holds, because bench/run resets the
// receiver before each phase. Only the first delivery of each webhook-id
// with status 200 and a "match" payload counts as a push.
//
// throughput: the window runs from the first insert plus the warm-up to
// the last insert. With --from-ms (ms since the epoch), it starts at that
// moment plus the warm-up and lasts --seconds. This mode is for a backlog
// loaded before the worker started on it. The rates are match pushes received
// and matches made ready within the window, per second.
// NAME-per-second.dat lists, per second of the load (or from --from-ms to
// the end of the window): seconds since its start, inserts, match pushes
// received, matches made ready.
//
// latency: from each intent's created_at to the arrival of its match push
// ("insert to push"), and from the created_at of the later intent of the
// pair ("pair to push"). created_at is now() in the inserting
// transaction, which is earlier than its commit, so both are upper bounds
// of the time from commit to arrival. latency-insert.dat and
// latency-pair.dat list the sorted values in ms with their cumulative
// fraction. latency-pair-time.dat lists each pair to push latency by the
// time of its pair, with its stages, and the JSON describes the stages of
// the slowest 1%.
//
// The database and the receiver share the machine's clock, so their
// timestamps can be subtracted.

const fs = require('node:fs');
const path = require('node:path');
const { closeConnections, queryRows, requestJson } = require('../test/demo-lib.js');

// The receiver returns a part's deliveries in one response, so it gets a
// long timeout.
const DELIVERIES_TIMEOUT_MS = 300000;

function parseArgs(argv) {
  const mode = argv[2];
  if (mode !== 'throughput' && mode !== 'latency') {
    throw new Error('usage: analyze.js throughput|latency --out DIR --push-base URL --since-intent ID --since-match ID ...');
  }
  const options = { mode, name: mode, warmup: 0, shards: 8, fromMs: null, seconds: null };
  const names = {
    '--name': 'name',
    '--out': 'out',
    '--push-base': 'pushBase',
    '--since-intent': 'sinceIntent',
    '--since-match': 'sinceMatch',
    '--warmup': 'warmup',
    '--shards': 'shards',
  };
  const optional = { '--from-ms': 'fromMs', '--seconds': 'seconds' };
  for (let i = 3; i < argv.length; i += 2) {
    const key = names[argv[i]] ?? optional[argv[i]];
    if (key === undefined || argv[i + 1] === undefined) {
      throw new Error(`unknown option or missing value: "${argv[i]}"`);
    }
    options[key] = argv[i + 1];
  }
  for (const [flag, key] of Object.entries(names)) {
    if (options[key] === undefined) {
      throw new Error(`missing option ${flag}`);
    }
  }
  if ((options.fromMs === null) !== (options.seconds === null)) {
    throw new Error('--from-ms and --seconds must be given together');
  }
  const numbers = ['sinceIntent', 'sinceMatch', 'warmup', 'shards'];
  if (options.fromMs !== null) {
    numbers.push('fromMs', 'seconds');
  }
  for (const key of numbers) {
    const value = Number(options[key]);
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new Error(`invalid ${key} "${options[key]}": expected an integer >= 0`);
    }
    options[key] = value;
  }
  return options;
}

// Fetch the receiver's deliveries, one token shard at a time so that no
// response grows too large, and return the first successful delivery of
// each webhook-id with its payload fields, and counts of the rest.
async function fetchPushes(pushBase, shards) {
  const first = new Map();
  let duplicates = 0;
  let rejected = 0;
  for (let shard = 0; shard < shards; shard++) {
    const url = `${pushBase}/deliveries?to=${encodeURIComponent(`bench-${shard}-`)}`;
    const deliveries = await requestJson(url, undefined, DELIVERIES_TIMEOUT_MS);
    for (const delivery of deliveries) {
      if (delivery.status !== 200) {
        rejected++;
        continue;
      }
      const id = delivery.headers['webhook-id'];
      const data = delivery.body?.data ?? {};
      const seen = first.get(id);
      if (seen !== undefined) {
        duplicates++;
        if (seen.at <= delivery.at) {
          continue;
        }
      }
      first.set(id, {
        at: delivery.at,
        type: data.type,
        intentId: String(data.intent_id),
        matchId: String(data.match_id),
      });
    }
  }
  const matchPushes = [...first.values()].filter((push) => push.type === 'match');
  return { matchPushes, distinct: first.size, duplicates, rejected };
}

// Return the nearest-rank percentile p (0-100) of sorted values, as
// test/demo-summary.js defines it.
function percentile(sorted, p) {
  if (sorted.length === 0) {
    return null;
  }
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

function round(value, digits) {
  return value === null || Number.isNaN(value) ? null : Number(value.toFixed(digits));
}

// Return count, mean and percentiles in ms of unsorted values.
function describe(values) {
  const sorted = Float64Array.from(values).sort();
  const sum = sorted.reduce((a, b) => a + b, 0);
  return {
    sorted,
    stats: {
      count: sorted.length,
      mean: round(sorted.length ? sum / sorted.length : null, 2),
      p50: round(percentile(sorted, 50), 2),
      p90: round(percentile(sorted, 90), 2),
      p99: round(percentile(sorted, 99), 2),
      p999: round(percentile(sorted, 99.9), 2),
      max: round(percentile(sorted, 100), 2),
    },
  };
}

// Write sorted values and their cumulative fraction, one pair a line.
function writeCdf(file, sorted) {
  const lines = [];
  for (let i = 0; i < sorted.length; i++) {
    lines.push(`${sorted[i].toFixed(3)} ${((i + 1) / sorted.length).toFixed(6)}`);
  }
  fs.writeFileSync(file, `${lines.join('\n')}\n`);
}

// Return a Map from epoch second to count for a query that returns
// (second, n) rows.
async function countsPerSecond(select) {
  const rows = await queryRows(select);
  return new Map(rows.map((row) => [Number(row.second), Number(row.n)]));
}

async function analyzeThroughput(options) {
  const [span] = await queryRows(`
    SELECT count(*) AS inserts,
           (extract(epoch FROM min(created_at)) * 1000)::float8 AS first_ms,
           (extract(epoch FROM max(created_at)) * 1000)::float8 AS last_ms
    FROM matchmaker.intents WHERE id > ${options.sinceIntent}`);
  if (Number(span.inserts) < 2) {
    throw new Error(`the phase inserted ${span.inserts} intents; expected at least 2`);
  }
  const backlog = options.fromMs !== null;
  const start = backlog ? options.fromMs : span.first_ms;
  const windowStart = start + options.warmup * 1000;
  const windowEnd = backlog ? windowStart + options.seconds * 1000 : span.last_ms;
  const windowSeconds = (windowEnd - windowStart) / 1000;
  if (windowSeconds <= 0) {
    throw new Error(`the load lasted ${((span.last_ms - span.first_ms) / 1000).toFixed(1)} s, no longer than the warm-up of ${options.warmup} s`);
  }

  const pushes = await fetchPushes(options.pushBase, options.shards);
  const pushesInWindow = pushes.matchPushes.filter((p) => p.at >= windowStart && p.at <= windowEnd).length;
  const [ready] = await queryRows(`
    SELECT count(*) AS n FROM matchmaker.matches
    WHERE id > ${options.sinceMatch}
      AND ready_at BETWEEN to_timestamp(${windowStart} / 1000.0) AND to_timestamp(${windowEnd} / 1000.0)`);

  // Per-second series over the seconds of the load.
  const inserts = await countsPerSecond(`
    SELECT floor(extract(epoch FROM created_at))::bigint AS second, count(*) AS n
    FROM matchmaker.intents WHERE id > ${options.sinceIntent} GROUP BY 1`);
  const readyPerSecond = await countsPerSecond(`
    SELECT floor(extract(epoch FROM ready_at))::bigint AS second, count(*) AS n
    FROM matchmaker.matches WHERE id > ${options.sinceMatch} AND ready_at IS NOT NULL GROUP BY 1`);
  const pushesPerSecond = new Map();
  for (const push of pushes.matchPushes) {
    const second = Math.floor(push.at / 1000);
    pushesPerSecond.set(second, (pushesPerSecond.get(second) ?? 0) + 1);
  }
  const firstSecond = Math.floor(start / 1000);
  const lastSecond = Math.floor((backlog ? windowEnd : span.last_ms) / 1000);
  const lines = ['# seconds_since_start inserts match_pushes_received matches_ready'];
  for (let second = firstSecond; second <= lastSecond; second++) {
    lines.push([
      second - firstSecond,
      inserts.get(second) ?? 0,
      pushesPerSecond.get(second) ?? 0,
      readyPerSecond.get(second) ?? 0,
    ].join(' '));
  }
  fs.writeFileSync(path.join(options.out, `${options.name}-per-second.dat`), `${lines.join('\n')}\n`);

  const loadSeconds = (span.last_ms - span.first_ms) / 1000;
  return {
    inserts: Number(span.inserts),
    loadSeconds: backlog ? null : round(loadSeconds, 3),
    insertRate: backlog ? null : round((Number(span.inserts) - 1) / loadSeconds, 1),
    warmupSeconds: options.warmup,
    windowSeconds: round(windowSeconds, 3),
    matchPushesInWindow: pushesInWindow,
    matchPushRate: round(pushesInWindow / windowSeconds, 1),
    matchesReadyInWindow: Number(ready.n),
    matchReadyRate: round(Number(ready.n) / windowSeconds, 1),
    receiver: {
      distinctDeliveries: pushes.distinct,
      duplicates: pushes.duplicates,
      rejected: pushes.rejected,
    },
  };
}

// Split a pair's time from its later intent's created_at to the push's
// arrival into stages: until the matching transaction began (the match's
// created_at), until the transaction that recorded the room began
// (ready_at), and until the push arrived. Each timestamp is now() of its
// transaction, so a stage also contains the commit of the transaction
// before it. The room stage contains the match's commit, the room
// request and the wait for the loop to record it, and the push stage
// contains the room's commit.
function stagesOf(pairedAt, match, arrivedAt) {
  return {
    toMatch: match.created_ms - pairedAt,
    toRoom: match.ready_ms - match.created_ms,
    toArrival: arrivedAt - match.ready_ms,
  };
}

// Write one line a match push in the order of the pairs' times: seconds
// since the first insert, then the pair to push latency and its three
// stages in ms.
function writePairTimes(file, pairs, firstInsert) {
  const lines = [...pairs].sort((a, b) => a.pairedAt - b.pairedAt).map((p) =>
    [(p.pairedAt - firstInsert) / 1000, p.total, p.toMatch, p.toRoom, p.toArrival]
      .map((value) => value.toFixed(3)).join(' '));
  fs.writeFileSync(file, `${lines.join('\n')}\n`);
}

// Describe the slowest 1% of pair to push latencies: the median of each
// stage among them, and the seconds of the phase in which their pairs
// were made, so that a single stall can be distinguished from a slow
// stage.
function slowestPairs(pairs, firstInsert) {
  if (pairs.length === 0) {
    return null;
  }
  const slowest = [...pairs].sort((a, b) => b.total - a.total)
    .slice(0, Math.max(1, Math.floor(pairs.length / 100)));
  const median = (key) => round(percentile(Float64Array.from(slowest.map((p) => p[key])).sort(), 50), 2);
  const seconds = slowest.map((p) => Math.floor((p.pairedAt - firstInsert) / 1000));
  return {
    count: slowest.length,
    medianMs: { total: median('total'), toMatch: median('toMatch'), toRoom: median('toRoom'),
      toArrival: median('toArrival') },
    // Distinct seconds since the first insert, in order.
    seconds: [...new Set(seconds)].sort((a, b) => a - b),
  };
}

async function analyzeLatency(options) {
  const intents = await queryRows(`
    SELECT id, status, (extract(epoch FROM created_at) * 1000)::float8 AS created_ms
    FROM matchmaker.intents WHERE id > ${options.sinceIntent}`);
  const matches = await queryRows(`
    SELECT id, intent_ids, (extract(epoch FROM created_at) * 1000)::float8 AS created_ms,
           (extract(epoch FROM ready_at) * 1000)::float8 AS ready_ms
    FROM matchmaker.matches WHERE id > ${options.sinceMatch}`);
  const pushes = await fetchPushes(options.pushBase, options.shards);

  const createdById = new Map(intents.map((i) => [String(i.id), i.created_ms]));
  const matchById = new Map(matches.map((m) => [String(m.id), m]));
  const insertToPush = [];
  const pairToPush = [];
  const pairs = [];
  const pushedIntents = new Set();
  for (const push of pushes.matchPushes) {
    const created = createdById.get(push.intentId);
    const match = matchById.get(push.matchId);
    if (created === undefined || match === undefined) {
      continue;
    }
    pushedIntents.add(push.intentId);
    insertToPush.push(push.at - created);
    const pairedAt = Math.max(...match.intent_ids.map((id) => createdById.get(String(id)) ?? NaN));
    if (!Number.isNaN(pairedAt)) {
      pairToPush.push(push.at - pairedAt);
      // A match push comes only after its room was recorded, so ready_at
      // is set; a row without it would make the stages meaningless.
      if (match.ready_ms !== null && match.created_ms !== null) {
        pairs.push({ pairedAt, total: push.at - pairedAt, ...stagesOf(pairedAt, match, push.at) });
      }
    }
  }

  const matched = intents.filter((i) => i.status === 'matched');
  const unpushed = matched.filter((i) => !pushedIntents.has(String(i.id))).length;
  const insert = describe(insertToPush);
  const pair = describe(pairToPush);
  writeCdf(path.join(options.out, 'latency-insert.dat'), insert.sorted);
  writeCdf(path.join(options.out, 'latency-pair.dat'), pair.sorted);

  let firstInsert = Infinity;
  let lastInsert = -Infinity;
  for (const intent of intents) {
    firstInsert = Math.min(firstInsert, intent.created_ms);
    lastInsert = Math.max(lastInsert, intent.created_ms);
  }
  writePairTimes(path.join(options.out, 'latency-pair-time.dat'), pairs, firstInsert);
  const spanSeconds = intents.length > 1 ? (lastInsert - firstInsert) / 1000 : 0;
  return {
    inserts: intents.length,
    insertRate: round(spanSeconds > 0 ? (intents.length - 1) / spanSeconds : null, 1),
    matchedIntents: matched.length,
    matchedWithoutPush: unpushed,
    insertToPushMs: insert.stats,
    pairToPushMs: pair.stats,
    slowestPairs: slowestPairs(pairs, firstInsert),
    receiver: {
      distinctDeliveries: pushes.distinct,
      duplicates: pushes.duplicates,
      rejected: pushes.rejected,
    },
  };
}

async function main() {
  const options = parseArgs(process.argv);
  const result = options.mode === 'throughput'
    ? await analyzeThroughput(options)
    : await analyzeLatency(options);
  console.log(JSON.stringify(result, null, 2));
}

main().then(
  () => closeConnections(),
  (error) => {
    closeConnections();
    console.error(`analyze: ${error.message}`);
    process.exitCode = 2;
  },
);
