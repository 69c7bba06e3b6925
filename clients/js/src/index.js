// anomalydesk-client: send request and business metrics to an AnomalyDesk collector (Node >= 18).
//
// Events are queued and sent in batches (on size, on a timer, on flush()/close(), and when the
// process is about to exit), one flush at a time. Network errors, 5xx and 429 are retried for
// `retryForMs` (30 s) with exponential backoff (honouring Retry-After) under one Idempotency-Key per
// batch, so a retry is never counted twice; other 4xx answers are not retried. A batch that may have
// been stored when its budget ends is counted `unknown` and re-sent under the same key at the next
// flush. Once closed: sent + rejected + unknown + failed + dropped = events produced.
// The queue is bounded: see `overflow`.

import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';

const USER_AGENT = 'anomalydesk-client-js/0.1.0';

export class AnomalyClientError extends Error {
  /** A request failed for good: `status` (undefined for a network error) and the collector's `body`. */
  constructor(message, { status, body } = {}) {
    super(message);
    this.name = 'AnomalyClientError';
    this.status = status;
    this.body = body ?? {};
  }
}

export class QueueFullError extends AnomalyClientError {
  constructor(message) {
    super(message);
    this.name = 'QueueFullError';
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// a batch of unknown outcome is re-sent under its key only while the collector still knows the key
// (the store keeps batch ids 600 s: anomalydesk.contract.BATCH_TTL_SECONDS)
export const RESEND_WINDOW_MS = 540_000;

/** The retry budget of a batch ran out; `unknown` when an attempt may have been stored. */
class GaveUp extends AnomalyClientError {
  constructor(message, { status, body, unknown }) {
    super(message, { status, body });
    this.unknown = unknown;
  }
}

function mayBeStored(status, body) {
  // 429 and the collector's 503s say nothing was stored, unless the body says "stored": "unknown"
  if (status === 429 || status === 503) return body?.stored === 'unknown';
  return true;
}

// The collector's per-item reasons when it refused every event of a batch as invalid (422 with
// `rejected` naming each item by index), else null. Sending such events again can never succeed, so
// they are `rejected`, not `failed`; a 422 for the body as a whole (index null) is not this.
function invalidItems(err) {
  const rejected = err.body?.rejected;
  if (err.status !== 422 || !Array.isArray(rejected) || !rejected.length) return null;
  return rejected.every((item) => Number.isInteger(item?.index)) ? rejected : null;
}

function neverSent(err) {
  const code = err.cause?.code ?? err.code;
  return code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH';
}

function encodeEvent(event) {
  if (event === null || typeof event !== 'object' || Array.isArray(event)) {
    throw new TypeError(`an event must be an object, got ${event === null ? 'null' : typeof event}`);
  }
  return JSON.stringify(event, (key, value) => {
    if (typeof value === 'number' && !Number.isFinite(value)) {
      throw new TypeError(`event field ${key || '(value)'} is ${value}: only finite numbers can be sent`);
    }
    return value;
  });
}

function retryable(status) {
  return status === 429 || status >= 500;
}

function pathOf(url) {
  const raw = url ?? '/';
  const cut = raw.search(/[?#]/);
  return cut === -1 ? raw : raw.slice(0, cut);
}

export class AnomalyClient {
  /**
   * @param {string} baseUrl  e.g. "http://127.0.0.1:4000"
   * @param {object} [options] apiKey, service, batchSize (500), flushIntervalMs (1000),
   *   maxQueue (10000), overflow ("drop-oldest" | "raise"), retryForMs (30000: how long a batch is
   *   retried), maxRetries (no limit besides retryForMs), backoffMs (250), backoffMaxMs (10000),
   *   timeoutMs (10000), fetch (globalThis.fetch), logger (console)
   */
  constructor(baseUrl, options = {}) {
    const url = new URL(baseUrl);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new TypeError(`baseUrl must be http(s)://host:port, got ${baseUrl}`);
    }
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.apiKey = options.apiKey;
    this.service = options.service;
    this.batchSize = options.batchSize ?? 500;
    this.flushIntervalMs = options.flushIntervalMs ?? 1000;
    this.maxQueue = options.maxQueue ?? 10_000;
    this.overflow = options.overflow ?? 'drop-oldest';
    this.retryForMs = options.retryForMs ?? 30_000;
    this.maxRetries = options.maxRetries ?? Infinity;
    this.backoffMs = options.backoffMs ?? 250;
    this.backoffMaxMs = options.backoffMaxMs ?? 10_000;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.logger = options.logger ?? console;
    this._fetch = options.fetch ?? globalThis.fetch;
    if (!['drop-oldest', 'raise'].includes(this.overflow)) {
      throw new TypeError(`overflow must be "drop-oldest" or "raise", got ${this.overflow}`);
    }
    if (typeof this._fetch !== 'function') throw new TypeError('no fetch available: Node >= 18 is needed');
    /** Counters: sent, rejected (invalid per the collector), dropped (queue full), failed (certainly
     * not stored), unknown (may or may not be stored; re-sent under the same key). */
    this.stats = { sent: 0, rejected: 0, dropped: 0, failed: 0, unknown: 0 };
    this._queue = [];
    this._parked = []; // { batch, key, since }: unknown outcome, re-sent first
    this._flushing = null; // the one flush in flight
    this._closed = false;
    this._warnedAt = -Infinity;
    this._timer = setInterval(() => { if (this._queue.length || this._parked.length) this.flush(); },
      this.flushIntervalMs);
    this._timer.unref?.();
    this._onBeforeExit = () => { if (this._queue.length && !this._flushing) this.flush(); };
    process.on('beforeExit', this._onBeforeExit);
  }

  /** Queue a request metric: sendMetric("GET:/users/1", 200, 12.5) or sendMetric({service, endpoint, ...}). */
  sendMetric(endpoint, statusCode, responseTime, { service, timestamp } = {}) {
    let event;
    if (endpoint !== null && typeof endpoint === 'object') {
      event = { ...endpoint };
      if (event.service === undefined && (service ?? this.service)) event.service = service ?? this.service;
    } else {
      if (typeof endpoint !== 'string') throw new TypeError('endpoint must be a string like "GET:/users/{id}"');
      const svc = service ?? this.service;
      if (!svc) throw new TypeError('service is required: pass { service } or new AnomalyClient(url, { service })');
      if (statusCode === undefined || responseTime === undefined) {
        throw new TypeError('statusCode and responseTime (milliseconds) are required');
      }
      event = { service: svc, endpoint, status_code: statusCode, response_time: responseTime };
      if (timestamp !== undefined) event.timestamp = timestamp;
    }
    this.record(event);
  }

  /** Queue a business KPI of `service`, else of the client's service (none at all → the collector's
   * pseudo-service "business"). */
  sendBusinessMetric(name, value, expectedRange = null, service = null, { timestamp } = {}) {
    const event = { metric_name: name, value };
    if (expectedRange) event.expected_range = [expectedRange[0], expectedRange[1]];
    if (service || this.service) event.service = service || this.service;  // '' is no service, as in Python
    if (timestamp !== undefined) event.timestamp = timestamp;
    this.record(event);
  }

  /** Send events now (bypassing the queue); resolves to the collector's answer, rejects on failure. */
  async sendBatch(events) {
    const encoded = events.map((e) => encodeEvent(
      e.service !== undefined || !this.service ? e : { ...e, service: this.service },
    ));
    return this._check(await this._postWithRetries(encoded));
  }

  /** Queue one ready event object (what the middleware and timers call). */
  record(event) {
    if (this._closed) throw new AnomalyClientError('the client is closed');
    const encoded = encodeEvent(event);
    if (this._queue.length >= this.maxQueue) {
      if (this.overflow === 'raise') throw new QueueFullError(`queue is full (${this.maxQueue} events)`);
      this._queue.shift();
      this.stats.dropped += 1;
      const now = Date.now();
      if (now - this._warnedAt >= 10_000) {
        this._warnedAt = now;
        this.logger.warn(`anomalydesk: queue full (${this.maxQueue} events): dropped the oldest, `
          + `${this.stats.dropped} dropped so far`);
      }
    }
    this._queue.push(encoded);
    if (this._queue.length >= this.batchSize && !this._flushing) this.flush();
  }

  /** Send everything queued now; resolves when sent or given up. A flush already running is
   * returned (it sends what is queued meanwhile too), never a second one started. */
  flush() {
    if (this._flushing) return this._flushing;
    this._flushing = this._flushOnce().finally(() => { this._flushing = null; });
    return this._flushing;
  }

  async _flushOnce() {
    const now = Date.now();
    const parked = this._parked.splice(0, this._parked.length);
    for (const item of parked) {
      if (now - item.since >= RESEND_WINDOW_MS) {
        this.logger.warn(`anomalydesk: ${item.batch.length} event(s) of unknown outcome are too old to re-send safely`);
      } else {
        await this._sendBatch(item.batch, item.key, item.since, true);
      }
    }
    while (this._queue.length) {
      if (this._pastCloseDeadline()) {
        const left = this._queue.splice(0, this._queue.length);
        this.stats.failed += left.length;
        this.logger.warn(`anomalydesk: closing: gave up on ${left.length} queued event(s)`);
        break;
      }
      await this._sendBatch(this._queue.splice(0, this.batchSize), randomUUID(), Date.now(), false);
    }
  }

  async _sendBatch(batch, key, since, parked) {
    const n = batch.length;
    let outcome;
    try {
      outcome = this._check(await this._postWithRetries(batch, key));
    } catch (err) {
      outcome = err;
    }
    if (!(outcome instanceof Error)) {
      if (parked) this.stats.unknown -= n;
      this._account(outcome);
      return;
    }
    if (outcome instanceof GaveUp && (outcome.unknown || parked)) {
      if (!parked) {
        this.stats.unknown += n;
        this.logger.warn(`anomalydesk: ${n} event(s) may or may not be stored (${outcome.message}); `
          + 're-sent later under the same key');
      }
      this._parked.push({ batch, key, since });
      let held = this._parked.reduce((sum, item) => sum + item.batch.length, 0);
      while (held > this.maxQueue) { // memory stays bounded
        const dropped = this._parked.shift();
        held -= dropped.batch.length;
        this.logger.warn(`anomalydesk: too many events of unknown outcome: ${dropped.batch.length} stay unknown`);
      }
      return;
    }
    if (parked) this.stats.unknown -= n;
    const rejected = invalidItems(outcome);
    if (rejected) {
      this.stats.rejected += n; // a 422 stores none of the batch: all n events were refused
      this._warnRejected(n, rejected);
      return;
    }
    this.stats.failed += n;
    this.logger.warn(`anomalydesk: gave up on ${n} event(s): ${outcome.message}`);
  }

  /** Flush and stop the timer and the exit hook (idempotent). */
  async close() {
    if (this._closed) return this._flushing ?? undefined;
    this._closeDeadline ??= Date.now() + this.timeoutMs; // closing never hangs longer
    clearInterval(this._timer);
    process.removeListener('beforeExit', this._onBeforeExit);
    await this.flush();
    this._closed = true;
    return undefined;
  }

  /** The collector's GET /health body. */
  async health() {
    const response = await this._fetch(`${this.baseUrl}/health`, {
      headers: this._headers(), signal: AbortSignal.timeout(this.timeoutMs),
    });
    return response.json();
  }

  /** Start timing `endpoint`; call .stop(statusCode = 200) once (later calls do nothing). */
  timer(endpoint, { service } = {}) {
    const started = performance.now();
    let stopped = false;
    return {
      stop: (statusCode = 200) => {
        if (stopped) return undefined;
        stopped = true;
        const elapsed = performance.now() - started;
        this.sendMetric(endpoint, statusCode, elapsed, { service });
        return elapsed;
      },
    };
  }

  /** Run `fn` (sync or async) and record it as `endpoint`: 200, or 500 if it throws. */
  async time(endpoint, fn, { service } = {}) {
    const t = this.timer(endpoint, { service });
    try {
      const result = await fn();
      t.stop(200);
      return result;
    } catch (err) {
      t.stop(500);
      throw err;
    }
  }

  /**
   * Express/Connect middleware: one metric per response, recorded exactly once (on 'finish', or on
   * 'close' for a connection closed before the response finished, as status 499).
   * Options: service, endpoint(req) → "METHOD:/path", exclude (paths not recorded).
   */
  middleware({ service, endpoint, exclude = [] } = {}) {
    const skip = new Set(exclude);
    return (req, res, next) => {
      const started = performance.now();
      const path = pathOf(req.originalUrl ?? req.url);
      if (skip.has(path)) return next();
      let done = false;
      const record = () => {
        if (done) return;
        done = true;
        const status = res.writableFinished === false && !res.finished ? 499 : res.statusCode;
        const name = endpoint ? endpoint(req)
          : `${req.method}:${req.route?.path ? `${req.baseUrl ?? ''}${req.route.path}` : path}`;
        try {
          this.sendMetric(name, status, performance.now() - started, { service });
        } catch (err) {
          this.logger.warn(`anomalydesk: could not record ${name}: ${err.message}`);
        }
      };
      res.once('finish', record);
      res.once('close', record);
      return next();
    };
  }

  // --- internals -------------------------------------------------------------------------------
  _headers(idempotencyKey) {
    const headers = { 'content-type': 'application/json', 'user-agent': USER_AGENT };
    if (this.apiKey) headers.authorization = `Bearer ${this.apiKey}`;
    if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
    return headers;
  }

  _pastCloseDeadline() {
    return this._closeDeadline !== undefined && Date.now() > this._closeDeadline;
  }

  _account(body) {
    this.stats.sent += body.accepted ?? 0;
    this.stats.rejected += (body.rejected ?? []).length;
  }

  _warnRejected(n, rejected) {
    this.logger.warn(`anomalydesk: collector rejected ${n} event(s), first: ${JSON.stringify(rejected[0])}`);
  }

  _check({ status, body }) {
    if (status === 200 || status === 202) {
      if (body.rejected?.length) this._warnRejected(body.rejected.length, body.rejected);
      return body;
    }
    throw new AnomalyClientError(`collector answered ${status}: ${body.error ?? JSON.stringify(body)}`,
      { status, body });
  }

  _delay(attempt, retryAfter) {
    const seconds = Number.parseFloat(retryAfter ?? '');
    if (Number.isFinite(seconds)) return Math.min(Math.max(seconds * 1000, 0), this.backoffMaxMs);
    return Math.random() * Math.min(this.backoffMaxMs, this.backoffMs * 2 ** attempt);
  }

  async _postWithRetries(encoded, key = randomUUID()) {
    const body = `[${encoded.join(',')}]`;
    const headers = this._headers(key); // one key for every attempt of this batch
    const ends = Date.now() + this.retryForMs;
    let unknown = false;
    for (let attempt = 0; ; attempt += 1) {
      let message;
      let status;
      let parsed;
      let retryAfter;
      try {
        const response = await this._fetch(`${this.baseUrl}/metrics`, {
          method: 'POST', headers, body, signal: AbortSignal.timeout(this.timeoutMs),
        });
        const text = await response.text();
        try { parsed = text ? JSON.parse(text) : {}; } catch { parsed = { error: text.slice(0, 200) }; }
        if (!retryable(response.status)) return { status: response.status, body: parsed };
        unknown ||= mayBeStored(response.status, parsed);
        status = response.status;
        message = `collector answered ${response.status}`;
        retryAfter = response.headers.get('retry-after');
      } catch (err) {
        unknown ||= !neverSent(err);
        message = `collector unreachable: ${err.cause?.message ?? err.message}`;
      }
      const left = ends - Date.now();
      if (attempt >= this.maxRetries || left <= 0 || this._pastCloseDeadline()) {
        throw new GaveUp(message, { status, body: parsed, unknown });
      }
      let delay = Math.min(this._delay(attempt, retryAfter), left);
      if (this._closeDeadline !== undefined) delay = Math.min(delay, Math.max(0, this._closeDeadline - Date.now()));
      await sleep(delay);
    }
  }
}

export default AnomalyClient;
