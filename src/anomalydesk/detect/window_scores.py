"""The score the detector gave each window, stored so that whoever plots it shows what alerts used.

The detector writes one entry per window its model scored to the stream `Keys.scores(service)` in the
script that commits the window's state, incidents and alerts (`incident_commit.Committer`): a window
delivered again finds its state already written and writes no second entry. The entry id is the
fingerprint's own (window start in ms), the stream is trimmed like the fingerprint stream (the
`retention` of `setup`), and it lives in the alert log's slot (the commit touches one slot on a Redis
Cluster). Windows no model scored (learning, no data, a system gap, a model of another window length,
a non-finite score) have no entry: "not scored" is an absence, never a made-up number.

Each entry names the model version that scored it, so a reader can tell where a newly activated model
took over (`activations`): its scores apply from that window on; earlier windows keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from anomalydesk import config
from anomalydesk.detect.incident_model import Severity, stored_score
from anomalydesk.store.keys import Keys


@dataclass(frozen=True)
class WindowScore:
    """One scored window of one service, as the detector decided it."""

    window: int
    start: float  # window start, epoch seconds
    score: float  # 0–100
    severity: Severity
    anomalous: bool  # at or above the model's threshold
    model_version: int | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", stored_score(self.score))  # as its alert has it
        object.__setattr__(self, "severity", Severity(self.severity))

    def fields(self) -> list[str]:
        """Field/value pairs of the stream entry, in order (what the commit script XADDs)."""
        return ["window", str(self.window), "start", repr(float(self.start)), "score", repr(float(self.score)),
                "severity", str(self.severity), "anomalous", "1" if self.anomalous else "0",
                "model_version", "" if self.model_version is None else str(self.model_version)]  # fmt: skip

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> WindowScore:
        """Parse a stream entry's fields (bytes or str keys and values); ValueError when malformed."""
        f = {_text(k): _text(v) for k, v in fields.items()}
        try:
            version = f.get("model_version", "")
            return cls(window=int(f["window"]), start=float(f["start"]), score=float(f["score"]),
                       severity=Severity(f["severity"]), anomalous=f["anomalous"] == "1",
                       model_version=int(version) if version else None)  # fmt: skip
        except KeyError as err:
            raise ValueError(f"score entry without {err.args[0]!r}") from None


def parse_entries(entries: Iterable[tuple[Any, Mapping[Any, Any]]]) -> list[WindowScore]:
    """Stream entries (oldest first) → scores; unreadable entries are skipped."""
    found = []
    for _entry_id, fields in entries:
        try:
            found.append(WindowScore.from_fields(fields))
        except ValueError:
            continue
    return found


def read(r: redis.Redis, service: str, *, count: int | None = None, keys: Keys | None = None) -> list[WindowScore]:
    """The service's stored scores, oldest first (the newest `count` when given)."""
    keys = keys or Keys(config.key_prefix())
    if count is None:
        return parse_entries(r.xrange(keys.scores(service)))
    return parse_entries(reversed(r.xrevrange(keys.scores(service), count=count)))


def activations(scores: Sequence[WindowScore], before: int | None = None) -> list[tuple[float, int]]:
    """(window start, version) of each window where a model version took over scoring: the first stored
    score, and every later one whose version differs from the one before it. `before` is the version that
    scored the window preceding `scores` (a reader continuing a series): no marker when it carries on."""
    marks = []
    previous = before
    for s in scores:
        if s.model_version is not None and s.model_version != previous:
            marks.append((s.start, s.model_version))
        previous = s.model_version
    return marks


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
