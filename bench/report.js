#!/usr/bin/env node
'use strict';

// Combines the phase files that bench/run wrote into one results
// directory: prints the table of figures, and writes results.json (every
// figure with its goal and the raw phase data) and summary.txt (the table
// and the conditions of the run).
//
//   node bench/report.js DIR
//
// Exit status: 0 when the report was written, whether or not the goals
// were met; 2 when a phase file is missing or unreadable.

const fs = require('node:fs');
const path = require('node:path');

function readJson(dir, name) {
  const file = path.join(dir, name);
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (error) {
    throw new Error(`cannot read ${file}: ${error.message}`);
  }
}

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

function fixed(value, digits) {
  return value === null || value === undefined || Number.isNaN(value) ? '-' : value.toFixed(digits);
}

function megabytes(kb) {
  return kb / 1024;
}

function signed(value, digits) {
  return `${value >= 0 ? '+' : ''}${value.toFixed(digits)}`;
}

function mean(values) {
  return values.reduce((sum, value) => sum + value, 0) / values.length;
}

// The CPU groups of bench/cpu-sample.js, in the order the summary lists them.
const CPU_GROUPS = ['sessions', 'pgbench', 'worker', 'senders', 'fakes', 'autovacuum', 'otherServer'];

// Return the microseconds of CPU per insert of each group and of the
// whole machine, from CPU samples (percent of one core) of loads that
// ran at the given insert rates.
function cpuPerInsert(samples, rates) {
  // A run with no inserts has no cost per insert.
  const perInsert = (pct, rate) => (rate > 0 ? (pct * 1e4) / rate : NaN);
  const groupsUs = {};
  for (const group of CPU_GROUPS) {
    groupsUs[group] = mean(samples.map((sample, i) => perInsert(sample.groupsPct[group], rates[i])));
  }
  return {
    groupsUs,
    machineUs: mean(samples.map((sample, i) => perInsert(sample.machineBusyPct, rates[i]))),
    machineBusyPct: mean(samples.map((sample) => sample.machineBusyPct)),
    stealPct: mean(samples.map((sample) => sample.stealPct)),
  };
}

// Combine R1's runs: two into each table (bare, intents, intents, bare)
// and one while the worker serves another database. Each rate is the
// mean of its runs, which last the same time.
function readR1(dir, cores) {
  const rates = readJson(dir, 'r1-rates.json');
  const cpu = {
    bare: cpuPerInsert([readJson(dir, 'r1-bare-1-cpu.json'), readJson(dir, 'r1-bare-2-cpu.json')],
      rates.bareRates),
    intents: cpuPerInsert([readJson(dir, 'r1-intents-1-cpu.json'), readJson(dir, 'r1-intents-2-cpu.json')],
      rates.intentRates),
    idle: cpuPerInsert([readJson(dir, 'r1-idle-cpu.json')], [rates.idleIntentRate]),
  };
  const bareRate = mean(rates.bareRates);
  // The rate at which the machine's cores would all be busy, at the CPU
  // per intent that the runs into matchmaker.intents used.
  const cpuBoundRate = (cores * 1e6) / cpu.intents.machineUs;
  return {
    ...rates,
    bareRate,
    intentRate: mean(rates.intentRates),
    cpu,
    cpuBoundRate,
    cpuBoundRatio: cpuBoundRate / bareRate,
    // The CPU per intent, everything included, at which the cores would
    // allow an R1 of 0.9.
    cpuBudgetUsForGoal: (cores * 1e6) / (0.9 * bareRate),
  };
}

// Return an insert rate over the bare table's rate, with both rates.
function insertRatio(intentRate, bareRate) {
  return { value: intentRate / bareRate, intentRate, bareRate };
}

