"""The `anomalydesk` command: every entry point smoke-run in a subprocess; server/setup/status/services/query
run end to end against the session's real redis-server."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import redis

from anomalydesk import __version__, cli
from anomalydesk.store.sink import IngestSink
from conftest import free_port

TIMEOUT = 120
NESTED_HELP = [["query", "endpoint"], ["query", "status"], ["query", "interaction"], ["query", "topk"]]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anomalydesk.cli", *args], capture_output=True, text=True,
                          timeout=TIMEOUT)  # fmt: skip


def main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command in this process (fast) and return (exit status, stdout, stderr)."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --- smoke runs in a subprocess -------------------------------------------------------------------
def test_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"anomalydesk {__version__}"


def test_top_level_help_lists_the_commands() -> None:
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    for name in ("server", "setup", "status", "services", "query"):
        assert name in done.stdout


@pytest.mark.parametrize("command", sorted(cli._available()))
def test_every_subcommand_has_help(command: str) -> None:
    done = run_cli(command, "--help")
    assert done.returncode == 0, done.stderr
    assert f"usage: anomalydesk {command}" in done.stdout
    assert "--redis URL" in done.stdout and "--json" in done.stdout  # global options after the subcommand


@pytest.mark.parametrize("words", NESTED_HELP, ids=" ".join)
def test_query_questions_have_help(words: list[str]) -> None:
    done = run_cli(*words, "--help")
    assert done.returncode == 0, done.stderr
    assert f"usage: anomalydesk {' '.join(words)}" in done.stdout


def test_global_options_before_and_after_the_subcommand(redis_url: str) -> None:
    before = run_cli("--json", "--redis", redis_url, "status")
    after = run_cli("status", "--redis", redis_url, "--json")
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr
    assert json.loads(before.stdout).keys() == json.loads(after.stdout).keys()


def test_an_unreachable_url_is_named_in_one_line() -> None:
    url = f"redis://alice:hunter2@127.0.0.1:{free_port()}/0"
    done = run_cli("status", "--redis", url)
    assert done.returncode == 2
    assert done.stderr.startswith("anomalydesk status: cannot connect to Redis at redis://alice:***@127.0.0.1:")
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("words", [["--json", "services"], ["services"], ["status"]], ids=" ".join)
def test_a_reader_that_stops_early_ends_the_command_quietly(words: list[str], traffic: str, r: redis.Redis) -> None:
    """`anomalydesk … | head -1`: stdout closed before the output is written ends the command with
    EXIT_BROKEN_PIPE and nothing on stderr, whether the output is long (300 services, past a pipe's
    buffer) or short. (argparse's own `--help` already drops a failed write and exits 0.)"""
    from anomalydesk.store.keys import Keys

    r.sadd(Keys().services, *(f"svc-{i}" for i in range(300)))
    proc = subprocess.Popen([sys.executable, "-m", "anomalydesk.cli", *words, "--redis", traffic],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes anything
    err = proc.stderr.read()
    assert proc.wait(TIMEOUT) == cli.EXIT_BROKEN_PIPE, err
    assert err == "", err


# --- setup --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cms-width", "100"], "--cms-width and --cms-depth go together"),
        (["--cms-prob", "0.01"], "--cms-error and --cms-prob go together"),
        (["--cms-width", "100", "--cms-depth", "4", "--cms-error", "0.01", "--cms-prob", "0.01"], "not both"),
        (["--cms-width", "100", "--cms-error", "0.01"], "not both"),
    ],
)
def test_setup_refuses_half_or_mixed_sketch_sizes(capsys: pytest.CaptureFixture[str], flags: list[str],
                                                  message: str) -> None:  # fmt: skip
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens: the flags are checked before connecting
    code, _, err = main(capsys, "setup", "--redis", url, *flags)
    assert code == 2
    assert message in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--window", "0"], "must be 1 or more"), (["--cms-error", "1.5", "--cms-prob", "0.1"], "between 0 and 1"),
     (["--topk", "ten"], "not a whole number")],
)  # fmt: skip
def test_setup_refuses_bad_values(capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["setup", *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_setup_is_idempotent_and_needs_force_to_resize(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    code, out, _ = main(capsys, "setup", "--redis", redis_url, "--window", "10", "--json")
    assert code == 0
    first = json.loads(out)
    assert first["created"] is True and first["settings"]["window_seconds"] == 10

    code, out, _ = main(capsys, "setup", "--redis", redis_url, "--json")  # nothing given: keep what is stored
    assert code == 0
    again = json.loads(out)
    assert again["created"] is False and again["changed"] == {} and again["settings"] == first["settings"]

    code, _, err = main(capsys, "setup", "--redis", redis_url, "--topk", "20")
    assert code == 2
    assert "--force" in err

    code, out, _ = main(capsys, "setup", "--redis", redis_url, "--topk", "20", "--force", "--json")
    assert code == 0
    forced = json.loads(out)
    assert forced["changed"] == {"topk": [first["settings"]["topk"], 20]}
    assert forced["reset"]
    assert forced["settings"]["window_seconds"] == 10  # the window set earlier was kept


def test_setup_sizes_the_sketch_from_error_and_probability(capsys: pytest.CaptureFixture[str],
                                                           redis_url: str) -> None:  # fmt: skip
    code, out, _ = main(capsys, "setup", "--redis", redis_url, "--cms-error", "0.01", "--cms-prob", "0.05",
                        "--cf-capacity", "5000", "--retention", "100", "--json")  # fmt: skip
    assert code == 0, out
    settings = json.loads(out)["settings"]
    assert settings["cms_width"] == math.ceil(math.e / 0.01)
    assert settings["cms_depth"] == math.ceil(math.log(1 / 0.05))
    assert (settings["filter_capacity"], settings["retention"]) == (5000, 100)
    code, out, _ = main(capsys, "setup", "--redis", redis_url, "--cms-width", "300", "--cms-depth", "4",
                        "--force", "--json")  # fmt: skip
    assert code == 0
    assert json.loads(out)["changed"] == {"cms_width": [272, 300], "cms_depth": [3, 4]}


# --- status, services, query ----------------------------------------------------------------------
@pytest.fixture()
def traffic(capsys: pytest.CaptureFixture[str], redis_url: str, r: redis.Redis) -> str:
    """A set-up server with two services: payments (3 endpoints, some 5xx) and users (one endpoint)."""
    assert main(capsys, "setup", "--redis", redis_url)[0] == 0
    sink = IngestSink(r)
    endpoints = ["GET:/balance", "POST:/charge", "GET:/users/{id}"]
    idx = np.array([0] * 50 + [1] * 30 + [2] * 20)
    status = np.array([200] * 90 + [503] * 10)
    sink.add_arrays("payments", endpoints, idx, status, np.full(100, 12.0))
    sink.add_arrays("users", ["GET:/me"], np.zeros(7, dtype=int), np.full(7, 200), np.full(7, 3.0))
    sink.close()
    return redis_url


def test_status_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str], traffic: str,
                                             sketch_backend: str) -> None:
    code, out, _ = main(capsys, "status", "--redis", traffic, "--json")
    assert code == 0
    st = json.loads(out)
    types = {"window_seconds": int, "sketch_backend": str, "events_total": int, "events_rejected": int,
             "windows_sealed": int, "services": list, "fingerprints": int, "models": dict,
             "incidents_open": int, "alerts_total": int}  # fmt: skip
    for key, kind in types.items():
        assert isinstance(st[key], kind), key
    assert st["sketch_backend"] == sketch_backend
    assert st["events_total"] == 107
    assert sorted(st["services"]) == ["payments", "users"]
    code, out, _ = main(capsys, "status", "--redis", traffic)
    assert code == 0 and "payments, users" in out and f"sketches: {sketch_backend}" in out


def test_services_list_and_retire(capsys: pytest.CaptureFixture[str], traffic: str) -> None:
    code, out, _ = main(capsys, "services", "--redis", traffic, "--json")
    assert code == 0
    listed = {s["name"]: s for s in json.loads(out)}
    assert listed.keys() == {"payments", "users"} and listed["payments"]["events"] == 100
    assert main(capsys, "services", "retire", "users", "--redis", traffic)[0] == 0
    code, out, _ = main(capsys, "services", "list", "--redis", traffic, "--json")
    assert {s["name"]: s["retired"] for s in json.loads(out)} == {"payments": False, "users": True}
    code, out, _ = main(capsys, "status", "--redis", traffic, "--json")
    assert json.loads(out)["services"] == ["payments"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [(["retire"], 2, "needs the NAME"), (["retire", "no such"], 2, "NAME: must match"),
     (["retire", "ghost"], 1, "no service named 'ghost'"), (["list", "users"], 2, "takes no name")],
)  # fmt: skip
def test_services_errors(capsys: pytest.CaptureFixture[str], traffic: str, args: list[str], code: int,
                         message: str) -> None:  # fmt: skip
    got, _, err = main(capsys, "services", *args, "--redis", traffic)
    assert got == code
    assert message in err


def test_query_endpoint_counts_are_normalised_and_never_below_the_truth(capsys: pytest.CaptureFixture[str],
                                                                         traffic: str) -> None:  # fmt: skip
    code, out, _ = main(capsys, "query", "endpoint", "GET:/balance", "GET:/users/42", "GET:/never",
                        "--service", "payments", "--redis", traffic, "--json")  # fmt: skip
    assert code == 0
    counts = json.loads(out)["payments"]
    assert counts["GET:/balance"] >= 50 and counts["GET:/users/{id}"] >= 20  # /users/42 → /users/{id}
    assert counts["GET:/never"] >= 0
    code, out, _ = main(capsys, "query", "endpoint", "GET:/me", "--redis", traffic, "--json")
    assert code == 0
    assert json.loads(out).keys() == {"payments", "users"}  # no --service: every known service


def test_query_status_interaction_topk(capsys: pytest.CaptureFixture[str], traffic: str) -> None:
    code, out, _ = main(capsys, "--json", "query", "status", "200", "503", "--service", "payments", "--redis", traffic)
    assert code == 0
    assert json.loads(out) == {"payments": {"200": 90, "503": 10}}

    code, out, _ = main(capsys, "query", "interaction", "payments:POST:/charge", "users:POST:/charge",
                        "--redis", traffic, "--json")  # fmt: skip
    assert code == 0
    assert [row["seen"] for row in json.loads(out)] == [True, False]

    code, out, _ = main(capsys, "query", "topk", "--service", "payments", "--redis", traffic, "--json")
    assert code == 0
    heavy = json.loads(out)["payments"]
    assert [row["endpoint"] for row in heavy][:3] == ["GET:/balance", "POST:/charge", "GET:/users/{id}"]
    code, out, _ = main(capsys, "query", "topk", "--redis", traffic)
    assert code == 0 and "payments:" in out and "users:" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [(["topk", "--service", "ghost"], 1, "unknown service 'ghost'"),
     (["endpoint", "balance"], 2, "must look like METHOD:/path"),
     (["interaction", "payments"], 2, "expected SERVICE:METHOD:/path"),
     (["interaction", "ghost:GET:/x"], 1, "has sent nothing")],
)  # fmt: skip
def test_query_errors(capsys: pytest.CaptureFixture[str], traffic: str, args: list[str], code: int,
                      message: str) -> None:  # fmt: skip
    got, _, err = main(capsys, "query", *args, "--redis", traffic)
    assert got == code
    assert message in err


