// The JS SDK's accounting through failures (issue 19): unknown vs failed, re-sends under the same key,
// a retry budget in time, and one flush in flight however often sendMetric() is called.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';

import { AnomalyClient, RESEND_WINDOW_MS } from '../src/index.js';

const quiet = { warn() {} };

/** A fake collector: reads each request whole, then drops the connection (mode "drop") or answers. */
async function droppingCollector() {
  const state = { mode: 'drop', answer: [202, {}, {}], keys: [], bodies: [] };
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      state.keys.push(req.headers['idempotency-key']);
      state.bodies.push(body);
      if (state.mode === 'drop') { req.socket.destroy(); return; } // read, never answered
      const [status, headers, answer] = state.answer;
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.url = `http://127.0.0.1:${server.address().port}`;
  state.close = () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); });
  return state;
}

/** A loopback URL where nothing listens (a port just freed, never connected to). */
async function deadUrl() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return `http://127.0.0.1:${port}`;
}

const counted = (s) => s.sent + s.rejected + s.unknown + s.failed + s.dropped;

test('a batch read but never answered is unknown, then re-sent under its key and counted once', async () => {
  const fake = await droppingCollector();
  const client = new AnomalyClient(fake.url, {
    service: 'svc', retryForMs: 300, backoffMs: 10, backoffMaxMs: 50, flushIntervalMs: 3_600_000, logger: quiet,
  });
  for (let i = 0; i < 4; i += 1) client.sendMetric('GET:/a', 200, i);
  await client.flush();
  assert.deepEqual([client.stats.unknown, client.stats.failed, client.stats.sent], [4, 0, 0]);
  assert.equal(counted(client.stats), 4);
  fake.mode = 'answer';
  fake.answer = [202, {}, { accepted: 4, rejected: [] }];
  await client.close();
  assert.deepEqual([client.stats.unknown, client.stats.failed, client.stats.sent], [0, 0, 4]);
  assert.equal(new Set(fake.keys).size, 1);
  assert.equal(new Set(fake.bodies).size, 1);
  await fake.close();
});

test('503 stored "unknown" is unknown, 503 stored "no" and a refused connection are failed', async () => {
  const fake = await droppingCollector();
  fake.mode = 'answer';
  fake.answer = [503, { 'retry-after': '0' }, { error: 'late', stored: 'unknown' }];
  const options = { service: 'svc', retryForMs: 200, backoffMs: 5, flushIntervalMs: 3_600_000, logger: quiet };
  const client = new AnomalyClient(fake.url, options);
  client.sendMetric('GET:/a', 200, 1);
  await client.flush();
  assert.deepEqual([client.stats.unknown, client.stats.failed], [1, 0]);
  fake.answer = [503, { 'retry-after': '0' }, { error: 'down', stored: 'no' }];
  client.sendMetric('GET:/a', 200, 1);
  await client.close();
  assert.deepEqual([client.stats.unknown, client.stats.failed], [1, 1]); // the parked one may be stored
  assert.equal(counted(client.stats), 2);
  await fake.close();

  const dead = new AnomalyClient(await deadUrl(), options); // nothing ever listened there
  dead.sendMetric('GET:/a', 200, 1);
  await dead.close();
  assert.deepEqual([dead.stats.failed, dead.stats.unknown], [1, 0]);
});

test('the retry budget is time, not a count of jittered retries', async () => {
  const fake = await droppingCollector();
  fake.mode = 'answer';
  fake.answer = [503, { 'retry-after': '0' }, { error: 'down', stored: 'no' }];
  const client = new AnomalyClient(fake.url, { service: 'svc', retryForMs: 1000, flushIntervalMs: 3_600_000, logger: quiet });
  client.sendMetric('GET:/a', 200, 1);
  const started = Date.now();
  await client.flush();
  const took = Date.now() - started;
  assert.ok(took >= 1000 && fake.keys.length > 6, `${took} ms, ${fake.keys.length} attempts`);
  assert.equal(client.stats.failed, 1);
  await client.close();
  await fake.close();
});

test('one flush in flight: sendMetric beyond batchSize during an outage starts no other', async () => {
  const fake = await droppingCollector();
  fake.mode = 'answer';
  fake.answer = [503, { 'retry-after': '0.05' }, { error: 'down', stored: 'no' }];
  const client = new AnomalyClient(fake.url, {
    service: 'svc', batchSize: 10, maxQueue: 100, retryForMs: 500, flushIntervalMs: 3_600_000, logger: quiet,
  });
  const first = client.flush();
  for (let i = 0; i < 5000; i += 1) {
    client.sendMetric('GET:/a', 200, i);
    assert.equal(client.flush(), client._flushing); // joined, not chained
  }
  assert.ok(client._flushing);
  await first;
  await client.close();
  assert.equal(counted(client.stats), 5000);
  assert.equal(client.stats.dropped, 4900); // the bounded queue dropped the rest, counted
  await fake.close();
});

test('unknown batches are re-sent only while the store remembers their key (600 s)', () => {
  assert.ok(RESEND_WINDOW_MS < (600 - 30) * 1000);
});
