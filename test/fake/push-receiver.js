#!/usr/bin/env node
'use strict';

// Fake webhook push receiver for the end-to-end tests.
//
//   node push-receiver.js --port N [--webhook-secret whsec_...]
//                         [--tls-cert FILE --tls-key FILE]
//
// --port 0 picks a free port. With a certificate and key (PEM files) it
// serves HTTPS. With a webhook secret, every delivery is
// verified as a Standard Webhooks message with the standardwebhooks
// package: webhook-id, webhook-timestamp (within 5 minutes of now) and a
// v1 webhook-signature over the raw body.
//
// POST /push      records the delivery and responds 200, or what the
//                 control rules say. A POST to any other path but
//                 /control is a delivery too, so the receiver can stand
//                 in for a provider API that a test expects to fail.
// GET /deliveries returns every recorded delivery, oldest first. With
//                 ?to=PREFIX only those whose body "to" starts with PREFIX.
// POST /control   changes the responses, with a JSON object:
//                 {"fail": N, "status": 503, "retryAfter": "2"}
//                   the next N deliveries get that status (default 503)
//                   and, if given, a Retry-After header. "date+S" sends an
//                   HTTP date S seconds after the response.
//                 {"fail": N, "status": 401, "echoHeaders": true}
//                   the same, with the request's headers in the error
//                   body, authorization first, as a careless server
//                   might send them back.
//                 {"redirect": N, "location": URL, "status": 302}
//                   the next N deliveries get that redirect status
//                   (default 302) with a Location header.
//                 {"delayMs": M} delays every response by M ms.
//                 {"to": PREFIX, ...} limits "fail" and "delayMs" to
//                   deliveries whose body "to" starts with PREFIX.
//                 {"webhookSecret": "whsec_..."} verifies deliveries
//                   from now on with that secret; null or "" stops it.
//                 {"reset": true} clears deliveries, rules and delays,
//                   and restores the secret of the command line.
// GET /control    returns the rules in force.
//
// Each delivery records: seq, at (ms since the epoch when the request
// arrived), method, url, headers (lower-case names), body (parsed JSON, or
// the raw text when it is not JSON), rawBody, status (the status code sent)
// and, when a secret is set, verified (true or false) and verifyError (the
// verifier's message).

const { Webhook } = require('standardwebhooks');
const {
  RuleList,
  collectGarbage,
  formatRetryAfter,
  parseControl,
  parseJson,
  parsePort,
  parseTls,
  sendJson,
  sleep,
  serve,
} = require('./fake-server.js');

const deliveries = [];
const rules = new RuleList();
const delays = new Map();
const startupSecret = parseSecret(process.argv);
let webhook = startupSecret ? new Webhook(startupSecret) : undefined;

// Return the --webhook-secret option, or undefined.
function parseSecret(argv) {
  const index = argv.indexOf('--webhook-secret');
  return index >= 0 ? argv[index + 1] : undefined;
}

// Return a verifier for a whsec_ secret, or undefined for null or "".
// Throws an Error for the client when the secret is invalid.
function makeVerifier(secret) {
  if (secret === null || secret === '') {
    return undefined;
  }
  if (typeof secret !== 'string' || !secret.startsWith('whsec_')) {
    throw new Error('"webhookSecret" must be "whsec_" followed by base64, null or ""');
  }
  return new Webhook(secret);
}

// Return the response delay for a push token: the delay of the longest
// matching prefix, or 0.
function delayFor(to) {
  let best = { length: -1, ms: 0 };
  for (const [prefix, ms] of delays) {
    if (typeof to === 'string' && to.startsWith(prefix) && prefix.length > best.length) {
      best = { length: prefix.length, ms };
    }
  }
  return best.ms;
}

