"""The desktop app's settings: a typed, versioned dataclass saved as JSON (Qt-free).

Stored in `config.config_dir()/app.json` (`$ANOMALYDESK_CONFIG_DIR` moves it; tests point it at a
temp dir). Never pickle. Unknown keys are ignored and older versions are migrated forward, so a file
written by another release still loads. The Redis password is not in this file: it goes to the OS
keyring, or — where no usable keyring exists (a headless box, the null backend in tests) — to
`secrets.json` beside it with mode 0600, and `secret_store_description()` says which was used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomalydesk import config

log = logging.getLogger(__name__)

SETTINGS_VERSION = 2
SETTINGS_FILE = "app.json"
SECRETS_FILE = "secrets.json"
KEYRING_SERVICE = "anomalydesk"

# --- app defaults (UI timing and sizes) -------------------------------------------------------
LIVE_CAPACITY = 3_600  # windows kept per service in the live ring buffers (5 h of 5 s windows)
REDRAW_INTERVAL_MS = 250  # fixed-rate plot redraw
DETAIL_PLOT_POINTS = 4_000  # an incident's details plot holding more is reduced to min/max time bins
DETAIL_RETRY_FIRST_SECONDS = 2.0  # a failed read of an open incident's new windows is tried again after this,
DETAIL_RETRY_CAP_SECONDS = 60.0  # twice as long after each failure up to this; back to the first on a success
STATUS_POLL_SECONDS = 2.0
FINGERPRINT_BLOCK_MS = 500
# the fingerprint reader reads at most this often: the detector stores a fleet's scores one service
# after the other, and a read per arriving score (100 XREADs over 200 streams at every window boundary)
# kept the GUI thread busy while the plots painted; the plots redraw every REDRAW_INTERVAL_MS anyway
FINGERPRINT_READ_INTERVAL_S = 0.25
RECONNECT_BASE_SECONDS = 0.25
RECONNECT_CAP_SECONDS = 5.0
NOTIFY_MIN_INTERVAL_SECONDS = 5.0  # at most one notification per incident within this time
NOTIFY_PAUSE_SECONDS = 3_600
INCIDENT_ROWS_MAX = 2_000  # the incidents table keeps at most this many incidents
# the incidents table holds still while the pointer is over it; once the pointer has been away this long,
# what arrived meanwhile is shown (a pointer on its way to the "N new incidents" hint crosses a gap)
INCIDENT_HOLD_GRACE_MS = 300
INCIDENT_MESSAGE_SECONDS = 15.0  # a confirmation beside the incident buttons goes after this (as in the status bar)
CATCHUP_MAX_ALERTS = 5_000
SILENT_FINGERPRINT_WARN_WINDOWS = 3  # warn when no fingerprint arrived for this many windows
NO_TRAFFIC_WINDOWS = 3  # silent windows in a row before the Live panel says "no traffic since …"
TRAIN_PROGRESS_MIN_INTERVAL = 0.1  # seconds between progress updates marshalled to the GUI
CONNECTION_STATUS_MAX_WIDTH = 480  # px of the status bar the connection's state may take; messages get the rest
LEARNING_REFRESH_MS = 15_000  # how often the Training panel re-reads "learning (N more windows)" while one learns
GC_INTERVAL_MS = 500  # the GUI thread runs the garbage collector this often (automatic collection is off)
DEMO_DEFAULT_RATE = 200
DEMO_DEFAULT_SERVICES = 5
BACKFILL_SECONDS = 86_400
FAULT_KINDS = ("latency", "errors", "drop", "spike", "new-dependency", "business", "shift")
DEFAULT_LIVE_FEATURES = ("requests", "rate_5xx", "latency_p95_ms")
DEFAULT_LIVE_SPAN_SECONDS = 3_600  # the live plots show the last hour, following live


@dataclass
class AppSettings:
    """Everything the app remembers between runs (the password excepted)."""

    version: int = SETTINGS_VERSION
    redis_url: str = ""  # empty: $ANOMALYDESK_REDIS_URL, else the embedded server
    tls: bool = False
    username: str = ""
    close_to_tray: bool = True
    start_at_login: bool = False
    offer_backfill: bool = True
    run_detector: bool = True  # the in-process detector (runs only while no other holds the lease)
    demo_rate: int = DEMO_DEFAULT_RATE
    demo_services: int = DEMO_DEFAULT_SERVICES
    train_windows: int = 17_280
    train_trees: int = 200
    train_false_alarm_rate: float = 0.01
    live_service: str = ""
    live_features: list[str] = field(default_factory=lambda: list(DEFAULT_LIVE_FEATURES))
    live_span_seconds: int = DEFAULT_LIVE_SPAN_SECONDS  # the live plots' time range (a preset, or a zoom)
    notifications_paused_until: float = 0.0
    geometry: str = ""  # QMainWindow.saveGeometry(), base64
    window_state: str = ""  # QMainWindow.saveState() (dock layout), base64

    def to_json(self) -> str:
        """The settings as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppSettings:
        """Build from a parsed file: migrate, drop unknown keys, check each value's type."""
        if not isinstance(data, dict):
            raise ValueError(f"settings must be a JSON object, got {type(data).__name__}")
        data = _migrate(dict(data))
        defaults = cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value, default = data[f.name], getattr(defaults, f.name)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"settings.{f.name}: expected true/false, got {value!r}")
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, type(default)):
                raise ValueError(f"settings.{f.name}: expected {type(default).__name__}, got {value!r}")
            values[f.name] = value
        values["version"] = SETTINGS_VERSION
        return cls(**values)


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    version = data.get("version", 1)
    if not isinstance(version, int) or version > SETTINGS_VERSION:
        raise ValueError(f"settings.version {version!r} is newer than this app understands ({SETTINGS_VERSION})")
    if version < 2:
        # v1 kept the dock layout under "dock_state"
        if "dock_state" in data:
            data["window_state"] = data.pop("dock_state")
        data["version"] = 2
    return data