def test_query_refuses_a_bad_status_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["query", "status", "700"])
    assert exited.value.code == 2
    assert "status codes are 100-599" in capsys.readouterr().err


# --- a service named on the command line ----------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [["models", "rollback", "ghost"], ["models", "activate", "ghost", "1"], ["models", "list", "ghost"],
     ["incidents", "list", "--service", "ghost"], ["incidents", "--all", "--service", "ghost"],
     ["query", "topk", "--service", "ghost"]],
    ids=" ".join,
)  # fmt: skip
def test_an_unknown_service_is_reported_unknown_by_every_command(capsys: pytest.CaptureFixture[str], traffic: str,
                                                                 args: list[str]) -> None:  # fmt: skip
    code, out, err = main(capsys, *args, "--redis", traffic)
    assert (code, out) == (1, ""), out
    assert "unknown service 'ghost' (known: " in err and "payments" in err and "users" in err, err


def test_a_known_service_without_incidents_or_models_is_not_unknown(capsys: pytest.CaptureFixture[str],
                                                                    traffic: str) -> None:  # fmt: skip
    assert main(capsys, "services", "retire", "users", "--redis", traffic)[0] == 0  # retired: still known
    for service in ("payments", "users", "(system)"):  # (system): the gap incidents' pseudo-service
        code, out, err = main(capsys, "incidents", "list", "--service", service, "--redis", traffic)
        assert (code, out.strip(), err) == (0, "no open incidents", ""), service
    code, _, err = main(capsys, "models", "rollback", "users", "--redis", traffic)
    assert code == 1 and "service 'users' has no active model to roll back from (kept: none)" in err, err
    code, out, _ = main(capsys, "models", "list", "payments", "--redis", traffic)
    assert code == 0 and out.startswith("no models yet")


def test_models_json_gives_times_as_rfc3339(capsys: pytest.CaptureFixture[str], traffic: str, r: redis.Redis) -> None:
    """The README promises RFC 3339 UTC times in `--json`; `models list --json` gave `created` as epoch
    seconds (1796307310.08). It is RFC 3339 now, the epoch seconds stay as `created_epoch`."""
    from datetime import datetime

    from anomalydesk.store import models as registry

    registry.save(r, "payments", b'{"limit": 1}', {"windows": 100})
    code, out, _ = main(capsys, "models", "list", "--json", "--redis", traffic)
    [model] = json.loads(out)["models"]
    assert code == 0 and model["created"].endswith("Z"), model
    assert datetime.fromisoformat(model["created"].replace("Z", "+00:00")).timestamp() == pytest.approx(
        model["created_epoch"], abs=0.001)
    code, out, _ = main(capsys, "models", "activate", "payments", "1", "--json", "--redis", traffic)
    assert code == 0 and json.loads(out)["created"].endswith("Z")