// Compute every figure, its goal and whether the run met it.
function computeFigures(phases) {
  const { r1, r2, r2Backlog, r2Inserts, latency, slow, memory } = phases;
  const pair = latency.pairToPushMs;
  const insert = latency.insertToPushMs;
  const anonGrowthMb = megabytes(memory.rssAnonAfterKb - memory.rssAnonBeforeKb);
  const senderAnonGrowthMb = megabytes(memory.senderRssAnonAfterKb - memory.senderRssAnonBeforeKb);
  const rssGrowthMb = megabytes(memory.rssAfterKb - memory.rssBeforeKb);
  const shmemGrowthMb = megabytes(memory.rssShmemAfterKb - memory.rssShmemBeforeKb);
  return {
    insertCost: { ...insertRatio(r1.intentRate, r1.bareRate), goal: '>= 0.9',
      met: r1.intentRate / r1.bareRate >= 0.9 },
    insertPathCost: { ...insertRatio(r1.idleIntentRate, r1.bareRate), goal: null, met: null },
    throughput: {
      value: r2.matchPushRate / r1.bareRate,
      goal: '>= 0.5',
      // A backlog that ran out before the window closed did not keep the
      // worker busy for all of it.
      met: r2.matchPushRate / r1.bareRate >= 0.5 && r2Backlog.waitingAfterWindow > 0,
      matchPushRate: r2.matchPushRate,
      bareRate: r1.bareRate,
      backlog: r2Backlog.intents,
      waitingAfterWindow: r2Backlog.waitingAfterWindow,
    },
    throughputWithInserts: {
      value: r2Inserts.matchPushRate / r1.bareRate,
      goal: null,
      met: null,
      matchPushRate: r2Inserts.matchPushRate,
      insertRate: r2Inserts.insertRate,
      bareRate: r1.bareRate,
    },
    latencyPairToPush: {
      ...pair,
      goal: 'p99 <= 10 ms',
      met: pair.p99 !== null && pair.p99 <= 10,
    },
    latencyInsertToPush: { ...insert, goal: null, met: null },
    slowProviders: {
      value: slow.matchReadyRate,
      goal: '>= 1000 matches/s',
      met: slow.matchReadyRate >= 1000,
      matchPushRate: slow.matchPushRate,
      insertRate: slow.insertRate,
    },
    workerMemory: {
      value: anonGrowthMb,
      goal: 'RssAnon growth <= 10 MB',
      met: anonGrowthMb <= 10 && senderAnonGrowthMb <= 10,
      senderRssAnonGrowthMb: senderAnonGrowthMb,
      rssGrowthMb,
      rssShmemGrowthMb: shmemGrowthMb,
      intents: memory.intents,
    },
  };
}

// The phases each figure is computed from.
const FIGURE_PHASES = {
  insertCost: ['r1'],
  insertPathCost: ['r1'],
  throughput: ['r1', 'r2'],
  throughputWithInserts: ['r1', 'r2-inserts'],
  latencyPairToPush: ['latency'],
  latencyInsertToPush: ['latency'],
  slowProviders: ['slow'],
  workerMemory: ['memory'],
};

// Mark each figure whose phases saw the worker restart, because such a
// figure mixes two worker processes.
function markRestarts(figures, restarts) {
  for (const [name, phases] of Object.entries(FIGURE_PHASES)) {
    const hit = phases.filter((phase) => restarts.includes(phase));
    figures[name].workerRestartedIn = hit;
    if (hit.length > 0) {
      figures[name].met = false;
    }
  }
}

function verdict(figure) {
  if (figure.workerRestartedIn.length > 0) {
    return 'INVALID: worker restarted';
  }
  if (figure.waitingAfterWindow === 0) {
    return 'INVALID: backlog ran out';
  }
  if (figure.met === null) {
    return '';
  }
  return figure.met ? 'met' : 'MISSED';
}

