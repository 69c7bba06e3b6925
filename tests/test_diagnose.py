"""Log files (rotation, levels, masked passwords) and `anomalydesk diagnose` (a zip without secrets)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import redis

from anomalydesk import config, logs
from anomalydesk.config import SketchSettings
from anomalydesk.events import parse_metric
from anomalydesk.store import admin, sink

SECRET = "hunter2-Secret"


def run_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anomalydesk.cli", *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})  # fmt: skip


@pytest.fixture()
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "logs"
    monkeypatch.setenv(config.ENV_LOG_DIR, str(directory))
    yield directory
    logs.setup("pytest", to_file=False)  # leave no file handler behind for later tests


def test_each_process_logs_to_its_own_file_with_passwords_masked(log_dir: Path) -> None:
    path = logs.setup("collect", verbosity=0)
    assert path == log_dir / "collect.log"
    logging.getLogger("anomalydesk.test").info("connecting to %s", f"redis://alice:{SECRET}@db:6379/0")
    logging.getLogger("anomalydesk.test").debug("not at the default INFO level")
    text = path.read_text()
    assert "connecting to redis://alice:***@db:6379/0" in text
    assert SECRET not in text and "not at the default" not in text


def test_the_file_level_comes_from_the_environment(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.ENV_LOG_LEVEL, "debug")
    path = logs.setup("detect")
    logging.getLogger("anomalydesk.test").debug("a debug line")
    assert "a debug line" in path.read_text()
    monkeypatch.setenv(config.ENV_LOG_LEVEL, "chatty")
    with pytest.raises(ValueError, match="ANOMALYDESK_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR"):
        logs.file_level()


def test_log_files_rotate_and_keep_a_bounded_number(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "LOG_MAX_BYTES", 2_000)
    monkeypatch.setattr(config, "LOG_BACKUP_COUNT", 3)
    path = logs.setup("demo")
    for i in range(500):
        logging.getLogger("anomalydesk.test").warning("line %d %s", i, "x" * 40)
    files = sorted(p.name for p in log_dir.iterdir())
    assert files == ["demo.log", "demo.log.1", "demo.log.2", "demo.log.3"]
    assert all((log_dir / f).stat().st_size <= 2_000 for f in files)
    assert "line 499" in path.read_text()


def test_a_cli_command_writes_its_log_file(tmp_path: Path, redis_url: str) -> None:
    directory = tmp_path / "cli-logs"
    done = run_cli("setup", "--redis", redis_url, env={config.ENV_LOG_DIR: str(directory),
                                                       config.ENV_LOG_LEVEL: "DEBUG"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (directory / "setup.log").stat().st_size > 0


def test_diagnose_zip_has_versions_settings_logs_and_status_without_secrets(
    tmp_path: Path, redis_url: str, r: redis.Redis
) -> None:
    admin.setup(r, SketchSettings())
    sink.ingest(r, [parse_metric({"service": "orders", "endpoint": "GET:/o", "status_code": 200,
                                  "response_time": 3})] * 4)  # fmt: skip
    r.config_set("requirepass", SECRET)
    try:
        url = redis_url.replace("redis://", f"redis://:{SECRET}@")
        home = tmp_path / "home"
        (home / "config").mkdir(parents=True)
        (home / "config" / "app.json").write_text(json.dumps(
            {"version": 1, "redis_url": url, "api_key": SECRET, "theme": "dark", "nested": {"password": SECRET}}))
        (home / "config" / "collector.toml").write_text(f'api_keys = ["{SECRET}"]\nport = 4000\n')
        env = {config.ENV_CONFIG_DIR: str(home / "config"), config.ENV_DATA_DIR: str(home / "data"),
               config.ENV_LOG_DIR: str(home / "logs"), config.ENV_REDIS_URL: url}  # fmt: skip
        assert run_cli("status", "-v", env=env).returncode == 0  # leaves a status.log
        out = tmp_path / "support.zip"
        done = run_cli("diagnose", "--output", str(out), "--json", env=env)
        assert done.returncode == 0, done.stderr
        names = set(json.loads(done.stdout)["files"])
        assert {"versions.json", "settings.json", "status.json", "logs/status.log"} <= names
        with zipfile.ZipFile(out) as z:
            blobs = {name: z.read(name) for name in z.namelist()}
        assert not any(SECRET.encode() in blob for blob in blobs.values()), "a secret is in the zip"
        versions = json.loads(blobs["versions.json"])
        assert versions["anomalydesk"] and versions["packages"]["redis"]
        settings = json.loads(blobs["settings.json"])
        assert settings["files"]["app.json"]["theme"] == "dark"
        assert settings["files"]["app.json"]["api_key"] == "***"
        assert settings["files"]["app.json"]["nested"]["password"] == "***"
        assert settings["files"]["app.json"]["redis_url"].startswith("redis://:***@")
        assert settings["files"]["collector.toml"] == {"api_keys": "***", "port": 4000}
        status = json.loads(blobs["status.json"])
        assert status["status"]["events_total"] == 4 and status["url"].startswith("redis://:***@")
    finally:
        r.config_set("requirepass", "")


def test_diagnose_without_a_server_starts_none_and_says_so(tmp_path: Path) -> None:
    env = {config.ENV_CONFIG_DIR: str(tmp_path / "config"), config.ENV_DATA_DIR: str(tmp_path / "data"),
           config.ENV_LOG_DIR: str(tmp_path / "logs"), config.ENV_REDIS_URL: ""}  # fmt: skip
    out = tmp_path / "d.zip"
    done = run_cli("diagnose", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(out) as z:
        status = json.loads(z.read("status.json"))
    assert "no embedded server running" in status["error"]
    assert not (tmp_path / "data" / config.EMBEDDED_INFO_FILE).exists()
