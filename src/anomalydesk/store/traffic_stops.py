"""Traffic stopped on purpose (a demo's end), recorded so that the silence after it alarms nothing.

When demo traffic ends — the Demo panel's Stop, the app quitting or switching servers, `anomalydesk
demo` reaching its `--duration` or Ctrl-C, `demo --fast` ending at the present — the services it fed
fall silent because the operator wanted them to. `record` writes, per service, when its traffic
ended (`since`) into the hash `<prefix>stopped`; traffic coming back ends the stop (`resume`: the
demo when it starts again, the detector at the first window of the service with traffic after
`since`). A silent window of a service inside its stop is neither scored nor a gap, nor is the window
the stop began inside (a `--duration` ends mid-window: part of its traffic), and that service
does not count when the detector asks whether every service fell silent (`detect.system_gap`): real
traffic stopping still opens the gap incident as before.

Times are epoch seconds (a window start, or mid-window where a `--duration` ran out), not window
numbers, so a stop stays right across a window-length change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from anomalydesk import config
from anomalydesk.store.keys import Keys

# ends every open stop of the services named that began at or before their time (a stop begun later
# is a newer one: a window handled late must not end it); one key, so one slot on a cluster
_RESUME_LUA = """
local ended = 0
for i = 1, #ARGV, 2 do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  local ok, stop = false, nil
  if raw then
    ok, stop = pcall(cjson.decode, raw)
  end
  -- a record that is not ours to read (not JSON, not an object, no numeric since, a cut not a number)
  -- is left as it is
  if ok and type(stop) == 'table' and type(stop['since']) == 'number'
      and (stop['cut'] == nil or type(stop['cut']) == 'number') then
    local at = tonumber(ARGV[i + 1])
    if stop['resumed'] == nil and stop['since'] <= at then
      stop['resumed'] = at
      redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(stop))
      ended = ended + 1
    end
  end
end
return ended
"""


@dataclass(frozen=True)
class Stop:
    """One service's traffic stopped on purpose at `since`, until `resumed` (None: still stopped); `cut`:
    where its traffic really ended when that is before `since` (its last events landed late, after it,
    and the stop was moved behind them: the windows from `cut` to `since` hold part of its traffic)."""

    since: float
    resumed: float | None = None
    by: str = "demo"
    cut: float | None = None

    def covers(self, start: float) -> bool:
        """Whether a window starting at `start` lies in the stop."""
        return self.since <= start and (self.resumed is None or start < self.resumed)

    def to_json(self) -> str:
        fields: dict[str, object] = {"since": self.since, "by": self.by}
        if self.resumed is not None:  # left out while open (the resume script tests for its absence)
            fields["resumed"] = self.resumed
        if self.cut is not None:
            fields["cut"] = self.cut
        return json.dumps(fields)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Stop:
        """The stop a record holds; ValueError for anything else (not JSON, not an object, no finite numeric
        `since`, a `resumed` or `cut` that is not a finite number)."""
        fields = json.loads(raw)
        if not isinstance(fields, dict):
            raise ValueError(f"a stop record is a JSON object, not {type(fields).__name__}")
        since, resumed, cut = fields.get("since"), fields.get("resumed"), fields.get("cut")
        for name, value in (("since", since), ("resumed", resumed), ("cut", cut)):
            if value is None and name != "since":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"a stop record's {name} is a finite number of seconds, not {value!r}")
        return cls(float(since), None if resumed is None else float(resumed), str(fields.get("by", "demo")),
                   None if cut is None else float(cut))  # fmt: skip


def record(r: redis.Redis, services: Iterable[str], since: float, *, by: str = "demo", cut: float | None = None,
           keys: Keys | None = None) -> None:  # fmt: skip
    """Record that the traffic of `services` ended on purpose at `since` (replaces an earlier stop); `cut`:
    where it really ended, when its last events landed after that and `since` was moved behind them."""
    keys = keys or Keys(config.key_prefix())
    value = Stop(float(since), None, by, None if cut is None or cut >= since else float(cut)).to_json()
    mapping = {service: value for service in services}
    if mapping:
        r.hset(keys.traffic_stops, mapping=mapping)


def resume(r: redis.Redis, services: Iterable[str], at: float, *, keys: Keys | None = None) -> int:
    """Traffic of `services` is back from `at`: end their open stops begun at or before it; how many ended."""
    keys = keys or Keys(config.key_prefix())
    args: list[str | float] = []
    for service in services:
        args += [service, float(at)]
    if not args:
        return 0
    return int(r.register_script(_RESUME_LUA)(keys=[keys.traffic_stops], args=args))


def read(r: redis.Redis, *, keys: Keys | None = None) -> dict[str, Stop]:
    """service → its latest stop (ended ones too; a record that cannot be read is left out)."""
    keys = keys or Keys(config.key_prefix())
    stops = {}
    for service, raw in r.hgetall(keys.traffic_stops).items():
        try:
            stops[service.decode() if isinstance(service, bytes) else service] = Stop.from_json(raw)
        except ValueError:  # (json's decode error among them)
            continue  # not ours to judge: no stop then, so the silence alarms as any other
    return stops


def stopped_at(stops: Mapping[str, Stop], start: float) -> set[str]:
    """The services whose traffic is stopped on purpose in the window starting at `start`."""
    return {service for service, stop in stops.items() if stop.covers(start)}


def cut_short(stops: Mapping[str, Stop], service: str, start: float, length: float) -> bool:
    """Whether the window [start, start + length) holds only part of the service's traffic before its
    stop: `demo --duration` ends where its time runs out, inside a window, and a stop moved behind late
    events (`cut`) leaves the windows from where the traffic ended up to `since` part-filled."""
    stop = stops.get(service)
    if stop is None:
        return False
    ended = stop.since if stop.cut is None else stop.cut
    return start < stop.since and start + length > ended
