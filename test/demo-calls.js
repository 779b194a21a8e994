#!/usr/bin/env node
'use strict';

// Plays the apps' side of each call while test/demo runs. As soon as a
// match is ready, it checks on Janus that the match's room exists. Once the
// simulated call is over, it ends the match with matchmaker.end_match(), as
// an app would when its users hang up, and the worker destroys the room.
//
//   node test/demo-calls.js --record FILE [--call-seconds S]
//
// Janus 1.1.2 (Debian 12) runs one thread per AudioBridge room. Measured
// on a 2-core machine: 1,000 idle private rooms meant 1,013 Janus threads
// using 76% of one core, so rooms must be destroyed soon after their call.
// With S = 0 no call ends, and rooms stay until matchmaker.room_lifetime.
//
// Each check and end is appended to FILE as one JSON line, which
// test/demo-summary.js reads:
//   {"match": 7, "room": "123", "exists": true, "checkedAt": <ms>}
//   {"match": 7, "room": "123", "error": "<why the check failed>"}
//   {"match": 7, "room": "123", "ended": true}
//   {"match": 7, "room": "123", "endError": "<why it failed>"}
// Every 5 s it prints a status line on stdout. On SIGTERM or SIGINT it
// stops polling, finishes the checks in flight and exits.

const fs = require('node:fs');
const {
  JANUS_CONCURRENCY,
  JanusClient,
  closeConnections,
  forEachBounded,
  queryJson,
  queryRows,
  requireEnv,
} = require('./demo-lib.js');

const POLL_INTERVAL_MS = 200;
const STATUS_INTERVAL_MS = 5000;

function parseArgs(argv) {
  const options = { record: null, callSeconds: 5 };
  for (let i = 2; i < argv.length; i++) {
    if (argv[i] === '--record' && i + 1 < argv.length) {
      options.record = argv[++i];
    } else if (argv[i] === '--call-seconds' && i + 1 < argv.length) {
      options.callSeconds = Number(argv[++i]);
    } else {
      throw new Error(`unknown argument "${argv[i]}"; usage: demo-calls.js --record FILE [--call-seconds S]`);
    }
  }
  if (options.record === null) {
    throw new Error('--record FILE is missing');
  }
  if (!Number.isFinite(options.callSeconds) || options.callSeconds < 0) {
    throw new Error(`invalid --call-seconds "${options.callSeconds}": expected a number >= 0`);
  }
  return options;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const options = parseArgs(process.argv);
  const janus = await JanusClient.connect(requireEnv('MM_JANUS_URL'));
  const counts = { verified: 0, missing: 0, errors: 0, ended: 0, endErrors: 0 };
  const seen = new Set();
  const callTimers = new Set();
  const endingCalls = new Set();
  let stopping = false;

  const record = (entry) => fs.appendFileSync(options.record, `${JSON.stringify(entry)}\n`);

  // End calls in batches: one psql run ends every call that is over.
  let toEnd = [];
  const endCalls = async () => {
    const batch = toEnd;
    toEnd = [];
    if (batch.length === 0) {
      return;
    }
    const ids = batch.map((match) => Number(match.id)).join(',');
    try {
      await queryJson(`SELECT to_json(count(*)) FROM unnest('{${ids}}'::bigint[]) AS id
                       WHERE matchmaker.end_match(id)`);
      for (const match of batch) {
        counts.ended++;
        record({ match: match.id, room: match.room, ended: true });
      }
    } catch (error) {
      for (const match of batch) {
        counts.endErrors++;
        record({ match: match.id, room: match.room, endError: error.message });
      }
    }
  };
  const endTimer = setInterval(() => {
    const ending = endCalls();
    endingCalls.add(ending);
    ending.finally(() => endingCalls.delete(ending));
  }, 500);
  const endCall = (match) => {
    toEnd.push(match);
  };

  const checkRoom = async (match) => {
    let exists;
    try {
      exists = await janus.roomExists(match.room);
    } catch (error) {
      counts.errors++;
      record({ match: match.id, room: match.room, error: error.message });
      return;
    }
    record({ match: match.id, room: match.room, exists, checkedAt: Date.now() });
    if (!exists) {
      counts.missing++;
      return;
    }
    counts.verified++;
    if (options.callSeconds > 0) {
      const timer = setTimeout(() => {
        callTimers.delete(timer);
        endCall(match);
      }, options.callSeconds * 1000);
      callTimers.add(timer);
    }
  };

  const stop = () => {
    stopping = true;
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  const printStatus = () => {
    const problems = counts.missing + counts.errors + counts.endErrors;
    console.log(`rooms ${counts.verified} on Janus, ${counts.ended} calls ended` +
      (problems > 0 ? `, ${counts.missing} missing, ${counts.errors} check errors,` +
        ` ${counts.endErrors} end errors` : ''));
  };
  const statusTimer = setInterval(printStatus, STATUS_INTERVAL_MS);

  // Poll for matches that became ready. Match ids grow, so every match
  // below the oldest pending one is settled. That id is the watermark
  // "low", and the ready matches at or above it are filtered through "seen".
  // NOTE: a match that commits after a match with a higher id is missed
  // when the watermark has already passed it. Its room is then neither
  // checked nor destroyed here, and the summary checks it at the end.
  let low = 1;
  while (!stopping) {
    const [state] = await queryRows(`
      SELECT (SELECT coalesce(json_agg(json_build_object(
                  'id', id, 'room', room, 'secret', plan->>'secret')), '[]')
              FROM matchmaker.matches
              WHERE id >= ${low} AND status = 'ready') AS ready,
             (SELECT min(id) FROM matchmaker.matches WHERE status = 'pending') AS pending_min,
             (SELECT max(id) FROM matchmaker.matches) AS max_id`);
    const fresh = state.ready.filter((match) => !seen.has(match.id));
    for (const match of fresh) {
      seen.add(match.id);
    }
    low = state.pending_min ?? (state.max_id ?? 0) + 1;

    await forEachBounded(fresh, JANUS_CONCURRENCY, checkRoom);
    await janus.keepAlive();
    if (fresh.length === 0) {
      await sleep(POLL_INTERVAL_MS);
    }
  }

  for (const timer of callTimers) {
    clearTimeout(timer);
  }
  clearInterval(endTimer);
  await Promise.all(endingCalls);
  clearInterval(statusTimer);
  printStatus();
  await janus.close();
  closeConnections();
}

main().catch((error) => {
  console.error(`demo-calls: ${error.message}`);
  closeConnections();
  process.exitCode = 2;
});
