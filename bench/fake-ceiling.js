#!/usr/bin/env node
'use strict';

// Measures how many requests per second a fake serves on its own, so that
// the benchmark can print the fakes' ceiling next to its figures.
//
//   node bench/fake-ceiling.js --url URL --body JSON [--seconds S] [--connections C]
//
// Posts BODY to URL over C keep-alive connections (default 64) for S
// seconds (default 3) and prints one JSON object on stdout:
//   {"requests": N, "errors": E, "seconds": S, "requestsPerSecond": R}
// The client runs on the same cores as the fake, so R is what both
// processes reach together, a lower bound on the fake alone.

const http = require('node:http');

function parseArgs(argv) {
  const options = { url: null, body: null, seconds: 3, connections: 64 };
  for (let i = 2; i < argv.length; i += 2) {
    const value = argv[i + 1];
    if (value === undefined) {
      throw new Error(`option ${argv[i]} needs a value`);
    }
    if (argv[i] === '--url') {
      options.url = value;
    } else if (argv[i] === '--body') {
      options.body = value;
    } else if (argv[i] === '--seconds') {
      options.seconds = Number(value);
    } else if (argv[i] === '--connections') {
      options.connections = Number(value);
    } else {
      throw new Error(`unknown option "${argv[i]}"`);
    }
  }
  if (options.url === null || options.body === null) {
    throw new Error('usage: fake-ceiling.js --url URL --body JSON [--seconds S] [--connections C]');
  }
  if (!(options.seconds > 0) || !Number.isInteger(options.connections) || options.connections < 1) {
    throw new Error('--seconds must be positive and --connections a positive integer');
  }
  return options;
}

// Send one POST and resolve with its status code, or 0 on a network error.
function post(agent, url, payload) {
  return new Promise((resolve) => {
    const request = http.request(url, {
      method: 'POST',
      agent,
      headers: {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(payload),
      },
    }, (response) => {
      response.resume();
      response.on('end', () => resolve(response.statusCode));
    });
    request.on('error', () => resolve(0));
    request.end(payload);
  });
}

async function main() {
  const options = parseArgs(process.argv);
  const agent = new http.Agent({ keepAlive: true, maxSockets: options.connections });
  const start = performance.now();
  const deadline = start + options.seconds * 1000;
  let requests = 0;
  let errors = 0;

  // Each connection sends its next request as soon as the last one ends.
  const connection = async () => {
    while (performance.now() < deadline) {
      const status = await post(agent, options.url, options.body);
      if (status === 200) {
        requests++;
      } else {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: options.connections }, connection));

  const seconds = (performance.now() - start) / 1000;
  agent.destroy();
  console.log(JSON.stringify({
    requests,
    errors,
    seconds: Number(seconds.toFixed(3)),
    requestsPerSecond: Math.round(requests / seconds),
  }));
}

main().catch((error) => {
  console.error(`fake-ceiling: ${error.message}`);
  process.exitCode = 2;
});