// Return the table's rows: figure, measured value, goal, verdict.
function tableRows(figures, run) {
  const f = figures;
  return [
    ['R1 insert cost', `${fixed(f.insertCost.value, 2)}  (${integer.format(f.insertCost.intentRate)}` +
      ` vs ${integer.format(f.insertCost.bareRate)} bare inserts/s)`, f.insertCost.goal, verdict(f.insertCost)],
    ['R1 without the worker', `${fixed(f.insertPathCost.value, 2)}  (${integer.format(f.insertPathCost.intentRate)}` +
      ` vs ${integer.format(f.insertPathCost.bareRate)} bare inserts/s)`, '-', verdict(f.insertPathCost)],
    ['R2 throughput', `${fixed(f.throughput.value, 2)}  (${integer.format(f.throughput.matchPushRate)}` +
      ` intents matched and pushed/s)`, f.throughput.goal, verdict(f.throughput)],
    ['R2 with concurrent inserts', `${fixed(f.throughputWithInserts.value, 2)}` +
      `  (${integer.format(f.throughputWithInserts.matchPushRate)} matched and pushed/s,` +
      ` ${integer.format(f.throughputWithInserts.insertRate)} inserts/s)`, '-', verdict(f.throughputWithInserts)],
    [`latency at ${run.latencyRate}/s, pair to push`,
      `p50 ${fixed(f.latencyPairToPush.p50, 1)}  p99 ${fixed(f.latencyPairToPush.p99, 1)}` +
      `  max ${fixed(f.latencyPairToPush.max, 1)} ms`, f.latencyPairToPush.goal, verdict(f.latencyPairToPush)],
    [`latency at ${run.latencyRate}/s, insert to push`,
      `p50 ${fixed(f.latencyInsertToPush.p50, 1)}  p99 ${fixed(f.latencyInsertToPush.p99, 1)}` +
      `  max ${fixed(f.latencyInsertToPush.max, 1)} ms`, '-', verdict(f.latencyInsertToPush)],
    ['slow providers', `${integer.format(f.slowProviders.value)} matches/s` +
      ` (max_inflight ${run.slowMaxInflight})`, f.slowProviders.goal, verdict(f.slowProviders)],
    ['worker memory growth', `RssAnon ${signed(f.workerMemory.value, 1)} MB, RSS` +
      ` ${signed(f.workerMemory.rssGrowthMb, 1)} MB after ${integer.format(f.workerMemory.intents)} intents;` +
      ` sender RssAnon ${signed(f.workerMemory.senderRssAnonGrowthMb, 1)} MB`,
    f.workerMemory.goal, verdict(f.workerMemory)],
  ];
}

