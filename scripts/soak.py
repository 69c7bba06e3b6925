"""Soak test (a documented command, not run in CI): hours of live demo traffic with periodic faults.

    .venv/bin/python scripts/soak.py [--duration 3600] [--rate 5000] [--fault-every 300]
                                     [--fault-length 120] [--history-hours 25] [--out docs/soak]

On a throwaway redis-server it backfills `--history-hours` of demo traffic, trains every service,
then runs for `--duration` seconds: `anomalydesk demo` (live, `--rate` events/s, a fault every
`--fault-every` s, kinds and services in rotation), `anomalydesk detect`, `anomalydesk collect` with
a small SDK sender beside it. Every `--sample` seconds it records the memory (RSS) of every process
and Redis's used_memory. At the end it writes to `--out`: `soak.json` (detection recall per fault,
false incidents, events, memory start/peak/end per process), `memory.csv` and `memory.png`.
A fault counts as detected when an incident of its service begins between its start and two windows
after its end; an incident that overlaps no fault (± two windows) on its service is a false incident.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
FAULTS = [("latency", "orders"), ("errors", "users"), ("drop", "gateway"), ("spike", "payments"),
          ("new-dependency", "inventory"), ("business", "payments")]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(url: str, *argv: str, **popen: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "anomalydesk.cli", "--redis", url, *argv], **popen)  # type: ignore[call-overload]


def run_cli(url: str, *argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "--redis", url, *argv],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"anomalydesk {' '.join(argv)} failed: {done.stderr}")
    return done.stdout


def sdk_sender(collector_url: str, stop: threading.Event, rate: float) -> None:
    """A steady trickle through the HTTP collector, so its memory is measured under load."""
    sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))
    from anomalydesk_client import AnomalyClient

    client = AnomalyClient(collector_url, service="soak-sdk", batch_size=100, flush_interval=0.5)
    while not stop.wait(1.0 / rate):
        client.send_metric("GET:/soak", 200, 10.0)
    client.close()


def evaluate(r: redis.Redis, truth: list[dict], window_s: int) -> dict:
    """Recall per fault and false incidents, from the incidents the detector wrote."""
    from anomalydesk.detect import incidents as inc

    found = inc.list_incidents(r)
    spans = [(f["service"], int(f["start"] // window_s), int(f["end"] // window_s)) for f in truth]
    per_fault, matched = [], set()
    for fault, (service, first, last) in zip(truth, spans, strict=True):
        hits = [i for i in found if i["service"] == service and first <= int(i["first_window"]) <= last + 2]
        per_fault.append({**fault, "detected": bool(hits), "incident": hits[0]["id"] if hits else None})
        matched.update(i["id"] for i in hits)
    def overlaps(incident: dict, service: str, first: int, last: int) -> bool:
        end = int(incident.get("last_window", incident["first_window"]))
        return incident["service"] == service and int(incident["first_window"]) <= last + 2 and end >= first - 2

    false = [i["id"] for i in found if not any(overlaps(i, *span) for span in spans)]
    detected = sum(f["detected"] for f in per_fault)
    listed = [{k: i.get(k) for k in ("id", "service", "kind", "first_window", "last_window", "severity")}
              for i in found]  # fmt: skip
    return {"faults": len(per_fault), "detected": detected, "recall": detected / len(per_fault) if per_fault else None,
            "incidents": len(found), "false_incidents": len(false), "false_incident_ids": false,
            "per_fault": per_fault, "incident_list": listed}  # fmt: skip


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    t0 = rows[0]["t"]
    for name in [k for k in rows[0] if k.startswith("rss_")]:
        ax.plot([(row["t"] - t0) / 60 for row in rows], [row[name] / 2**20 for row in rows], label=name[4:])
    ax.plot([(row["t"] - t0) / 60 for row in rows], [row["redis_used_memory"] / 2**20 for row in rows],
            label="redis used_memory", linestyle="--")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.set_title("AnomalyDesk soak: memory of every process")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=3600)
    p.add_argument("--rate", type=float, default=5000)
    p.add_argument("--fault-every", type=float, default=300)
    p.add_argument("--fault-length", type=float, default=120)
    p.add_argument("--history-hours", type=float, default=25)
    p.add_argument("--services", type=int, default=5)
    p.add_argument("--sample", type=float, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "soak")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="anomalydesk-soak-"))
    env = {**os.environ, "ANOMALYDESK_DATA_DIR": str(work / "data"), "ANOMALYDESK_CONFIG_DIR": str(work / "config")}
    os.environ.update(env)
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work),
                               "--save", "", "--appendonly", "no", "--logfile", "redis.log"])  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis(port=port)
    while True:
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    procs: dict[str, subprocess.Popen[bytes]] = {"redis": server}
    stop = threading.Event()
    try:
        print(f"backfilling {args.history_hours} h of history and training …", flush=True)
        run_cli(url, "setup")
        # the history at the live rate: a model of 200 events/s would (rightly) flag 5,000 events/s
        run_cli(url, "demo", "--fast", "--duration", str(int(args.history_hours * 3600)), "--services",
                str(args.services), "--seed", str(args.seed), "--rate", str(args.rate))  # fmt: skip
        run_cli(url, "train")
        window_s = int(r.hget("ad:config", "window_seconds"))
        injects = []
        starts = range(int(args.fault_every), int(args.duration - args.fault_length), int(args.fault_every))
        for i, at in enumerate(starts):
            kind, service = FAULTS[i % len(FAULTS)]
            injects += ["--inject", f"{kind}@{at}+{int(args.fault_length)}:{service}"]
        truth_file = work / "truth.jsonl"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
        procs["detector"] = cli(url, "detect", **quiet)
        collector_port = free_port()
        procs["collector"] = cli(url, "collect", "--port", str(collector_port), **quiet)
        procs["demo"] = cli(url, "demo", "--rate", str(args.rate), "--duration", str(int(args.duration)),
                            "--services", str(args.services), "--seed", str(args.seed + 1), "--truth", str(truth_file),
                            *injects, **quiet)  # fmt: skip
        time.sleep(2)
        sender = threading.Thread(target=sdk_sender, args=(f"http://127.0.0.1:{collector_port}", stop, 200.0),
                                  daemon=True)  # fmt: skip
        sender.start()
        rows: list[dict] = []
        handles = {name: psutil.Process(proc.pid) for name, proc in procs.items()}
        handles["soak-script+sdk"] = psutil.Process()
        started = time.time()
        while procs["demo"].poll() is None:
            row = {"t": time.time(), "redis_used_memory": int(r.info("memory")["used_memory"])}
            for name, handle in handles.items():
                try:
                    row[f"rss_{name}"] = handle.memory_info().rss
                except psutil.Error:
                    row[f"rss_{name}"] = 0
            rows.append(row)
            print(f"{row['t'] - started:7.0f} s  redis {row['redis_used_memory'] / 2**20:7.1f} MiB", flush=True)
            time.sleep(args.sample)
        time.sleep(4 * window_s)  # the detector handles the last windows
        truth = [json.loads(line) for line in truth_file.read_text().splitlines() if line.strip()]
        report = evaluate(r, truth, window_s)
        status = json.loads(run_cli(url, "status", "--json"))
        memory = {k: {"start": rows[0][k], "peak": max(row[k] for row in rows), "end": rows[-1][k]}
                  for k in rows[0] if k != "t"}  # fmt: skip
        summary = {"command": " ".join(sys.argv), "duration_s": args.duration, "rate": args.rate,
                   "events_total": status["events_total"], "fingerprints": status["fingerprints"],
                   "alerts_total": status["alerts_total"], "detection": report, "memory_bytes": memory}  # fmt: skip
        (args.out / "soak.json").write_text(json.dumps(summary, indent=2))
        with (args.out / "memory.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        plot(rows, args.out / "memory.png")
        print(json.dumps({k: v for k, v in summary.items() if k != "memory_bytes"} | {
            "detection": {k: v for k, v in report.items() if k not in ("per_fault", "incident_list")}}, indent=2))
        return 0
    finally:
        stop.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
