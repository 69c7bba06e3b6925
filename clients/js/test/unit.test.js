// The JS SDK against a scripted fake collector (node:http): retry rules, idempotency keys, queue policy,
// timers and the middleware's exactly-once recording.
import assert from 'node:assert/strict';
import { createServer, request } from 'node:http';
import { test } from 'node:test';

import { AnomalyClient, AnomalyClientError, QueueFullError } from '../src/index.js';

const quiet = { warn() {} };

/** A fake collector answering with the scripted [status, headers, body] in order; records requests. */
async function fakeCollector(script) {
  const seen = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      seen.push({ headers: req.headers, body });
      const [status, headers, answer] = script[Math.min(seen.length - 1, script.length - 1)];
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, seen, close: () => new Promise((r) => server.close(r)) };
}

test('5xx and 429 are retried under one Idempotency-Key with the same body', async () => {
  const fake = await fakeCollector([
    [503, { 'retry-after': '0' }, { error: 'Redis is unreachable' }],
    [429, { 'retry-after': '0' }, { error: 'rate limit' }],
    [202, {}, { accepted: 2, rejected: [] }],
  ]);
  const client = new AnomalyClient(fake.url, { service: 'svc', apiKey: 'k'.repeat(20), logger: quiet });
  client.sendMetric('GET:/a', 200, 1);
  client.sendMetric('GET:/b', 500, 2);
  await client.close();
  await fake.close();
  assert.equal(fake.seen.length, 3);
  const keys = new Set(fake.seen.map((s) => s.headers['idempotency-key']));
  assert.equal(keys.size, 1);
  assert.match([...keys][0], /^[0-9a-f-]{36}$/);
  assert.equal(new Set(fake.seen.map((s) => s.body)).size, 1);
  assert.equal(fake.seen[0].headers.authorization, `Bearer ${'k'.repeat(20)}`);
  assert.deepEqual(JSON.parse(fake.seen[0].body).map((e) => e.endpoint), ['GET:/a', 'GET:/b']);
  assert.deepEqual(client.stats, { sent: 2, rejected: 0, dropped: 0, failed: 0, unknown: 0 });
});

test('other 4xx are not retried; the events are counted as failed', async () => {
  const fake = await fakeCollector([[401, {}, { error: 'missing or unknown API key' }]]);
  const warnings = [];
  const client = new AnomalyClient(fake.url, { service: 'svc', logger: { warn: (m) => warnings.push(m) } });
  client.sendMetric('GET:/a', 200, 1);
  await client.close();
  await fake.close();
  assert.equal(fake.seen.length, 1);
  assert.equal(client.stats.failed, 1);
  assert.match(warnings.join('\n'), /gave up on 1 event\(s\): collector answered 401/);
});

test('network errors are retried, then given up with a count', async () => {
  const fake = await fakeCollector([[202, {}, {}]]);
  await fake.close(); // nothing listens there any more
  const client = new AnomalyClient(fake.url, { service: 'svc', maxRetries: 2, backoffMs: 1, logger: quiet });
  await assert.rejects(client.sendBatch([{ endpoint: 'GET:/a', status_code: 200, response_time: 1 }]),
    (err) => err instanceof AnomalyClientError && /unreachable/.test(err.message));
  await client.close();
});

test('a full queue drops the oldest (counted, warned) or throws, as configured', async () => {
  const warnings = [];
  const dropping = new AnomalyClient('http://127.0.0.1:9', {
    service: 's', maxQueue: 3, batchSize: 100, flushIntervalMs: 3_600_000, logger: { warn: (m) => warnings.push(m) },
  });
  for (let i = 0; i < 5; i += 1) dropping.sendMetric('GET:/x', 200, i);
  assert.deepEqual(dropping._queue.map((raw) => JSON.parse(raw).response_time), [2, 3, 4]);
  assert.equal(dropping.stats.dropped, 2);
  assert.match(warnings[0], /queue full \(3 events\): dropped the oldest/);
  dropping._queue.length = 0;
  await dropping.close();

  const raising = new AnomalyClient('http://127.0.0.1:9', {
    service: 's', maxQueue: 1, batchSize: 100, flushIntervalMs: 3_600_000, overflow: 'raise', logger: quiet,
  });
  raising.sendMetric('GET:/x', 200, 1);
  assert.throws(() => raising.sendMetric('GET:/x', 200, 2), QueueFullError);
  assert.throws(() => raising.sendMetric('GET:/x', 200, Number.NaN), /only finite numbers/);
  assert.throws(() => new AnomalyClient('http://x', { overflow: 'block' }), /overflow/);
  raising._queue.length = 0;
  await raising.close();
});

test('timer() records once; time() records 200 or 500', async () => {
  const client = new AnomalyClient('http://127.0.0.1:9', { service: 's', flushIntervalMs: 3_600_000, logger: quiet });
  const t = client.timer('GET:/t');
  assert.ok(t.stop(404) >= 0);
  assert.equal(t.stop(200), undefined);
  assert.equal(await client.time('GET:/ok', async () => 7), 7);
  await assert.rejects(client.time('GET:/fail', () => { throw new Error('boom'); }), /boom/);
  assert.deepEqual(client._queue.map((raw) => JSON.parse(raw)).map((e) => [e.endpoint, e.status_code]),
    [['GET:/t', 404], ['GET:/ok', 200], ['GET:/fail', 500]]);
  client._queue.length = 0;
  await client.close();
});

test('middleware: a response aborted by the client is recorded once as 499', async () => {
  const client = new AnomalyClient('http://127.0.0.1:9', { service: 's', flushIntervalMs: 3_600_000, logger: quiet });
  const mw = client.middleware();
  let closed;
  const closedOnce = new Promise((resolve) => { closed = resolve; });
  const server = createServer((req, res) => {
    mw(req, res, () => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('partial'); // never ends: the client goes away
      res.once('close', () => setImmediate(closed));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const req = request({ port: server.address().port, host: '127.0.0.1', path: '/slow/1' }, (res) => {
    res.once('data', () => req.destroy());
  });
  req.on('error', () => {});
  req.end();
  await closedOnce;
  await new Promise((resolve) => server.close(resolve));
  const events = client._queue.map((raw) => JSON.parse(raw));
  assert.deepEqual(events.map((e) => [e.endpoint, e.status_code]), [['GET:/slow/1', 499]]);
  client._queue.length = 0;
  await client.close();
});

test('close() gives up after its deadline and counts what it could not send', async () => {
  const fake = await fakeCollector([[503, { 'retry-after': '0' }, { error: 'Redis is unreachable' }]]);
  const client = new AnomalyClient(fake.url, {
    service: 's', timeoutMs: 300, maxRetries: 1e9, batchSize: 2, flushIntervalMs: 3_600_000, logger: quiet,
  });
  for (let i = 0; i < 6; i += 1) client.sendMetric('GET:/a', 200, 1);
  await client.close();
  await fake.close();
  assert.equal(client.stats.failed, 6);
  assert.equal(client.stats.sent, 0);
});
