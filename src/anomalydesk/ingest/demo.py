"""Demo traffic: the simulated system (`demo_model`) driven into Redis, with faults and ground truth.

Two ways to run it:
- `run_fast(...)`: simulated clock. The period ends at the present (its last window is the one
  before the current one), events carry timestamps and go through a replay-mode sink, so their
  windows follow them; a day of traffic takes seconds and live traffic can continue afterwards
  without late events.
- `DemoTraffic(...)`: live, paced in real time by a steady scheduler in a thread (one numpy batch
  per service every `DEMO_TICK_SECONDS`), sealing every half window. The desktop app's demo panel
  uses it: start, stop, set_rate, inject a fault now, measured events per second.

Every fault is recorded as ground truth in the stream `<prefix>demo:truth` (fields kind, service,
start, end in epoch seconds) and, when asked, in a JSON-lines file.

The work is split by job: `ingest.demo_run` (options, store preparation, faults and ground truth,
handing traffic to the sink), `ingest.demo_fast` (`run_fast`), `ingest.demo_live` (`DemoTraffic`);
the simulated system itself is `ingest.demo_model`. This module is their public face.
"""

from __future__ import annotations

from anomalydesk.ingest.demo_fast import run_fast
from anomalydesk.ingest.demo_live import DemoTraffic
from anomalydesk.ingest.demo_run import TruthRecorder, check_options, plan_faults, prepare, send

__all__ = ["DemoTraffic", "TruthRecorder", "check_options", "plan_faults", "prepare", "run_fast", "send"]
