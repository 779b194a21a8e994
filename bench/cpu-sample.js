#!/usr/bin/env node
'use strict';

// Measures the CPU time that each group of processes uses while a load
// runs, and prints it as one JSON object on stdout.
//
//   node bench/cpu-sample.js --delay S --seconds S [--clock-ticks N]
//
// It waits --delay seconds (so that pgbench has connected), reads the CPU
// time of every process from /proc/<pid>/stat, waits --seconds, reads it
// again, and prints each group's use in percent of one core over that
// interval, and the busy time of all cores together from /proc/stat, in
// the same unit (200 is two cores fully busy). Processes that start or
// end within the interval are missed, so "machineBusyPct" can be larger
// than the sum of the groups. "stealPct" is the time the hypervisor ran
// something else while this machine's processes were ready to run.
//
// --clock-ticks is the kernel's USER_HZ (`getconf CLK_TCK`), the unit of
// the times in /proc; Linux on x86_64 uses 100.

const fs = require('node:fs');

function parseArgs(argv) {
  const options = { delay: null, seconds: null, clockTicks: 100 };
  const names = { '--delay': 'delay', '--seconds': 'seconds', '--clock-ticks': 'clockTicks' };
  for (let i = 2; i < argv.length; i += 2) {
    const name = names[argv[i]];
    if (name === undefined || argv[i + 1] === undefined) {
      throw new Error(`invalid argument "${argv[i]}": expected --delay S --seconds S [--clock-ticks N]`);
    }
    const value = Number(argv[i + 1]);
    if (!Number.isFinite(value) || value < 0) {
      throw new Error(`invalid value "${argv[i + 1]}" for ${argv[i]}: expected a number of 0 or more`);
    }
    options[name] = value;
  }
  if (options.delay === null || options.seconds === null || options.seconds <= 0) {
    throw new Error('missing --delay or --seconds: expected --delay S --seconds S, with S above 0 for --seconds');
  }
  return options;
}

// Map a process's command line to its group, or return null for
// processes that have nothing to do with the benchmark.
function groupOf(cmdline) {
  if (cmdline.startsWith('postgres: ')) {
    const title = cmdline.slice('postgres: '.length);
    if (title.startsWith('matchmaker worker')) {
      return 'worker';
    }
    if (title.startsWith('matchmaker sender')) {
      return 'senders';
    }
    if (title.startsWith('autovacuum worker')) {
      return 'autovacuum';
    }
    // A client backend's title is "user database host activity".
    if (/^\S+ \S+ (\[local\]|\S+\(\d+\))/.test(title)) {
      return 'sessions';
    }
    return 'otherServer';
  }
  if (/(^|\/)postgres( |$)/.test(cmdline.split(' ')[0])) {
    return 'otherServer';
  }
  if (/(^|\/)pgbench( |$)/.test(cmdline.split(' ')[0])) {
    return 'pgbench';
  }
  if (/test\/fake\/(room-service|push-receiver)\.js/.test(cmdline)) {
    return 'fakes';
  }
  return null;
}

// Return {pid: {ticks, group}} for every process of a known group.
function readProcesses() {
  const processes = {};
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) {
      continue;
    }
    let stat;
    let cmdline;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
    } catch {
      // The process ended between readdir and the read.
      continue;
    }
    const group = groupOf(cmdline);
    if (group === null) {
      continue;
    }
    // Split what follows the command name, which is in parentheses and
    // may contain spaces. utime and stime, the 14th and 15th fields of
    // the line, are then at indexes 11 and 12.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    processes[entry] = { ticks: Number(fields[11]) + Number(fields[12]), group };
  }
  return processes;
}

// Return the busy CPU time of all cores together and the time the
// hypervisor gave to others (steal), in clock ticks, from the "cpu" line
// of /proc/stat. guest and guest_nice are already counted in user and
// nice.
function readMachine() {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0];
  const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  return { busy: user + nice + system + irq + softirq, steal: steal || 0 };
}

function sleep(seconds) {
  return new Promise((resolve) => setTimeout(resolve, seconds * 1000));
}

async function main() {
  const options = parseArgs(process.argv);
  await sleep(options.delay);
  const before = readProcesses();
  const machineBefore = readMachine();
  const start = process.hrtime.bigint();
  await sleep(options.seconds);
  const after = readProcesses();
  const machineAfter = readMachine();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;

  const ticks = {};
  for (const [pid, now] of Object.entries(after)) {
    const then = before[pid];
    if (then === undefined || then.group !== now.group) {
      continue;
    }
    ticks[now.group] = (ticks[now.group] || 0) + now.ticks - then.ticks;
  }
  const percentOfCore = (value) => Math.round((value / options.clockTicks / seconds) * 1000) / 10;
  const groupsPct = {};
  for (const group of ['sessions', 'pgbench', 'worker', 'senders', 'fakes', 'autovacuum', 'otherServer']) {
    groupsPct[group] = percentOfCore(ticks[group] || 0);
  }
  const result = {
    seconds: Math.round(seconds * 100) / 100,
    groupsPct,
    machineBusyPct: percentOfCore(machineAfter.busy - machineBefore.busy),
    stealPct: percentOfCore(machineAfter.steal - machineBefore.steal),
  };
  console.log(JSON.stringify(result, null, 2));
}

main().catch((error) => {
  console.error(`cpu-sample: ${error.message}`);
  process.exitCode = 2;
});
