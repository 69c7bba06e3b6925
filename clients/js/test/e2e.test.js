// The JS SDK end to end: a real redis-server and a real `anomalydesk collect`, both started here.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';

import { AnomalyClient } from '../src/index.js';
import { anomalydesk, fingerprintRequests, startCollector, startRedis } from './support/servers.js';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const quiet = { warn() {} };
let redis;
let collector;

before(async () => {
  redis = await startRedis();
  anomalydesk(redis.url, 'setup', '--window', '1');
  collector = await startCollector(redis.url);
});

after(async () => {
  await collector?.stop();
  await redis?.stop();
});

const eventsTotal = () => anomalydesk(redis.url, 'status').events_total;

test('an event sent is counted in status and in its window\'s fingerprint', async () => {
  const before_ = eventsTotal();
  const client = new AnomalyClient(collector.url, { service: 'sdk-js', logger: quiet });
  for (let i = 0; i < 6; i += 1) client.sendMetric(`GET:/carts/${i}`, i === 0 ? 500 : 200, 5 + i);
  client.sendBusinessMetric('cart_value', 31.5, [10, 100], 'sdk-js');
  await client.close();
  assert.deepEqual(client.stats, { sent: 7, rejected: 0, dropped: 0, failed: 0, unknown: 0 });
  assert.equal(eventsTotal() - before_, 7);
  let counted = 0;
  for (let i = 0; i < 100 && counted < 6; i += 1) {
    counted = fingerprintRequests(redis.url, 'sdk-js');
    if (counted < 6) await sleep(200);
  }
  assert.equal(counted, 6);
});

test('a KPI without a service belongs to the client\'s service, queued or in sendBatch', async () => {
  // it went to the pseudo-service "business": the client's service applied to request metrics only
  const client = new AnomalyClient(collector.url, { service: 'sdk-js-kpi', logger: quiet });
  client.sendBusinessMetric('orders', 5);
  client.sendBusinessMetric('refunds', 1, null, 'sdk-js-kpi-other');
  assert.equal((await client.sendBatch([{ metric_name: 'carts', value: 2 }])).accepted, 1);
  await client.close();
  assert.equal(client.stats.sent, 2);
  const names = anomalydesk(redis.url, 'services', 'list').map((s) => s.name);
  assert.ok(names.includes('sdk-js-kpi') && names.includes('sdk-js-kpi-other'), names.join(', '));
});

test('sendBatch answers with the collector\'s verdict; 4xx is not retried', async () => {
  const client = new AnomalyClient(collector.url, { service: 'sdk-js-batch', logger: quiet });
  const answer = await client.sendBatch([
    { endpoint: 'GET:/a', status_code: 200, response_time: 1 },
    { endpoint: 'GET:/a', status_code: 99, response_time: 1 },
  ]);
  assert.equal(answer.accepted, 1);
  assert.deepEqual(answer.rejected.map((r) => [r.index, r.field]), [[1, 'status_code']]);
  await assert.rejects(client.sendBatch([{ endpoint: 'nope', status_code: 200, response_time: 1 }]),
    (err) => err.status === 422 && err.body.rejected[0].field === 'endpoint');
  await client.close();
});

for (const withValid of [false, true]) {
  test(`an invalid event ${withValid ? 'beside a valid one' : 'alone'} is rejected with its reason logged`, async () => {
    // alone, the collector answers 422 ("none of the 1 events is valid"): it was counted failed
    // ("safe to send again yourself") and logged without its reason
    const warnings = [];
    const client = new AnomalyClient(collector.url, {
      service: 'sdk-js-invalid', logger: { warn: (m) => warnings.push(m) },
    });
    client.sendMetric('GET:/q', 700, 1);
    if (withValid) client.sendMetric('GET:/q', 200, 1);
    await client.close();
    assert.deepEqual(client.stats, { sent: withValid ? 1 : 0, rejected: 1, dropped: 0, failed: 0, unknown: 0 });
    const log = warnings.join('\n');
    assert.match(log, /collector rejected 1 event\(s\), first: \{"index":0,"field":"status_code","reason":"[^"]*got 700"/);
    assert.doesNotMatch(log, /gave up/);
  });
}

test('a 401 from the collector stays failed, even for an invalid event', async () => {
  const guarded = await startCollector(redis.url, '--api-key', 'k'.repeat(20));
  try {
    const client = new AnomalyClient(guarded.url, { service: 'sdk-js-401', apiKey: 'w'.repeat(20), logger: quiet });
    client.sendMetric('GET:/q', 700, 1);
    await client.close();
    assert.deepEqual(client.stats, { sent: 0, rejected: 0, dropped: 0, failed: 1, unknown: 0 });
  } finally {
    await guarded.stop();
  }
});

test('retries after 503 while Redis is down, and counts each event once', async () => {
  const client = new AnomalyClient(collector.url, {
    service: 'sdk-js-outage', maxRetries: 200, backoffMs: 50, backoffMaxMs: 200, logger: quiet,
  });
  await redis.stop();
  for (let i = 0; i < 4; i += 1) client.sendMetric('POST:/pay', 201, 7);
  const flushed = client.flush();
  // wait until the collector has answered 503 at least once, then bring Redis back (empty)
  let saw503 = false;
  for (let i = 0; i < 300 && !saw503; i += 1) {
    const text = await (await fetch(`${collector.url}/prometheus`)).text();
    saw503 = /anomalydesk_collector_requests_total\{path="\/metrics",code="503"\} [1-9]/.test(text);
    if (!saw503) await sleep(50);
  }
  assert.ok(saw503, 'the collector never answered 503');
  await redis.start();
  await flushed;
  await client.close();
  assert.equal(client.stats.sent, 4);
  assert.equal(client.stats.failed, 0);
  assert.equal(eventsTotal(), 4); // the restarted Redis holds exactly the 4 retried events
});

test('Express-style middleware records each response once, in Redis too', async () => {
  const client = new AnomalyClient(collector.url, { service: 'sdk-js-express', logger: quiet });
  const mw = client.middleware({ exclude: ['/healthz'] });
  const server = createServer((req, res) => {
    // what Express does: res.json → res.send → res.end
    res.send = (body) => { res.setHeader('content-type', 'application/json'); res.end(body); };
    res.json = (obj) => res.send(JSON.stringify(obj));
    mw(req, res, () => {
      if (req.url === '/orders/9') { res.statusCode = 201; res.json({ ok: true }); }
      else { res.statusCode = 404; res.end('missing'); }
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  const before_ = eventsTotal();
  assert.equal((await fetch(`${base}/orders/9`, { method: 'POST' })).status, 201);
  assert.equal((await fetch(`${base}/nothing?x=1`)).status, 404);
  assert.equal((await fetch(`${base}/healthz`)).status, 404);
  await new Promise((resolve) => server.close(resolve));
  const queued = client._queue.map((raw) => JSON.parse(raw));
  assert.deepEqual(queued.map((e) => [e.endpoint, e.status_code]), [['POST:/orders/9', 201], ['GET:/nothing', 404]]);
  await client.close();
  assert.equal(eventsTotal() - before_, 2);
});
