'use strict';

// TLS verification and redirects. A push receiver on https://127.0.0.1
// has a certificate from a CA made here with openssl: the worker rejects
// it until matchmaker.ca_file names that CA. A receiver that answers with
// a redirect fails the push, and the redirect's target receives nothing.

const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const lib = require('./lib.js');
const { pairAndSettle } = require('./push-providers.js');

const SETTINGS = [
  'matchmaker.push_url',
  'matchmaker.ca_file',
  'matchmaker.max_attempts',
  'matchmaker.retry_base',
];

let dir;
let tlsReceiver;
let tlsBase;
let caPem;

// Make a CA and a certificate for 127.0.0.1 signed by it, in dir. The
// files are readable by the server's OS user, which reads ca.pem.
function makeCertificates() {
  const run = (args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  run(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1',
    '-subj', '/CN=matchmaker test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  run(['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1']);
  fs.writeFileSync(path.join(dir, 'server.ext'),
    'subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n');
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
    '-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'server.ext']);
  fs.chmodSync(path.join(dir, 'ca.pem'), 0o644);
}

// Return the deliveries an HTTPS receiver got whose "to" starts with
// prefix, trusting only the test CA.
function tlsDeliveries(prefix) {
  const url = `${tlsBase}/deliveries?to=${encodeURIComponent(prefix)}`;
  return new Promise((resolve, reject) => {
    https.get(url, { ca: caPem, timeout: 10000 }, (response) => {
      let text = '';
      response.on('data', (chunk) => { text += chunk; });
      response.on('end', () => {
        if (response.statusCode !== 200) {
          reject(new Error(`GET ${url} returned ${response.statusCode}: ${text}`));
          return;
        }
        resolve(JSON.parse(text));
      });
    }).on('error', reject);
  });
}

test.before(async () => {
  await lib.resetAllSettings();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'matchmaker-tls-'));
  fs.chmodSync(dir, 0o755);
  makeCertificates();
  caPem = fs.readFileSync(path.join(dir, 'ca.pem'));
  tlsReceiver = await lib.startPushReceiver([
    '--tls-cert', path.join(dir, 'server.pem'),
    '--tls-key', path.join(dir, 'server.key'),
  ]);
  tlsBase = `https://127.0.0.1:${tlsReceiver.port}`;
  await lib.setSettings({ 'matchmaker.max_attempts': 2, 'matchmaker.retry_base': 100 });
});

test.after(async () => {
  await lib.resetSettings(SETTINGS);
  await tlsReceiver?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('https push rejects unknown CA', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await lib.setSettings({ 'matchmaker.push_url': `${tlsBase}/push` });

  const { pair, rows } = await pairAndSettle('tls-unknown-ca');
  for (const row of rows) {
    assert.equal(row.status, 'failed', `outbox ${row.id} must fail without the CA`);
    assert.equal(row.attempts, 2, 'a certificate error is retried up to max_attempts');
    assert.match(row.last_error ?? '', /certificate/i);
  }
  const received = await tlsDeliveries(lib.pushPrefix('tls-unknown-ca'));
  assert.equal(received.length, 0, `${pair[0].user}: nothing may reach an unverified peer`);
});

test('https push verifies with ca_file', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await lib.setSettings({
    'matchmaker.push_url': `${tlsBase}/push`,
    'matchmaker.ca_file': path.join(dir, 'ca.pem'),
  });

  const { pair, rows } = await pairAndSettle('tls-ca-file');
  for (const [index, user] of pair.entries()) {
    const row = rows[index];
    assert.equal(row.status, 'sent', `outbox ${row.id}: last_error ${row.last_error}`);
    const received = await tlsDeliveries(user.token);
    assert.equal(received.length, 1, `${user.user} must get exactly one push`);
    assert.equal(received[0].headers['webhook-id'], String(row.id));
  }
});

test('ca_file rejects missing file', { timeout: lib.TEST_TIMEOUT_MS }, async () => {
  await assert.rejects(
    lib.sql(`ALTER SYSTEM SET matchmaker.ca_file = ${lib.literal(path.join(dir, 'missing.pem'))}`),
    /invalid value for parameter "matchmaker.ca_file".*\n.*could not stat file/);
});

test('redirect is not followed', { timeout: lib.TEST_TIMEOUT_MS }, async (t) => {
  await lib.resetSettings(['matchmaker.push_url', 'matchmaker.ca_file']);
  const target = await lib.startPushReceiver();
  t.after(() => target.stop());
  const location = `http://127.0.0.1:${target.port}/push`;

  const { pair, rows } = await pairAndSettle('redirect', ([first]) =>
    lib.pushControl({ redirect: 5, status: 302, location, to: first.token }));

  const row = rows[0];
  assert.equal(row.status, 'failed', 'a redirect must fail the push');
  assert.equal(row.attempts, 1, 'a redirect must not be retried');
  assert.equal(row.last_error, `HTTP 302: redirect to "${location}" not followed; set the provider's final URL`);
  const pushed = await lib.deliveries(pair[0].token);
  assert.deepEqual(pushed.map((d) => d.status), [302]);

  // Give a followed redirect time to arrive before looking at the target.
  await lib.sleep(1000);
  const response = await fetch(`http://127.0.0.1:${target.port}/deliveries`,
    { signal: AbortSignal.timeout(10000) });
  assert.deepEqual(await response.json(), [], 'the redirect target must receive nothing');

  assert.equal(rows[1].status, 'sent', `outbox ${rows[1].id}: last_error ${rows[1].last_error}`);
});
