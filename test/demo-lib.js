'use strict';

// Helpers shared by test/demo-calls.js and test/demo-summary.js: queries
// through psql, JSON over HTTP, a Janus AudioBridge client and a bounded
// pool for concurrent requests. Standard library only.

const { execFile } = require('node:child_process');
const crypto = require('node:crypto');
const http = require('node:http');

// Max Janus requests in flight at once, per process.
const JANUS_CONCURRENCY = 16;

const agent = new http.Agent({ keepAlive: true, maxSockets: JANUS_CONCURRENCY });

function requireEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set; run this from test/demo`);
  }
  return value;
}

// Run one query through psql (connection from the PG* environment
// variables) that returns a single json value, and return it parsed.
function queryJson(sql) {
  return new Promise((resolve, reject) => {
    execFile(
      'psql',
      ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-c', sql],
      { encoding: 'utf8', maxBuffer: 1 << 30 },
      (error, stdout, stderr) => {
        if (error) {
          reject(new Error(`psql failed: ${stderr.trim() || error.message}`));
          return;
        }
        try {
          resolve(JSON.parse(stdout));
        } catch (parseError) {
          reject(new Error(`psql returned invalid JSON: ${parseError.message}`));
        }
      },
    );
  });
}

// Run a SELECT and return its rows as an array of objects.
function queryRows(select) {
  return queryJson(`SELECT coalesce(json_agg(t), '[]') FROM (${select}) t`);
}

// Send a GET (body undefined) or a POST with a JSON body, and return the
// parsed JSON response. Rejects on a status other than 200.
function requestJson(url, body, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const request = http.request(url, {
      method: payload === undefined ? 'GET' : 'POST',
      agent,
      timeout: timeoutMs,
      headers: payload === undefined ? {} : {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(payload),
      },
    }, (response) => {
      const chunks = [];
      response.on('data', (chunk) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (response.statusCode !== 200) {
          reject(new Error(`${url} returned HTTP ${response.statusCode}: ${text.slice(0, 200)}`));
          return;
        }
        try {
          resolve(JSON.parse(text));
        } catch (error) {
          reject(new Error(`${url} returned invalid JSON: ${error.message}`));
        }
      });
    });
    request.on('timeout', () => request.destroy(new Error(`${url} timed out after ${timeoutMs} ms`)));
    request.on('error', reject);
    request.end(payload);
  });
}

// Post one request to the Janus HTTP API at url and reject unless Janus
// accepted it. Janus returns HTTP 200 for its own errors too, so the
// verdict is the "janus" field.
async function janusRequest(url, body) {
  const answer = await requestJson(url, {
    transaction: crypto.randomBytes(8).toString('hex'),
    ...body,
  });
  if (answer.janus !== 'success') {
    throw new Error(`Janus rejected ${JSON.stringify(body)}: ${JSON.stringify(answer)}`);
  }
  return answer;
}

// A Janus session with one AudioBridge handle. Janus drops a session after
// its session_timeout without requests (60 s in test/demo), so a caller
// that may idle calls keepAlive now and then.
class JanusClient {
  constructor(baseUrl, sessionId, handleId) {
    this.sessionUrl = `${baseUrl}/${sessionId}`;
    this.handleUrl = `${this.sessionUrl}/${handleId}`;
    this.lastRequest = Date.now();
  }

  static async connect(baseUrl) {
    const sessionId = (await janusRequest(baseUrl, { janus: 'create' })).data.id;
    const attached = await janusRequest(`${baseUrl}/${sessionId}`, {
      janus: 'attach',
      plugin: 'janus.plugin.audiobridge',
    });
    return new JanusClient(baseUrl, sessionId, attached.data.id);
  }

  // Send a synchronous AudioBridge request and return the plugin's data.
  // Rejects when the plugin returns an error_code.
  async request(body) {
    this.lastRequest = Date.now();
    const answer = await janusRequest(this.handleUrl, { janus: 'message', body });
    const data = answer.plugindata?.data;
    if (data === undefined || data.error_code !== undefined) {
      throw new Error(`AudioBridge rejected ${body.request}: ${JSON.stringify(data)}`);
    }
    return data;
  }

  // Return whether Janus has the AudioBridge room with this numeric id.
  async roomExists(room) {
    const data = await this.request({ request: 'exists', room: Number(room) });
    if (typeof data.exists !== 'boolean') {
      throw new Error(`AudioBridge exists returned no "exists": ${JSON.stringify(data)}`);
    }
    return data.exists;
  }

  async destroyRoom(room, secret) {
    await this.request({ request: 'destroy', room: Number(room), secret, permanent: false });
  }

  // Send a keepalive when the session has been idle for idleMs.
  async keepAlive(idleMs = 20000) {
    if (Date.now() - this.lastRequest >= idleMs) {
      this.lastRequest = Date.now();
      await janusRequest(this.sessionUrl, { janus: 'keepalive' }).catch(() => {});
    }
  }

  async close() {
    await janusRequest(this.sessionUrl, { janus: 'destroy' }).catch(() => {});
  }
}

// Run task(item) for every item with at most limit tasks in flight, and
// resolve when all are done. A task should catch its own errors, because
// the first one thrown rejects the returned promise.
async function forEachBounded(items, limit, task) {
  let next = 0;
  const run = async () => {
    while (next < items.length) {
      const item = items[next++];
      await task(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
}

// Close the keep-alive sockets, so that the process can exit.
function closeConnections() {
  agent.destroy();
}

module.exports = {
  JANUS_CONCURRENCY,
  JanusClient,
  closeConnections,
  forEachBounded,
  queryJson,
  queryRows,
  requestJson,
  requireEnv,
};
