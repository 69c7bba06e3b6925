"""Committing an incident plan (`incident_flow.Plan`): one script over the incident slot, then the XACK.

The script (`detect.incidents.APPLY_LUA`) writes the plan's incidents, alerts, window score and the
service's detector state together, and records the window as handled: the state records the last
window handled, so a window delivered twice (a detector killed between the script and the XACK) is
acknowledged and nothing else; an incident changed meanwhile by an operator (its `rev` moved) makes
the commit return CONFLICT and the caller recomputes. One script for every write, so a crash leaves
all or nothing; the XACK alone may be repeated. Operator actions use the same script (`apply_args`
with no service).
"""

from __future__ import annotations

import redis

from anomalydesk import config
from anomalydesk.detect.incident_flow import Plan
from anomalydesk.detect.incidents import APPLY_LUA, apply_args
from anomalydesk.store.keys import Keys

COMMITTED, ALREADY_DONE, CONFLICT = 1, 0, -1


class Committer:
    """Writes plans: the incident-slot script, then the XACK on the service's stream.

    Two steps, so that a Redis Cluster (where the service's stream and the incident keys live in
    different slots) runs them too. The script records the window in the service's detector state
    together with its incidents and alerts; a crash before the XACK redelivers the window, the
    script answers ALREADY_DONE and the entry is only acknowledged. XACK is idempotent. The window's
    score (`plan.score`) goes to `Keys.scores(service)` in the same script, with the fingerprint's entry
    id, trimmed to `score_maxlen` entries (the detector sets it to the fingerprint streams' retention).
    """

    def __init__(self, r: redis.Redis, keys: Keys, group: str = config.DETECTOR_GROUP,
                 score_maxlen: int = config.DEFAULT_RETENTION_WINDOWS):  # fmt: skip
        self.r = r
        self._script = r.register_script(APPLY_LUA)
        self.keys = keys
        self.group = group
        self.score_maxlen = score_maxlen

    def commit(self, service: str, entry_id: bytes | str, window: int, plan: Plan) -> int:
        """COMMITTED, ALREADY_DONE (window handled before: only XACKed) or CONFLICT (recompute)."""
        score = None
        if plan.score is not None:
            text_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            score = (text_id, plan.score.fields(), self.score_maxlen)
        keys, args = apply_args(self.keys, service, window, plan.state, plan.incidents, plan.alerts, score)
        outcome = int(self._script(keys=keys, args=args))
        if outcome != CONFLICT:
            self.r.xack(self.keys.fingerprints(service), self.group, entry_id)
        return outcome