function formatTable(rows) {
  const header = ['figure', 'measured', 'goal', ''];
  const all = [header, ...rows];
  const widths = header.map((_, column) => Math.max(...all.map((row) => row[column].length)));
  const line = (row) => row.map((cell, column) => cell.padEnd(widths[column])).join('   ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('   '), ...rows.map(line)].join('\n');
}

// Format {status: count} as "status count, ..." in descending count.
function formatCounts(counts) {
  if (counts === null || counts === undefined) {
    return 'none';
  }
  return Object.entries(counts)
    .sort((a, b) => b[1] - a[1])
    .map(([status, count]) => `${status} ${count}`)
    .join(', ');
}

// One line per phase with its rows counted by status after it settled.
// Intents cancelled by bench/run were still waiting when the phase ended.
function outcomeLines(outcomes) {
  return Object.entries(outcomes).map(([name, outcome]) =>
    `  ${name.padEnd(10)} intents: ${formatCounts(outcome.intents)}; matches: ${formatCounts(outcome.matches)};` +
    ` pushes: ${formatCounts(outcome.pushes)}`);
}

// Lines on the matching passes that bench/run cancelled after they ran
// for too long with no intent waiting. They happen between phases, so
// they affect no figure, but they are the worker's behaviour.
function stallLines(stalls) {
  if (stalls.length === 0) {
    return ['stalls   none: no matching pass ran long with no intent waiting'];
  }
  return [
    'stalls   matching passes cancelled after the waiting intents of a phase were cancelled:',
    ...stalls.map((stall) => `  ${stall.phase.padEnd(8)} one pass ran ${stall.seconds} s before bench/run cancelled it`),
  ];
}

const R1_CPU_LABELS = {
  bare: 'bench.bare',
  intents: 'matchmaker.intents',
  idle: 'worker elsewhere',
};

// Format "group value<unit>, ..." for the groups whose value rounds to 1
// or more.
function formatGroups(values, unit) {
  return CPU_GROUPS.filter((group) => values[group] >= 0.5)
    .map((group) => `${group} ${integer.format(values[group])}${unit}`)
    .join(', ');
}

// Format CPU per insert as "group us, ..." for the groups that used any,
// then the whole machine.
function formatCpu(cpu) {
  return `${formatGroups(cpu.groupsUs, '')} us; machine ${integer.format(cpu.machineUs)} us` +
    ` (${integer.format(cpu.machineBusyPct)}% of one core busy, ${integer.format(cpu.stealPct)}% stolen)`;
}

// Format a sorted list of whole seconds as ranges: "3, 7-9, 12".
function formatRanges(seconds) {
  const ranges = [];
  for (const second of seconds) {
    const last = ranges[ranges.length - 1];
    if (last !== undefined && second === last[1] + 1) {
      last[1] = second;
    } else {
      ranges.push([second, second]);
    }
  }
  return ranges.map(([from, to]) => (from === to ? `${from}` : `${from}-${to}`)).join(', ');
}

// Lines on the slowest 1% of pair to push latencies: where their time
// went, and when in the phase their pairs were made.
function slowestPairLines(slowest) {
  if (slowest === null || slowest === undefined) {
    return [];
  }
  const m = slowest.medianMs;
  return [
    `         the slowest 1% (${slowest.count} pushes): median ${fixed(m.total, 1)} ms; medians by stage` +
      ` (they need not add up): ${fixed(m.toMatch, 1)} until the match, ${fixed(m.toRoom, 1)} until the` +
      ` room was recorded, ${fixed(m.toArrival, 1)} until the push arrived`,
    `         their pairs were made in these seconds of the phase: ${formatRanges(slowest.seconds)}`,
  ];
}

// Format a phase's CPU sample: each group that used any, in percent of
// one core, then the busy and stolen time of the machine. With a rate of
// intents pushed, it adds the worker's and senders' CPU per intent.
function formatPhaseCpu(cpu, pushRate = null) {
  let line = `         CPU in % of one core: ${formatGroups(cpu.groupsPct, '%')}; machine busy` +
    ` ${integer.format(cpu.machineBusyPct)}%, stolen ${integer.format(cpu.stealPct)}%`;
  if (pushRate > 0) {
    const workerUs = ((cpu.groupsPct.worker + cpu.groupsPct.senders) * 1e4) / pushRate;
    line += `; worker and senders ${integer.format(workerUs)} us per intent pushed`;
  }
  return line;
}

// The conditions and side figures that the table leaves out.
function contextLines(run, fakes, phases) {
  const { r1, r2, r2Backlog, r2Inserts, latency, latencyLoad, slow, memory, cpu } = phases;
  const lines = [
    `run      ${run.started}${run.quick === 'yes' ? ', QUICK (short phases, for a smoke check only)' : ''}`,
    `code     ${run.commit}${run.uncommittedChanges === 'yes' ? ' with uncommitted changes in src/ or sql/' : ''}`,
    `machine  ${run.cpu}, ${run.cores} cores, ${run.memoryGiB} GiB; PostgreSQL ${run.postgres}` +
      ` (fsync ${run.fsync}), Node ${run.node}`,
    `load     pgbench -M prepared, ${run.clients} clients, ${run.threads} threads, ${run.moods} moods;` +
      ` worker max_inflight ${run.maxInflight}, senders ${run.senders}, batch_size ${run.batchSize}, poll_interval ${run.pollInterval}`,
    `fakes    alone, 64 connections: push receiver ${integer.format(fakes.push.requestsPerSecond)} requests/s,` +
      ` room service ${integer.format(fakes.rooms.requestsPerSecond)} requests/s`,
    `R1       unthrottled, ${run.r1Seconds} s per run, in the order bare, intents, intents, bare:` +
      ` bare ${r1.bareRates.map((rate) => integer.format(rate)).join(' and ')}/s,` +
      ` intents ${r1.intentRates.map((rate) => integer.format(rate)).join(' and ')}/s`,
    ...['bare', 'intents', 'idle'].map((name) => `         CPU per insert, ${R1_CPU_LABELS[name]}: ` +
      `${formatCpu(r1.cpu[name])}`),
    `         at ${integer.format(r1.cpu.intents.machineUs)} us of CPU per intent, ${run.cores} cores allow` +
      ` ${integer.format(r1.cpuBoundRate)} intents/s, an R1 of ${fixed(r1.cpuBoundRatio, 2)};` +
      ` an R1 of 0.9 needs ${integer.format(r1.cpuBudgetUsForGoal)} us or less`,
    `R2       backlog of ${integer.format(r2Backlog.intents)} waiting intents; window ${r2.windowSeconds} s after` +
      ` ${r2.warmupSeconds} s warm-up: ${r2.matchPushesInWindow} match pushes received,` +
      ` ${r2.matchReadyRate} matches ready/s; ${integer.format(r2Backlog.waitingAfterWindow)} still waiting after it`,
    formatPhaseCpu(cpu.r2, r2.matchPushRate),
    `         with inserts: ${run.r2Seconds} s unthrottled, ${r2Inserts.insertRate} inserts/s; window` +
      ` ${r2Inserts.windowSeconds} s after ${r2Inserts.warmupSeconds} s warm-up:` +
      ` ${r2Inserts.matchPushesInWindow} match pushes received, ${r2Inserts.matchReadyRate} matches ready/s`,
    formatPhaseCpu(cpu.r2Inserts, r2Inserts.matchPushRate),
    `latency  ${run.latencySeconds} s at -R ${run.latencyRate}: ${latencyLoad.pgbenchRate} inserts/s,` +
      ` schedule lag avg ${latencyLoad.scheduleLagAvgMs} ms (max ${latencyLoad.scheduleLagMaxMs});` +
      ` ${latency.pairToPushMs.count} pushes, ${latency.matchedWithoutPush} matched intents without a push;` +
      ` pair to push p90 ${latency.pairToPushMs.p90}, p99.9 ${latency.pairToPushMs.p999} ms`,
    '         from created_at, which is before the commit, to arrival at the receiver (same clock)',
    `         the inserts' own latency: p50 ${fixed(latencyLoad.insertP50Ms, 1)}, p99 ${fixed(latencyLoad.insertP99Ms, 1)},` +
      ` max ${fixed(latencyLoad.insertMaxMs, 1)} ms; the server flushed the WAL ${integer.format(latencyLoad.walSyncs)} times` +
      ` in the ${run.latencySeconds} s, ${fixed(latencyLoad.walSyncMs / latencyLoad.walSyncs, 2)} ms each on average`,
    ...slowestPairLines(latency.slowestPairs),
    formatPhaseCpu(cpu.latency),
    `slow     ${run.slowSeconds} s unthrottled, rooms ${run.roomDelayMs} ms, pushes ${run.pushDelayMs} ms,` +
      ` max_inflight ${run.slowMaxInflight}: ${slow.insertRate} inserts/s, ${slow.matchReadyRate} matches ready/s,` +
      ` ${slow.matchPushRate} match pushes/s over ${slow.windowSeconds} s after ${slow.warmupSeconds} s warm-up`,
    `memory   ${memory.intents} intents at ${memory.rate}/s in ${memory.seconds} s; worker` +
      ` RSS ${fixed(megabytes(memory.rssBeforeKb), 1)} -> ${fixed(megabytes(memory.rssAfterKb), 1)} MB,` +
      ` RssAnon ${fixed(megabytes(memory.rssAnonBeforeKb), 1)} -> ${fixed(megabytes(memory.rssAnonAfterKb), 1)} MB,` +
      ` RssShmem ${fixed(megabytes(memory.rssShmemBeforeKb), 1)} -> ${fixed(megabytes(memory.rssShmemAfterKb), 1)} MB`,
  ];
  const receivers = [['R2', r2], ['R2 with inserts', r2Inserts], ['latency', latency], ['slow', slow]]
    .filter(([, phase]) => phase.receiver.duplicates || phase.receiver.rejected)
    .map(([name, phase]) => `${name}: ${phase.receiver.duplicates} duplicate, ${phase.receiver.rejected} rejected`);
  if (receivers.length > 0) {
    lines.push(`receiver ${receivers.join('; ')}`);
  }
  return lines;
}

function main() {
  const dir = process.argv[2];
  if (dir === undefined) {
    throw new Error('usage: report.js DIR');
  }
  const run = readJson(dir, 'run.json');
  const fakes = {
    push: readJson(dir, 'ceiling-push.json'),
    rooms: readJson(dir, 'ceiling-rooms.json'),
  };
  const phases = {
    r1: readR1(dir, run.cores),
    r2: readJson(dir, 'r2.json'),
    r2Backlog: readJson(dir, 'r2-backlog.json'),
    r2Inserts: readJson(dir, 'r2-inserts.json'),
    latency: readJson(dir, 'latency.json'),
    latencyLoad: readJson(dir, 'latency-load.json'),
    slow: readJson(dir, 'slow.json'),
    memory: readJson(dir, 'memory.json'),
    cpu: {
      r2: readJson(dir, 'r2-cpu.json'),
      r2Inserts: readJson(dir, 'r2-inserts-cpu.json'),
      latency: readJson(dir, 'latency-cpu.json'),
    },
  };
  const outcomes = {};
  for (const name of ['r1', 'r2', 'r2-inserts', 'latency', 'slow', 'memory']) {
    outcomes[name] = readJson(dir, `${name}-outcome.json`);
  }
  const restartsFile = path.join(dir, 'restarts.txt');
  const restarts = fs.existsSync(restartsFile)
    ? fs.readFileSync(restartsFile, 'utf8').split('\n').filter((line) => line !== '')
    : [];
  const stallsFile = path.join(dir, 'stalls.txt');
  const stalls = fs.existsSync(stallsFile)
    ? fs.readFileSync(stallsFile, 'utf8').split('\n').filter((line) => line !== '').map((line) => {
      const [phase, seconds] = line.split(' ');
      return { phase, seconds: Number(seconds) };
    })
    : [];
  const figures = computeFigures(phases);
  markRestarts(figures, restarts);
  const table = formatTable(tableRows(figures, run));
  const summary = [
    'matchmaker benchmark',
    '',
    table,
    '',
    ...contextLines(run, fakes, phases),
    'outcome  rows of each phase by status, after it settled (cancelled: still waiting at its end)',
    ...outcomeLines(outcomes),
    `restarts ${restarts.length === 0 ? 'none: one worker process served every phase' : `the worker restarted during: ${restarts.join(', ')}; see server.log`}`,
    ...stallLines(stalls),
    '',
  ].join('\n');

  fs.writeFileSync(path.join(dir, 'results.json'),
    `${JSON.stringify({ run, fakes, figures, phases, outcomes, restarts, stalls }, null, 2)}\n`);
  fs.writeFileSync(path.join(dir, 'summary.txt'), summary);
  console.log(`\n${summary}`);
}

try {
  main();
} catch (error) {
  console.error(`report: ${error.message}`);
  process.exitCode = 2;
}