async function receivePush(request, text, response) {
  const body = parseJson(text);
  const to = body && typeof body === 'object' ? body.to : undefined;
  const delivery = {
    seq: deliveries.length + 1,
    at: Date.now(),
    method: request.method,
    url: request.url,
    headers: request.headers,
    body: body === undefined ? text : body,
    rawBody: text,
    status: 200,
  };
  if (webhook) {
    try {
      webhook.verify(text, request.headers);
      delivery.verified = true;
    } catch (error) {
      delivery.verified = false;
      delivery.verifyError = error.message;
      console.log(`delivery ${delivery.seq} to "${to}": signature not verified: ${error.message}`);
    }
  }
  deliveries.push(delivery);

  const delay = delayFor(to);
  if (delay > 0) {
    await sleep(delay);
  }

  const rule = rules.take([to ?? '']);
  if (rule) {
    const headers = {};
    if (rule.retryAfter !== undefined) {
      headers['Retry-After'] = formatRetryAfter(rule.retryAfter);
    }
    if (rule.kind === 'redirect') {
      headers.Location = rule.location;
    }
    delivery.status = rule.status;
    delivery.retryAfter = headers['Retry-After'];
    const failure = rule.echoHeaders
      ? { authorization: request.headers.authorization, headers: request.headers }
      : { error: `fake failure ${rule.status}` };
    sendJson(response, rule.status, failure, headers);
    return;
  }
  sendJson(response, 200, { ok: true });
}

// Turn the "redirect" fields of a POST /control body into a rule. Throws
// an Error with a message for the client.
function parseRedirect(body) {
  const status = body.status ?? 302;
  if (!Number.isInteger(body.redirect) || body.redirect < 1) {
    throw new Error('"redirect" must be a positive integer');
  }
  if (!Number.isInteger(status) || status < 300 || status > 399) {
    throw new Error('"status" of a redirect must be a 3xx code');
  }
  if (typeof body.location !== 'string' || body.location === '') {
    throw new Error('"location" must be a URL');
  }
  return {
    kind: 'redirect',
    count: body.redirect,
    status,
    location: body.location,
    prefix: body.to ?? '',
  };
}

function control(text, response) {
  const body = parseJson(text);
  let parsed;
  let verifier;
  try {
    parsed = parseControl(body);
    if (body.echoHeaders === true) {
      parsed.rules.forEach((rule) => { rule.echoHeaders = true; });
    }
    if (body.redirect !== undefined) {
      parsed.rules.push(parseRedirect(body));
    }
    if (body.webhookSecret !== undefined) {
      verifier = makeVerifier(body.webhookSecret);
    }
  } catch (error) {
    sendJson(response, 400, { error: error.message });
    return;
  }
  if (parsed.reset) {
    deliveries.length = 0;
    rules.clear();
    delays.clear();
    collectGarbage();
    webhook = startupSecret ? new Webhook(startupSecret) : undefined;
  }
  if (body.webhookSecret !== undefined) {
    webhook = verifier;
  }
  for (const rule of parsed.rules) {
    rules.add(rule);
  }
  if (parsed.delay) {
    delays.set(parsed.delay.prefix, parsed.delay.ms);
  }
  sendJson(response, 200, { rules: rules.list(), delays: Object.fromEntries(delays) });
}

async function handle(request, text, response) {
  const url = new URL(request.url, 'http://127.0.0.1');

  if (request.method === 'POST' && url.pathname !== '/control') {
    await receivePush(request, text, response);
  } else if (request.method === 'GET' && url.pathname === '/deliveries') {
    const prefix = url.searchParams.get('to');
    const selected = prefix === null
      ? deliveries
      : deliveries.filter((d) => typeof d.body?.to === 'string' && d.body.to.startsWith(prefix));
    sendJson(response, 200, selected);
  } else if (request.method === 'POST' && url.pathname === '/control') {
    control(text, response);
  } else if (request.method === 'GET' && url.pathname === '/control') {
    sendJson(response, 200, { rules: rules.list(), delays: Object.fromEntries(delays) });
  } else {
    sendJson(response, 404, { error: `no route for ${request.method} ${url.pathname}` });
  }
}

serve(parsePort(process.argv), handle, parseTls(process.argv));
