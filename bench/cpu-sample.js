#!/usr/bin/env node
'use strict';

// Measures the CPU time that each group of processes uses while a load
// runs, and prints it as one JSON object on stdout.
//
//   node bench/cpu-sample.js --delay S --seconds S [--clock-ticks N]
//        [--postmaster PID] [--fakes PID,...]
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
// the times in /proc; Linux on x86_64 uses 100. With --postmaster, only
// that postmaster and its children count as server processes, and with
// --fakes only the given processes count as fakes, so that another
// cluster or fake on the machine is left out.

const fs = require('node:fs');

function parseArgs(argv) {
  const options = { delay: null, seconds: null, clockTicks: 100, postmaster: null, fakes: null };
  const numbers = { '--delay': 'delay', '--seconds': 'seconds', '--clock-ticks': 'clockTicks' };
  const usage = 'expected --delay S --seconds S [--clock-ticks N] [--postmaster PID] [--fakes PID,...]';
  for (let i = 2; i < argv.length; i += 2) {
    const name = argv[i];
    const value = argv[i + 1];
    if (value === undefined) {
      throw new Error(`missing value for "${name}": ${usage}`);
    }
    if (name in numbers) {
      const number = Number(value);
      if (value === '' || !Number.isFinite(number) || number < 0) {
        throw new Error(`invalid value "${value}" for ${name}: expected a number of 0 or more`);
      }
      options[numbers[name]] = number;
    } else if (name === '--postmaster') {
      if (!/^\d+$/.test(value)) {
        throw new Error(`invalid value "${value}" for --postmaster: expected a process id`);
      }
      options.postmaster = value;
    } else if (name === '--fakes') {
      if (!/^\d+(,\d+)*$/.test(value)) {
        throw new Error(`invalid value "${value}" for --fakes: expected process ids separated by commas`);
      }
      options.fakes = new Set(value.split(','));
    } else {
      throw new Error(`invalid argument "${name}": ${usage}`);
    }
  }
  if (options.delay === null || options.seconds === null || options.seconds <= 0) {
    throw new Error(`missing --delay or --seconds, or --seconds is 0: ${usage}`);
  }
  return options;
}

// Map a process to its group, or return null for processes that have
// nothing to do with the benchmark.
function groupOf(pid, parentPid, cmdline, options) {
  const isServer = cmdline.startsWith('postgres: ') || /(^|\/)postgres( |$)/.test(cmdline.split(' ')[0]);
  if (isServer && options.postmaster !== null && pid !== options.postmaster &&
    parentPid !== options.postmaster) {
    return null;
  }
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
  if (options.fakes !== null ? options.fakes.has(pid)
    : /test\/fake\/(room-service|push-receiver)\.js/.test(cmdline)) {
    return 'fakes';
  }
  return null;
}

// Return {pid: {ticks, group}} for every process of a known group.
function readProcesses(options) {
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
    // Split what follows the command name, which is in parentheses and
    // may contain spaces. The parent's pid (4th field of the line), utime
    // and stime (14th and 15th) are then at indexes 1, 11 and 12.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const group = groupOf(entry, fields[1], cmdline, options);
    if (group === null) {
      continue;
    }
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
  const before = readProcesses(options);
  const machineBefore = readMachine();
  const start = process.hrtime.bigint();
  await sleep(options.seconds);
  const after = readProcesses(options);
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
