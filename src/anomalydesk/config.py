"""Constants, defaults and the on-disk locations every part of AnomalyDesk shares.

Defaults live here and nowhere else; environment variables override the locations so tests never
touch a user's real data or settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from anomalydesk import contract

APP_NAME = "anomalydesk"
APP_TITLE = "AnomalyDesk"  # what the desktop shows: window title, tray, the name notifications come from

# --- environment ------------------------------------------------------------------------------
ENV_REDIS_URL = "ANOMALYDESK_REDIS_URL"
ENV_DATA_DIR = "ANOMALYDESK_DATA_DIR"
ENV_CONFIG_DIR = "ANOMALYDESK_CONFIG_DIR"
ENV_PREFIX = "ANOMALYDESK_PREFIX"

# --- Redis layout -----------------------------------------------------------------------------
DEFAULT_PREFIX = "ad:"
GEARS_LIBRARY = "anomalydesk"
ALERT_LOG_MAXLEN = 10_000

# --- windows and sketches (what `setup` writes when not told otherwise) ------------------------
DEFAULT_WINDOW_SECONDS = 5
DEFAULT_CMS_ERROR = 0.001  # additive error as a fraction of the service's total count
DEFAULT_CMS_PROB = 0.01  # probability the error bound is exceeded
DEFAULT_FILTER_CAPACITY = 10_000  # interactions per service before the filter adds a layer
DEFAULT_FILTER_ERROR = 0.001
DEFAULT_TOPK = 10
DEFAULT_RETENTION_WINDOWS = 17_280 * 2  # two days of 5 s windows per fingerprint stream
REPLAY_CLOCK_HOLD_SECONDS = 30  # a replaying service is sealed by its event clock for this long
DEFAULT_RAW_SAMPLE = 0.0  # full-fidelity mode: share of events also kept raw (0 = off, 1 = all)
RAW_STREAM_MAXLEN = 100_000  # raw events kept per service (trimmed stream)
# upper bounds on the sketch sizes a setup may choose (the contract's: gears/anomalydesk.lua refuses
# larger ones too): at most 2 × 16 MiB of Count-Min Sketch, a first filter layer of at most ~54 MB and
# 10,000 Top-K counters per service
SKETCH_MAX_CMS_WIDTH = contract.MAX_CMS_WIDTH
SKETCH_MAX_CMS_DEPTH = contract.MAX_CMS_DEPTH
SKETCH_MAX_CMS_COUNTERS = contract.MAX_CMS_COUNTERS
SKETCH_MAX_FILTER_CAPACITY = contract.MAX_FILTER_CAPACITY
SKETCH_MIN_FILTER_ERROR = contract.MIN_FILTER_ERROR
SKETCH_MAX_TOPK = contract.MAX_TOPK

# --- names ------------------------------------------------------------------------------------
SERVICE_NAME_MAX = contract.MAX_SERVICE_NAME
ENDPOINT_MAX = contract.MAX_ENDPOINT
METRIC_NAME_MAX = contract.MAX_KPI_NAME
BUSINESS_PSEUDO_SERVICE = "business"
MAX_ABS_VALUE = 1e12  # business values and range bounds (a batch's sums stay exact and within the server's 1e18)
MAX_LATENCY_MS = 1e9  # about 11.6 days
# event timestamps further than this from the present are refused (a unit mistake: ms or µs, not s)
TIMESTAMP_MIN = 946_684_800.0  # 2000-01-01
TIMESTAMP_MAX = 4_102_444_800.0  # 2100-01-01

# --- ingestion (client side) ------------------------------------------------------------------
SINK_MAX_BATCH_EVENTS = 5_000  # events pre-aggregated into one FCALL
SINK_FLUSH_SECONDS = 0.05
SINK_MAX_BUFFERED_EVENTS = 200_000  # bounded buffer; beyond it `send` raises BufferFull
SINK_RETRY_ATTEMPTS = 8
SINK_RETRY_BASE_SECONDS = 0.05
SINK_RETRY_MAX_SECONDS = 2.0

# --- HTTP collector (`anomalydesk collect`) ------------------------------------------------------
COLLECTOR_DEFAULT_HOST = "127.0.0.1"
COLLECTOR_DEFAULT_PORT = 4000
COLLECTOR_MAX_BODY_BYTES = 8 * 1024 * 1024  # larger bodies get 413
COLLECTOR_MAX_BATCH_EVENTS = 10_000  # more events in one request get 413
# concurrent requests merged into one ingest call up to this size: a merged write is one FCALL per service
# and Redis's work per FCALL grows with its distinct endpoints, not its events, so under load the write
# should carry hundreds of events per service (5,000 gave about 100 each at 50 services; docs/benchmarks.md)
COLLECTOR_MICROBATCH_EVENTS = 50_000
# ... but while Redis is slow (a merged write failed or took longer than this) at most this many: a request
# still in the queue can be given up by its client and is never written, one inside a write cannot be recalled
COLLECTOR_MERGE_STALL_SECONDS = 1.0
COLLECTOR_STALLED_MERGE_EVENTS = 5_000
COLLECTOR_MICROBATCH_SECONDS = 0.002  # ... or until the oldest waiting event is this old
COLLECTOR_MAX_INFLIGHT_INGESTS = 8  # concurrent ingest calls to Redis
COLLECTOR_MERGED_INFLIGHT = 2  # merged writes at once: one written, the next one growing
COLLECTOR_RATE_PER_KEY = 2_000.0  # requests per second per API key (or per client address without keys)
COLLECTOR_RATE_BURST = 4_000.0
COLLECTOR_RETRY_AFTER_SECONDS = 2  # Retry-After on 503 (Redis unreachable)
COLLECTOR_KEYS_RELOAD_SECONDS = 1.0  # how often --api-keys-file is checked for changes
COLLECTOR_API_KEY_MIN_LENGTH = 16
COLLECTOR_IDEMPOTENCY_KEY_MAX = 128
# stalls and outages (issue 19): every request is answered within the deadline, memory stays bounded
COLLECTOR_DEADLINE_SECONDS = 3.0  # a request's Redis work must end this long after it arrived, else 503
COLLECTOR_HEALTH_DEADLINE_SECONDS = 2.0  # GET /health: Redis must answer PING within this, else 503
COLLECTOR_MAX_PENDING_EVENTS = 100_000  # events admitted and not yet answered; beyond: 503 + Retry-After
COLLECTOR_MAX_PENDING_BYTES = 64 * 1024 * 1024  # request bodies held at once; beyond: 503 + Retry-After

# --- demo traffic (`anomalydesk demo`, the app's demo panel) ------------------------------------
DEMO_DEFAULT_RATE = 200.0  # events/s over all services, the mean over a simulated day
DEMO_DEFAULT_SERVICES = 5
DEMO_MAX_SERVICES = 200
DEMO_MAX_RATE = 1_000_000.0
DEMO_FAST_DEFAULT_SECONDS = 86_400  # `demo --fast` without --duration backfills one day
DEMO_FAST_CHUNK_SECONDS = 300  # at most this many simulated seconds per step (whole windows) …
DEMO_FAST_CHUNK_EVENTS = 200_000  # … and about at most this many events (high rates: shorter steps)
DEMO_TICK_SECONDS = 0.1  # live mode: one numpy batch per service per tick
DEMO_HANDOVER_SECONDS = 0.3  # live mode starts no later than this before a window boundary (or a quarter window)
DEMO_STOP_RECORD_PATIENCE_SECONDS = 600.0  # stopped in an outage: the stop is recorded when Redis is back, this long
DEMO_WINDOW_REFRESH_SECONDS = 1.0  # live mode re-reads the window length this often (`setup --window … --force`)
DEMO_OUTAGE_RETRY_SECONDS = 0.25  # live demo traffic waits this long (doubling) while Redis is unreachable …
DEMO_OUTAGE_RETRY_MAX_SECONDS = 5.0  # … up to this
DEMO_RATE_WINDOW_SECONDS = 2.0  # `events_per_second` is measured over this trailing span
DEMO_INJECT_DEFAULT_SECONDS = 60
DEMO_INJECT_DEFAULT_SERVICE = "payments"
DEMO_TRUTH_MAXLEN = 10_000  # ground-truth stream entries kept (MAXLEN ~)
DEMO_FAULT_LATENCY_FACTOR = 5.0  # latency: response times ×5
DEMO_SHIFT_LATENCY_FACTOR = 1.5  # shift: response times ×1.5 from a simulated deploy on, permanently
DEMO_FAULT_ERROR_RATE = 0.2  # errors: this share of otherwise successful requests answers 5xx
DEMO_FAULT_DROP_FRACTION = 0.8  # drop: 80 % fewer requests
DEMO_FAULT_SPIKE_FACTOR = 5.0  # spike: 5× requests
DEMO_FAULT_NEW_DEPENDENCY_SHARE = 0.15  # new-dependency: share of calls going to never-used endpoints
DEMO_FAULT_BUSINESS_FACTOR = 0.3  # business: KPI values ×0.3

# --- connection -------------------------------------------------------------------------------
SOCKET_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 3.0
HEALTH_CHECK_INTERVAL_SECONDS = 15
RETRY_ATTEMPTS = 3
RETRY_BACKOFF_BASE_SECONDS = 0.1  # 0.2 s, 0.4 s, 0.8 s … between reconnect attempts
RETRY_BACKOFF_CAP_SECONDS = 2.0
CLUSTER_PROBE_TIMEOUT_SECONDS = 0.5  # unchecked clients (connect_async, check=False) ask the node once, this long
MIN_REDIS_VERSION = (7, 0)  # Redis Functions

# --- logs and diagnostics (docs/reliability.md) ------------------------------------------------
ENV_LOG_DIR = "ANOMALYDESK_LOG_DIR"  # default: data_dir()/logs
ENV_LOG_LEVEL = "ANOMALYDESK_LOG_LEVEL"  # level of the log files (stderr follows -v)
LOG_DEFAULT_LEVEL = "INFO"
LOG_MAX_BYTES = 5 * 1024 * 1024  # one process's log file is rotated at this size …
LOG_BACKUP_COUNT = 5  # … keeping this many old files (at most 30 MB per process)
DIAGNOSE_LOG_TAIL_BYTES = 1024 * 1024  # `diagnose` takes the last this-many bytes of each log file

# --- embedded server (a private redis-server when no URL is configured) -------------------------
ENV_REDIS_SERVER = "ANOMALYDESK_REDIS_SERVER"  # path to a redis-server binary, else bundled, else PATH
EMBEDDED_INFO_FILE = "embedded.json"  # in data_dir(): URL with password, pid, port (mode 0600)
EMBEDDED_LOCK_FILE = "embedded.lock"
EMBEDDED_SUBDIR = "redis"  # in data_dir(): redis.conf, AOF, redis.log
EMBEDDED_PASSWORD_BYTES = 32  # secrets.token_urlsafe(32): 43 characters
EMBEDDED_START_TIMEOUT_SECONDS = 30.0  # includes loading a large AOF
EMBEDDED_STOP_TIMEOUT_SECONDS = 60.0
EMBEDDED_LOCK_TIMEOUT_SECONDS = 90.0  # longer than a start: the second command waits for the first

# --- detection --------------------------------------------------------------------------------
SEVERITY_WARNING = 70.0
SEVERITY_CRITICAL = 90.0
MODEL_KEEP_VERSIONS = 5  # model versions kept per service (the active one is never dropped)
INCIDENT_CONFIRM_K = 2  # an incident opens when K of the last N windows are anomalous …
INCIDENT_CONFIRM_N = 3
INCIDENT_COOLDOWN_WINDOWS = 3  # … and resolves after this many normal windows in a row
INCIDENT_OPEN_SCORE = 72.0  # … one of those K scoring at least this (a tenth of the way to critical); any
# anomalous window (>= SEVERITY_WARNING) extends an open incident. Chosen on ASD omi-1 … 6 (docs/detection.md)
INCIDENT_NEW_REASON_WINDOWS = 2  # a top reason no alert named yet, leading this many windows: escalation
DETECTOR_GROUP = "detectors"  # consumer group on every fingerprint stream
DETECTOR_LEASE_MS = 15_000  # Keys.detector_lease: "a detector is running" (the app's detector yields)
DETECTOR_SERVICE_LEASE_MS = 15_000  # one detector owns a service at a time (ordered scoring)
DETECTOR_BLOCK_MS = 500  # XREADGROUP block per step
DETECTOR_READ_COUNT = 200  # fingerprints read per service per step
DETECTOR_HISTORY_WINDOWS = 12  # recent fingerprints kept per service as scoring context
RETRAIN_HOLDOUT_FRACTION = 0.2  # newest normal windows held back to compare old and new model
# training and scoring (detect/train.py, detect/score.py; docs/detection.md says why these values)
# `train --worker` and `detect --worker` (the app's training and detector children) lower their CPU priority by
# this: the GUI thread gets a core first when the detector scores a fleet at a window boundary (the fleet stall)
WORKER_NICENESS = 10
MIN_TRAINING_WINDOWS = 256  # fewer windows of history: the service is still "learning"
# a run of windows without any event lasting this long (and at least 2 windows) is a gap in the data
# (the producers were down, nothing ran), not zero traffic to learn from: training leaves it out
TRAINING_GAP_SECONDS = 60
DEFAULT_TREES = 100
DEFAULT_MAX_SAMPLES = 256  # windows drawn per tree
OOB_MIN_TREE_SHARE = 0.1  # out-of-bag calibration: at least this share of the trees must be far from a window
DEFAULT_FALSE_ALARM_RATE = 0.02  # share of normal windows allowed above the threshold (before k-of-n)
FALSE_ALARM_WINDOWS_PER_DAY = 1.0  # … and at most this many a day when the window length is known (extrapolated)
MODEL_CONTEXT_ROWS = 6  # recent fingerprints (this one included) behind each window's features
TRAIN_CHUNK_TREES = 10  # trees grown between progress reports and cancel checks (the trees do not depend on it)
DAILY_CYCLE_MIN_SECONDS = 86_400  # training history spanning this long models the time of day
SCORE_AT_MEDIAN = 35.0  # calibrated score of a typical training window (threshold → SEVERITY_WARNING)
DEVIATION_ALARM_SHARE = 0.25  # share of the false-alarm budget given to the largest-|z| verdict
THRESHOLD_TAIL_WINDOWS = 20  # a threshold exceeded by fewer training windows is extrapolated (exponential tail)
# contamination-aware forest threshold (thresholds.training_contamination): the share of training windows whose
# out-of-bag score lies beyond median + CONTAMINATION_FENCE_IQRS · IQR (counted only when at least
# THRESHOLD_TAIL_WINDOWS windows lie there) is added to the forest's share, at most CONTAMINATION_MAX_FACTOR × it
CONTAMINATION_FENCE_IQRS = 3.5  # clean AR(1) training sets: at most 2 of 6,000 windows beyond it
CONTAMINATION_MAX_FACTOR = 2.0
EVIDENCE_COLUMN = "requests"  # per-request statistics are weighted by the requests behind them …
# … each with its pseudo-count a (deviation × n / (n + a), features.shrink): a tail quantile needs
# more requests behind it than a ratio or a median before it means as much
EVIDENCE_PSEUDO_REQUESTS = {
    "rate_4xx": 500.0, "rate_5xx": 500.0, "latency_p50_ms": 500.0, "latency_mean_ms": 500.0,
    "latency_p95_ms": 500.0, "latency_p99_ms": 1000.0, "top_endpoint_share": 500.0, "endpoint_entropy": 500.0,
}
MODEL_IGNORED_FEATURES = ("kpi_out_of_range",)  # judged by the business rules (incident_flow), not the model
# latencies are used as log(1 + ms), like counts: log-normal response times make their quantiles heavy-tailed in ms
MODEL_LOG_FEATURES = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_mean_ms")
DEVIATION_EXTREME_QUANTILE = 0.9999  # an input's training extreme: this quantile of its |z| …
DEVIATION_EXTREME_FLOOR = 1.0  # … at least this; reasons rank features by |z| / extreme
DEVIATION_EXTREME_POWER = 0.75  # the largest-|z| verdict divides each |z| by (extreme / median extreme) ** this
# drift-aware scoring (detect/baseline.py): level inputs measured against the median of the last L windows,
# L = training windows / BASELINE_TRAINING_FRACTION, within [MIN, MAX] windows and at most MAX_SECONDS of windows
BASELINE_TRAINING_FRACTION = 8
BASELINE_MIN_WINDOWS = 16
BASELINE_MAX_WINDOWS = 4_096
BASELINE_MAX_SECONDS = 6 * 3600
LEVEL_SHIFT_WANDER_FACTOR = 2.0  # a level shift: the baseline beyond this many times its largest training wander …
LEVEL_SHIFT_MIN_Z = 3.0  # … and beyond the value's training extreme |z|, and at least this many training IQRs
LEVEL_SHIFT_STEP_MIN_Z = 1.0  # a step (the newest K/4 + 1 block medians): twice training's largest, and this many IQRs
STUCK_SCORE = 75.0  # a feature that never stood still over a context in training and now does: a warning
STUCK_ZERO_CHANCE = 1e-6  # … a share of requests at 0 only when its requests make that this unlikely
LEVEL_SHIFT_RENOTIFY_SECONDS = 4 * 3600  # an open level-shift incident not accepted notifies again this often
# an accepted shift takes along a feature that had moved at least this share of its threshold by then, when it
# shifts (further) to the same side within LEVEL_SHIFT_FOLLOW_SECONDS, ending no farther from where it started
# than LEVEL_SHIFT_FOLLOW_GROWTH times its move at the acceptance, or LEVEL_SHIFT_FOLLOW_ALLOWANCE step thresholds
# (both with the evidence shrinkage undone): one change, one decision (detect/drift.py)
LEVEL_SHIFT_FOLLOW_SHARE = 0.25
LEVEL_SHIFT_FOLLOW_SECONDS = 24 * 3600  # a night's weak evidence shows a change in full only by day
LEVEL_SHIFT_FOLLOW_GROWTH = 3.0  # the baseline lags, and shrinks a night: a move is seen in part at first
LEVEL_SHIFT_FOLLOW_ALLOWANCE = 1.5
REASONS_MAX = 3  # contributing features named per anomalous window
REASON_MIN_DEVIATION = 2.0  # robust z-score below which a feature is not named (unless it is the top)
REASON_MIN_CHANGE = 0.10  # … nor when its value, average or range moves less than this share of normal (ditto)
BACKTEST_TRAIN_FRACTION = 0.3  # backtest without --train: the first 30 % of TEST trains
REFERENCE_TREES = 100  # backtest --reference: plain IsolationForest …
REFERENCE_PERCENTILE = 99.0  # … threshold at this percentile of its training scores …
REFERENCE_SEEDS = (0, 1, 2, 3, 4)  # … averaged over these seeds
DETECTOR_CATCHUP_WINDOWS = 720  # a new consumer group starts this many fingerprints back
DETECTOR_REFRESH_SECONDS = 1.0  # leases, service list and models re-read at most this often (silences: every batch)
INCIDENTS_KEPT = 5_000  # resolved incidents kept in Keys.incidents (the oldest are forgotten)
SNOOZE_MAX_SECONDS = 30 * 86_400  # an incident's snooze lasts at most this; longer is a silence's or resolve's job
INCIDENT_PRUNE_SECONDS = 600  # how often a detector prunes them
RULE_SCORE_BASE = 60.0  # business rule score = base + per_distance × (distance beyond the bound crossed,
RULE_SCORE_PER_DISTANCE = 90.0  # as a share of that bound): 1/9 → warning (70), 1/3 → critical (90)

# --- integrations: OTLP receiver, Prometheus scrape, webhooks (docs/integrations.md) -------------
ENV_METRIC_MAP = "ANOMALYDESK_METRIC_MAP"  # mapping file (TOML) the collector's OTLP receiver reads
OTLP_PATH = "/v1/metrics"
OTLP_STATE_TTL_SECONDS = 86_400  # per-service cumulative state expires a day after its last report
OTLP_FIRST_POINT_MAX_AGE_SECONDS = 300.0  # a new cumulative series older than this is a baseline only
OTLP_UNKNOWN_NAMES_MAX = 1_000  # distinct unknown metric names counted by name; the rest as "(other)"
SCRAPE_DEFAULT_INTERVAL_SECONDS = 15.0
SCRAPE_TIMEOUT_SECONDS = 10.0
SCRAPE_STATE_TTL_SECONDS = 86_400
WEBHOOK_TIMEOUT_SECONDS = 10.0
WEBHOOK_BACKOFF_BASE_SECONDS = 1.0  # a failing route waits 1 s, 2 s, 4 s … between attempts
WEBHOOK_BACKOFF_MAX_SECONDS = 60.0
WEBHOOK_GIVE_UP_SECONDS = 3_600.0  # an alert still undelivered this long after it was logged is dead-lettered
WEBHOOK_CLAIM_IDLE_MS = 300_000  # pending deliveries of a consumer silent this long are taken over
WEBHOOK_BLOCK_MS = 1_000
WEBHOOK_DEAD_MAXLEN = 10_000


@dataclass(frozen=True)
class SketchSettings:
    """Sizes of the per-service sketches, as `setup` stores them in the config hash."""

    window_seconds: int = DEFAULT_WINDOW_SECONDS
    cms_width: int = 0  # 0: derived from cms_error
    cms_depth: int = 0  # 0: derived from cms_prob
    cms_error: float = DEFAULT_CMS_ERROR
    cms_prob: float = DEFAULT_CMS_PROB
    filter_capacity: int = DEFAULT_FILTER_CAPACITY
    filter_error: float = DEFAULT_FILTER_ERROR
    topk: int = DEFAULT_TOPK
    retention: int = DEFAULT_RETENTION_WINDOWS
    raw_sample: float = DEFAULT_RAW_SAMPLE

    def __post_init__(self) -> None:
        """Refuse a window length outside 1 s … a day and sketch sizes beyond the SKETCH_MAX_* limits
        (ValueError naming the field and the limit)."""
        error = sketch_limits_error(self)
        if error:
            raise ValueError(error)

    def cms_dims(self) -> tuple[int, int]:
        """(width, depth) of the Count-Min Sketch: given directly, or from error and probability."""
        import math

        width = self.cms_width or math.ceil(math.e / self.cms_error)
        depth = self.cms_depth or math.ceil(math.log(1.0 / self.cms_prob))
        return width, depth


def sketch_limits_error(s: SketchSettings) -> str | None:
    """Why these sketch sizes exceed the limits (the field, its value and the limit), or None."""
    width, depth = s.cms_dims()
    derived = "" if s.cms_width else f" (from cms_error {s.cms_error:g})"
    checks = [
        (1 <= s.window_seconds <= contract.MAX_WINDOW_SECONDS,
         f"window_seconds {s.window_seconds:,} is outside 1..{contract.MAX_WINDOW_SECONDS:,} "
         "(a window is at most a day)"),
        (width <= SKETCH_MAX_CMS_WIDTH, f"cms_width {width}{derived} exceeds the limit {SKETCH_MAX_CMS_WIDTH:,}"),
        (depth <= SKETCH_MAX_CMS_DEPTH, f"cms_depth {depth}{derived and f' (from cms_prob {s.cms_prob:g})'} "
                                        f"exceeds the limit {SKETCH_MAX_CMS_DEPTH}"),
        (width * depth <= SKETCH_MAX_CMS_COUNTERS, f"cms_width × cms_depth = {width:,} × {depth} exceeds the limit "
                                                   f"{SKETCH_MAX_CMS_COUNTERS:,} counters"),
        (s.filter_capacity <= SKETCH_MAX_FILTER_CAPACITY,
         f"filter_capacity {s.filter_capacity:,} exceeds the limit {SKETCH_MAX_FILTER_CAPACITY:,}"),
        (s.filter_error >= SKETCH_MIN_FILTER_ERROR,
         f"filter_error {s.filter_error:g} is below the limit {SKETCH_MIN_FILTER_ERROR:g}"),
        (s.topk <= SKETCH_MAX_TOPK, f"topk {s.topk:,} exceeds the limit {SKETCH_MAX_TOPK:,}"),
    ]  # fmt: skip
    return next((message for ok, message in checks if not ok), None)


def data_dir() -> Path:
    """Where AnomalyDesk keeps its data (embedded Redis, logs); `$ANOMALYDESK_DATA_DIR` overrides."""
    override = os.environ.get(ENV_DATA_DIR)
    path = Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    """Where settings live; `$ANOMALYDESK_CONFIG_DIR` overrides."""
    override = os.environ.get(ENV_CONFIG_DIR)
    path = Path(override) if override else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def key_prefix() -> str:
    return os.environ.get(ENV_PREFIX, DEFAULT_PREFIX)