def settings_path() -> Path:
    """Where the settings file lives."""
    return config.config_dir() / SETTINGS_FILE


def load(path: Path | None = None) -> AppSettings:
    """Read the settings; a missing file gives defaults, a broken one is logged and replaced by defaults."""
    path = path or settings_path()
    if not path.exists():
        return AppSettings()
    try:
        return AppSettings.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, OSError) as err:
        log.warning("ignoring unreadable settings %s: %s", path, err)
        return AppSettings()


def save(settings: AppSettings, path: Path | None = None) -> Path:
    """Write the settings atomically (temp file + rename)."""
    path = path or settings_path()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(settings.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- secrets ----------------------------------------------------------------------------------
def _keyring_usable() -> bool:
    try:
        import keyring

        return keyring.get_keyring().priority > 0
    except Exception:  # no backend at all, or one that cannot even report its priority
        return False


def secret_store_description() -> str:
    """Where passwords go on this machine, in words for the UI and the log."""
    if _keyring_usable():
        import keyring

        return f"OS keyring ({type(keyring.get_keyring()).__name__})"
    return f"no OS keyring available: file {config.config_dir() / SECRETS_FILE} (mode 0600)"


def password_placeholder() -> str:
    """The password field's hint: where a password typed there will be kept (as `secret_store_description`)."""
    if _keyring_usable():
        return "stored in the OS keyring"
    return f"stored in {SECRETS_FILE} (no OS keyring available)"


def _secrets_file() -> Path:
    return config.config_dir() / SECRETS_FILE


def _read_secrets_file() -> dict[str, str]:
    path = _secrets_file()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def set_password(account: str, password: str) -> str:
    """Store a password for `account`; returns where it went (see `secret_store_description`)."""
    if _keyring_usable():
        import keyring

        keyring.set_password(KEYRING_SERVICE, account, password)
        return secret_store_description()
    data = _read_secrets_file()
    data[account] = password
    path = _secrets_file()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.chmod(path, 0o600)
    where = secret_store_description()
    log.warning("password for %s stored in %s", account, where)
    return where


def get_password(account: str) -> str | None:
    """The stored password for `account`, or None."""
    if _keyring_usable():
        import keyring

        return keyring.get_password(KEYRING_SERVICE, account)
    return _read_secrets_file().get(account)
