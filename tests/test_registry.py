"""Model registry against a real redis-server: versions, activation, rollback, trimming, stale, tampering."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import redis

from anomalydesk import config
from anomalydesk.detect.service_state import decode_model, load_model, service_states
from anomalydesk.detect.train import TrainParams, train
from anomalydesk.fingerprint import N_FEATURES, SCHEMA_VERSION
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys

K = Keys()


@pytest.fixture(scope="module")
def model_blob() -> bytes:
    rng = np.random.default_rng(7)
    X = rng.normal(100, 5, size=(400, N_FEATURES))
    model = train(X, TrainParams(trees=20, min_windows=100), timestamps=np.arange(400) * 5.0)
    return model.to_json()


def test_save_list_activate_rollback(r: redis.Redis) -> None:
    v1 = registry.save(r, "payments", b"blob-1", {"windows": 10, "params": {"trees": 5}})
    v2 = registry.save(r, "payments", b"blob-2", {"windows": 20})
    v3 = registry.save(r, "payments", b"blob-3", {"windows": 30}, activate=False)
    assert (v1, v2, v3) == (1, 2, 3)
    listed = registry.list_models(r, "payments")
    assert [(m.version, m.active, m.windows) for m in listed] == [(1, False, 10), (2, True, 20), (3, False, 30)]
    assert listed[0].params == {"trees": 5} and listed[0].schema == SCHEMA_VERSION and not listed[0].stale
    assert registry.active_versions(r) == {"payments": 2}
    assert registry.rollback(r, "payments").version == 1
    with pytest.raises(registry.ModelNotFound, match="no version older"):
        registry.rollback(r, "payments")
    assert registry.activate(r, "payments", 3).active
    assert registry.load_blob(r, "payments")[1] == b"blob-3"
    with pytest.raises(registry.ModelNotFound, match="no model version 9"):
        registry.activate(r, "payments", 9)


def test_keeps_last_n_but_never_the_active_one(r: redis.Redis) -> None:
    registry.save(r, "orders", b"first", {"windows": 1})
    for i in range(2, 9):
        registry.save(r, "orders", f"v{i}".encode(), {"windows": i}, activate=False, keep=3)
    kept = registry.versions_of(r, "orders")
    assert kept == [1, 6, 7, 8]  # 1 stays: it is active
    assert r.hget(K.models("orders"), "2") is None and r.hget(K.models("orders"), "2:meta") is None


def test_older_schema_is_stale(r: redis.Redis) -> None:
    registry.save(r, "users", b"x", {"windows": 5, "schema": SCHEMA_VERSION - 1})
    r.sadd(K.services, "users", "gateway")
    assert registry.info(r, "users").stale
    states = service_states(r)
    assert states["users"]["state"] == "stale"
    assert states["gateway"] == {"state": "learning", "model_version": None, "windows": 0,
                                 "needed": config.MIN_TRAINING_WINDOWS}


def test_real_model_roundtrip_and_tampered_blob_refused(r: redis.Redis, model_blob: bytes) -> None:
    registry.save(r, "payments", model_blob, {"windows": 400})
    info, model = load_model(r, "payments")
    assert info.version == 1 and model.n_features == N_FEATURES
    tampered = model_blob.replace(b'"threshold":[', b'"threshold":[1e9,', 1)
    assert tampered != model_blob
    registry.save(r, "payments", tampered, {"windows": 400})
    with pytest.raises(registry.ModelLoadError, match=r"model payments v2 refused: .*"):
        load_model(r, "payments")
    registry.save(r, "payments", b"\x80\x04pickle-like bytes", {"windows": 1})
    with pytest.raises(registry.ModelLoadError, match="v3 refused"):
        load_model(r, "payments")


def test_model_saved_in_one_process_scores_identically_in_another(redis_url: str, model_blob: bytes) -> None:
    r = redis.Redis.from_url(redis_url)
    registry.save(r, "payments", model_blob, {"windows": 400})
    rows = np.random.default_rng(3).normal(100, 8, size=(50, N_FEATURES))
    here = decode_model(model_blob).scores(rows, np.arange(50) * 5.0)
    program = (
        "import sys, json, numpy as np, redis\n"
        "from anomalydesk.detect.service_state import load_model\n"
        "r = redis.Redis.from_url(sys.argv[1])\n"
        "rows = np.array(json.loads(sys.stdin.read()))\n"
        "_, m = load_model(r, 'payments')\n"
        "print(json.dumps(m.scores(rows, np.arange(len(rows)) * 5.0).tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", program, redis_url], input=json.dumps(rows.tolist()),
                         capture_output=True, text=True, timeout=120, check=True)
    there = np.array(json.loads(out.stdout))
    assert np.array_equal(here, there)
    r.close()


def test_train_cli_stores_and_activates_a_model_per_service(r: redis.Redis, redis_url: str) -> None:
    from anomalydesk.bench.detect import synthetic
    from anomalydesk.fingerprint import FEATURE_NAMES

    rows = synthetic(400, 1000)
    pipe = r.pipeline()
    for i, row in enumerate(rows):
        fields = dict(zip(FEATURE_NAMES, row.tolist(), strict=True))
        fields.update(window=1000 + i, start=(1000 + i) * 5, schema=SCHEMA_VERSION, no_data=0, kpis="")
        pipe.xadd(K.fingerprints("orders"), fields, id=f"{(1000 + i) * 5000}-1")
    pipe.sadd(K.services, "orders", "newcomer")
    pipe.execute()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "anomalydesk.cli", *args, "--redis", redis_url],
                              capture_output=True, text=True, timeout=120)

    done = cli("train", "--trees", "10", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [t["service"] for t in out["trained"]] == ["orders"] and out["trained"][0]["windows"] == 400
    assert out["skipped"][0]["service"] == "newcomer" and "learning" in out["skipped"][0]["skipped"]
    assert "training orders: 100%" in done.stderr
    assert registry.active_versions(r) == {"orders": 1}
    assert registry.info(r, "orders").params["trees"] == 10
    unknown = cli("train", "--service", "nope")
    assert unknown.returncode == 2 and "no live service named 'nope'" in unknown.stderr


def _fill(r: redis.Redis, service: str, rows: np.ndarray, first: int) -> None:
    from anomalydesk.fingerprint import FEATURE_NAMES

    pipe = r.pipeline()
    for i, row in enumerate(rows):
        fields = dict(zip(FEATURE_NAMES, row.tolist(), strict=True))
        fields.update(window=first + i, start=(first + i) * 5, schema=SCHEMA_VERSION, no_data=0, kpis="")
        pipe.xadd(K.fingerprints(service), fields, id=f"{(first + i) * 5000}-1")
    pipe.sadd(K.services, service)
    pipe.execute()


def test_scheduled_retraining_keeps_the_active_model_when_the_candidate_is_worse(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalydesk.bench.detect import synthetic
    from anomalydesk.detect import training_run

    _fill(r, "orders", synthetic(800, 1000), 1000)
    params = TrainParams(trees=10, min_windows=100)
    first = training_run.retrain_if_better(r, "orders", params=params)
    assert first.version == 1 and first.metadata["replaced"]  # no model yet: any candidate is better
    rates = iter([0.01, 0.20])  # the active model, then the candidate, on the held-back windows
    monkeypatch.setattr(training_run, "holdout_flag_rate", lambda *a: next(rates))
    worse = training_run.retrain_if_better(r, "orders", params=params)
    assert worse.version is None and "kept the active model" in (worse.skipped or "")
    assert registry.active_versions(r) == {"orders": 1} and registry.versions_of(r, "orders") == [1]
    rates = iter([0.05, 0.05])
    better = training_run.retrain_if_better(r, "orders", params=params)
    assert better.version == 2 and registry.active_versions(r) == {"orders": 2}


def test_training_leaves_out_the_faults_the_demo_injected_but_not_its_shifts(r: redis.Redis) -> None:
    """An errors burst injected into the demo while payments was still learning raised no incident, and
    training learned it as normal (the same burst later scored 53–59). The demo's ground truth keeps its
    windows out, says so, also where an accepted level shift puts its span back, and leaves in a `shift`
    (a deploy's new level: its incident asks the operator) and the faults of other services."""
    from dataclasses import replace

    from anomalydesk.bench.detect import synthetic
    from anomalydesk.detect.incident_model import Incident, Mark
    from anomalydesk.detect.training_run import train_service, training_data
    from anomalydesk.ingest.demo_model import Fault
    from anomalydesk.ingest.demo_run import TruthRecorder

    _fill(r, "payments", synthetic(300, 1000), 1000)
    truth = TruthRecorder(r, K)
    truth.record(Fault("errors", "payments", 1100 * 5 + 2.5, 1110 * 5))  # windows 1100–1109, the first in part
    truth.record(Fault("shift", "payments", 1200 * 5, float("inf")))
    truth.record(Fault("latency", "orders", 1000 * 5, 1300 * 5))
    # an accepted level shift over the fault puts its span back into training, the fault's windows not
    accepted = replace(Incident.open("payments", "level_shift", 1090, 1090 * 5.0), last_window=1150,
                       accepted=Mark("ops", "now"), status="resolved")  # fmt: skip
    r.hset(K.incidents, accepted.id, json.dumps(accepted.to_json()))
    data = training_data(r, "payments", windows=300)
    windows = data.windows.tolist()
    assert data.demo_faults == 10 and data.excluded == 0 and not set(range(1100, 1110)) & set(windows)
    assert len(windows) == 290 and {1099, 1110, 1200, 1299} <= set(windows)
    assert data.left_out() == "left out 10 windows of faults the demo injected"
    outcome = train_service(r, "payments", params=TrainParams(trees=10, min_windows=100))
    assert outcome.version == 1 and outcome.as_dict()["demo_fault_windows"] == 10
    assert registry.info(r, "payments", 1).metrics["demo_fault_windows"] == 10


def test_training_leaves_out_confirmed_incidents_and_puts_back_false_positives(r: redis.Redis) -> None:
    from dataclasses import replace

    from anomalydesk.bench.detect import synthetic
    from anomalydesk.detect.incident_model import Incident, Mark
    from anomalydesk.detect.training_run import training_data

    _fill(r, "orders", synthetic(300, 1000), 1000)
    confirmed = replace(Incident.open("orders", "anomaly", 1100, 5500.0), last_window=1109)
    mistaken = replace(Incident.open("orders", "anomaly", 1000, 5000.0), last_window=1004,
                       false_positive=Mark("x", "y"), status="resolved")  # fmt: skip
    r.hset(K.incidents, mapping={confirmed.id: json.dumps(confirmed.to_json()),
                                 mistaken.id: json.dumps(mistaken.to_json())})  # fmt: skip
    data = training_data(r, "orders", windows=250)  # reads windows 1050–1299
    windows = data.windows.tolist()
    assert data.excluded == 10 and not set(range(1100, 1110)) & set(windows)
    assert data.restored == 5 and windows[:5] == [1000, 1001, 1002, 1003, 1004]
    assert len(windows) == 250 - 10 + 5 and windows == sorted(windows)
