// Type declarations for anomalydesk-client (ESM, Node >= 18).
import type { IncomingMessage, ServerResponse } from 'node:http';

/** A request metric in the collector's format. `status_code`/`response_time` may sit inside `metrics`. */
export interface MetricEvent {
  service?: string;
  endpoint: string;
  status_code?: number;
  /** milliseconds */
  response_time?: number;
  /** epoch seconds or RFC 3339 */
  timestamp?: number | string;
  metrics?: Record<string, number>;
  [extra: string]: unknown;
}

export interface BusinessMetricEvent {
  metric_name: string;
  value: number;
  expected_range?: [number, number];
  service?: string;
  timestamp?: number | string;
}

export interface Rejection {
  index: number | null;
  field: string;
  reason: string;
}

export interface IngestAnswer {
  accepted: number;
  rejected: Rejection[];
}

export interface ClientStats {
  /** events the collector stored */
  sent: number;
  /** events the collector refused as invalid */
  rejected: number;
  /** events dropped because the queue was full (overflow "drop-oldest") */
  dropped: number;
  /** events given up on, certainly not stored (refused for another reason than invalid events, e.g. a
   * wrong key or a body too large, or the collector was never reached) */
  failed: number;
  /** events whose batch may or may not be stored; re-sent under the same key at the next flush.
   * Once closed: sent + rejected + unknown + failed + dropped = events produced. */
  unknown: number;
}

export interface ClientOptions {
  apiKey?: string;
  /** default service of sendMetric() */
  service?: string;
  /** send when this many events are queued (default 500) */
  batchSize?: number;
  /** and at least this often (default 1000 ms) */
  flushIntervalMs?: number;
  /** queue bound (default 10000) */
  maxQueue?: number;
  /** full queue: drop the oldest event and count it (default), or throw QueueFullError */
  overflow?: 'drop-oldest' | 'raise';
  /** how long a batch is retried on network errors, 5xx and 429 (default 30000 ms); other 4xx never */
  retryForMs?: number;
  /** a cap on the number of retries besides retryForMs (default none) */
  maxRetries?: number;
  backoffMs?: number;
  backoffMaxMs?: number;
  timeoutMs?: number;
  fetch?: typeof fetch;
  logger?: { warn(message: string): void };
}

export interface Timer {
  /** Record once with this status (default 200); returns the elapsed milliseconds (undefined if already stopped). */
  stop(statusCode?: number): number | undefined;
}

export interface MiddlewareOptions {
  service?: string;
  /** name of the endpoint, default `${req.method}:${route or path}` */
  endpoint?: (req: IncomingMessage & Record<string, any>) => string;
  /** paths not recorded, e.g. ["/healthz"] */
  exclude?: string[];
}

export type Middleware = (
  req: IncomingMessage & Record<string, any>,
  res: ServerResponse,
  next: (err?: unknown) => void,
) => void;

export class AnomalyClientError extends Error {
  status?: number;
  body: Record<string, unknown>;
  constructor(message: string, details?: { status?: number; body?: Record<string, unknown> });
}

export class QueueFullError extends AnomalyClientError {}

export class AnomalyClient {
  constructor(baseUrl: string, options?: ClientOptions);
  readonly baseUrl: string;
  readonly stats: ClientStats;
  sendMetric(endpoint: string, statusCode: number, responseTime: number,
    options?: { service?: string; timestamp?: number | string }): void;
  sendMetric(event: MetricEvent): void;
  sendBusinessMetric(name: string, value: number, expectedRange?: [number, number] | null,
    service?: string | null, options?: { timestamp?: number | string }): void;
  sendBatch(events: Array<MetricEvent | BusinessMetricEvent>): Promise<IngestAnswer>;
  record(event: MetricEvent | BusinessMetricEvent): void;
  flush(): Promise<void>;
  close(): Promise<void>;
  health(): Promise<Record<string, unknown>>;
  timer(endpoint: string, options?: { service?: string }): Timer;
  time<T>(endpoint: string, fn: () => T | Promise<T>, options?: { service?: string }): Promise<T>;
  middleware(options?: MiddlewareOptions): Middleware;
}

/** Batches of unknown outcome are re-sent under their key for this long (the store keeps keys 600 s). */
export const RESEND_WINDOW_MS: number;

export default AnomalyClient;
