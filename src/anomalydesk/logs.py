"""Logging for every AnomalyDesk process: stderr at the command's verbosity, plus a rotating log file.

Each process writes `<log dir>/<process>.log` (the data dir's `logs/`, or `$ANOMALYDESK_LOG_DIR`),
rotated at `config.LOG_MAX_BYTES` with `config.LOG_BACKUP_COUNT` old files kept, at the level of
`$ANOMALYDESK_LOG_LEVEL` (default INFO). Passwords in Redis URLs are masked in every record, so
log files can be sent to support (`anomalydesk diagnose` collects them).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from pathlib import Path

from anomalydesk import config

FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_PROCESS_NAME = re.compile(r"[^A-Za-z0-9._-]")
_OURS = "_anomalydesk_handler"


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


class RedactingFilter(logging.Filter):
    """Masks URL passwords in the formatted message (arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message once, with passwords masked; never drops a record."""
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def log_dir() -> Path:
    """Where log files go: $ANOMALYDESK_LOG_DIR, else `logs/` in the data dir."""
    override = os.environ.get(config.ENV_LOG_DIR)
    return Path(override) if override else config.data_dir() / "logs"


def file_level() -> int:
    """The log file's level from $ANOMALYDESK_LOG_LEVEL (DEBUG, INFO, WARNING, ERROR); INFO by default."""
    name = os.environ.get(config.ENV_LOG_LEVEL, config.LOG_DEFAULT_LEVEL).strip().upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ValueError(f"${config.ENV_LOG_LEVEL} must be DEBUG, INFO, WARNING or ERROR, not {name!r}")
    return level


def setup(process: str, verbosity: int = 0, *, to_file: bool = True) -> Path | None:
    """Configure the root logger for this process; returns the log file (None if it cannot be written).

    `verbosity` 0/1/2 puts WARNING/INFO/DEBUG on stderr. Calling it again replaces what it installed.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
        handler.close()
    redacting = RedactingFilter()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING - 10 * max(0, min(verbosity, 2)))
    handlers: list[logging.Handler] = [console]
    path: Path | None = None
    try:
        level = file_level()
    except ValueError as err:  # a typo in the environment must not stop the command
        print(f"anomalydesk: {err}; using {config.LOG_DEFAULT_LEVEL}", file=sys.stderr)
        level = logging.getLevelName(config.LOG_DEFAULT_LEVEL)
    if to_file:
        name = _PROCESS_NAME.sub("_", process) or "anomalydesk"
        path = log_dir() / f"{name}.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            rotating = logging.handlers.RotatingFileHandler(
                path, maxBytes=config.LOG_MAX_BYTES, backupCount=config.LOG_BACKUP_COUNT, encoding="utf-8"
            )
            rotating.setLevel(level)
            handlers.append(rotating)
        except OSError as err:  # a read-only home must not stop the command; say so on stderr
            print(f"anomalydesk: cannot write the log file {path}: {err}", file=sys.stderr)
            path = None
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(redacting)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(min(h.level for h in handlers))
    return path


def log_files() -> list[Path]:
    """Every log file (current and rotated), newest first."""
    directory = log_dir()
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.log*"), key=lambda p: p.stat().st_mtime, reverse=True)
