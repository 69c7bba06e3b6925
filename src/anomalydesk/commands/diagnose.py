"""`anomalydesk diagnose [--output FILE]`: a zip for support — versions, settings without secrets, logs, status.

Nothing in the zip may reveal a secret: passwords in URLs are masked, and every settings value whose
name looks like a secret (password, secret, token, key, credential) is replaced by "***". No server
is started for it: the status comes from `--redis`, `$ANOMALYDESK_REDIS_URL` or an embedded server
that is already running, else the zip says why there is none.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from anomalydesk import __version__, config, logs
from anomalydesk.cli import CommandError
from anomalydesk.commands._common import emit

SECRET_NAME = re.compile(r"pass|secret|token|key|credential|auth", re.IGNORECASE)
PACKAGES = ("redis", "numpy", "scikit-learn", "orjson", "aiohttp", "platformdirs", "PySide6", "pyqtgraph",
            "qasync", "hypothesis", "anomalydesk-client")  # fmt: skip
SETTINGS_SUFFIXES = (".json", ".toml")


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `diagnose` parser."""
    p = subparsers.add_parser(
        "diagnose", parents=[parent], help="write a zip for support: versions, settings (no secrets), logs, status",
        description="Collects versions, settings with secrets removed, the recent log files and `status` "
        "into one zip file to attach to a support request. Starts no server.",
    )  # fmt: skip
    p.add_argument("--output", "-o", metavar="FILE", type=Path,
                   help="the zip to write (default: anomalydesk-diagnose-<time>.zip here)")


def scrub(value: Any, name: str = "") -> Any:
    """`value` with secret-looking entries replaced by "***" and URL passwords masked, recursively."""
    if name and SECRET_NAME.search(name) and value not in (None, "", [], {}):
        return "***"
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, name) for v in value]
    if isinstance(value, str):
        return logs.redact(value)
    return value


def versions() -> dict[str, Any]:
    """AnomalyDesk, Python, the OS and the installed packages (read from metadata: nothing is imported)."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"anomalydesk": __version__, "python": sys.version, "platform": platform.platform(),
            "executable": sys.executable, "frozen": bool(getattr(sys, "frozen", False)), "packages": packages}


def settings_files() -> dict[str, Any]:
    """Every settings file in the config dir, parsed and scrubbed (unreadable ones say why)."""
    out: dict[str, Any] = {}
    directory = config.config_dir()
    for path in sorted(directory.rglob("*")) if directory.is_dir() else []:
        if path.suffix not in SETTINGS_SUFFIXES or not path.is_file():
            continue
        name = str(path.relative_to(directory))
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                out[name] = scrub(json.loads(text))
            else:
                import tomllib

                out[name] = scrub(tomllib.loads(text))
        except (OSError, ValueError) as err:
            out[name] = {"unreadable": f"{type(err).__name__}: {err}"}
    return out


def environment() -> dict[str, str]:
    """The ANOMALYDESK_* environment, scrubbed."""
    return {k: scrub(v, k) for k, v in sorted(os.environ.items()) if k.startswith("ANOMALYDESK_")}


def _tail(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - limit))
        return f.read()


def server_status(url: str | None) -> dict[str, Any]:
    """`status --json` of the configured server, or why there is none (never starts a server)."""
    from anomalydesk.store import admin, embedded
    from anomalydesk.store.connection import ConnectionFailed, connect, redact_url

    url = url or os.environ.get(config.ENV_REDIS_URL, "").strip() or None
    source = "given"
    if url is None:
        server = embedded.running()
        if server is None:
            return {"error": "no Redis URL given and no embedded server running (none was started)"}
        url, source = server.url, "embedded"
    try:
        r = connect(url)
    except ConnectionFailed as err:
        return {"url": redact_url(url), "source": source, "error": str(err)}
    try:
        return {"url": redact_url(url), "source": source, "status": scrub(admin.status(r))}
    except Exception as err:  # the zip is for finding out what is wrong: record it, carry on
        return {"url": redact_url(url), "source": source, "error": f"{type(err).__name__}: {err}"}
    finally:
        r.close()


def embedded_log() -> Path | None:
    """The embedded redis-server's own log file, if one was recorded."""
    from anomalydesk.store import embedded

    info = embedded.read_info()
    return info.log_file if info is not None and info.log_file.is_file() else None


def write_zip(output: Path, url: str | None) -> list[str]:
    """Write the diagnostics zip; returns the names it holds."""
    def dump(obj: Any) -> str:
        return json.dumps(obj, indent=2, sort_keys=True, default=str)

    files = {
        "versions.json": dump(versions()),
        "settings.json": dump({"config_dir": str(config.config_dir()), "data_dir": str(config.data_dir()),
                               "files": settings_files(), "environment": environment()}),
        "status.json": dump(server_status(url)),
    }  # fmt: skip
    logs_found = logs.log_files()
    extra = embedded_log()
    output.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
        for path in [*logs_found, *([extra] if extra else [])]:
            text = _tail(path, config.DIAGNOSE_LOG_TAIL_BYTES).decode("utf-8", errors="replace")
            z.writestr(f"logs/{'redis-' if path == extra else ''}{path.name}", logs.redact(text))
        z.writestr("README.txt", "AnomalyDesk diagnostics, written " + time.strftime("%Y-%m-%d %H:%M:%S %Z")
                   + ".\nSecrets are removed: passwords in URLs show as ***, secret-looking settings as \"***\".\n")
        return z.namelist()


def run(args: argparse.Namespace) -> int:
    """Write the zip and say where it is."""
    output = args.output or Path(f"anomalydesk-diagnose-{time.strftime('%Y%m%d-%H%M%S')}.zip")
    if output.exists() and output.is_dir():
        raise CommandError(f"--output {output} is a directory; give a file name")
    try:
        names = write_zip(output, getattr(args, "redis", None))
    except OSError as err:
        raise CommandError(f"cannot write {output}: {err}") from err
    emit(args, {"output": str(output.resolve()), "files": names},
         f"wrote {output} ({len(names)} files): attach it to your support request")
    return 0
