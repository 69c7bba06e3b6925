"""The Redis key layout (DESIGN.md "Names and keys"), in one place.

Per-service keys carry the service as hash tag, `ad:{payments}:…`, so one service's sketches,
window aggregates and fingerprint stream share a slot in Redis Cluster and one FCALL touches one
slot. Global keys are few and small; the incident keys share the alert log's slot
(`incident_tag`). The names the gears library writes are built, here and in the library, from the
suffixes in `anomalydesk.contract.KEY_SUFFIXES` (the library's copy is generated from it).
"""

from __future__ import annotations

from dataclasses import dataclass

from anomalydesk.config import DEFAULT_PREFIX
from anomalydesk.contract import KEY_SUFFIXES as S


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    # --- global ---------------------------------------------------------------------------
    @property
    def config(self) -> str:
        """Hash: window_seconds, sketch sizes, backend, schema, retention (written by `setup`)."""
        return f"{self.prefix}config"

    @property
    def services(self) -> str:
        """Set of every service that ever sent an event (the seal ticker walks it)."""
        return f"{self.prefix}services"

    @property
    def retired(self) -> str:
        """Set of retired services: no sealing, no alerts."""
        return f"{self.prefix}retired"

    @property
    def stats(self) -> str:
        """Hash of global producer counters (events_rejected, otlp_*); alerts are counted in `alert_stats`."""
        return f"{self.prefix}stats"

    @property
    def alerts_channel(self) -> str:
        return f"{self.prefix}alerts"

    @property
    def alerts_log(self) -> str:
        return f"{self.prefix}alerts:log"

    # --- the incident slot: the alert log and everything written together with it -------------
    @property
    def incident_tag(self) -> str:
        """`ad:{ad:alerts:log}`: hash tag = the alert log's own name, so these keys share its slot.

        DESIGN.md fixes the alert stream's name (`ad:alerts:log`, no hash tag). A key without a tag
        hashes its whole name, so a key tagged with that name lands in the same Redis Cluster slot:
        incidents, open set, detector states and alert counter are written with the alert log by one
        script, on a cluster as on one node.
        """
        return f"{self.prefix}{{{self.alerts_log}}}"

    @property
    def incidents(self) -> str:
        """Hash incident id → incident JSON (in the alert log's slot)."""
        return f"{self.incident_tag}:incidents"

    @property
    def incidents_open(self) -> str:
        """Set of open incident ids (in the alert log's slot)."""
        return f"{self.incident_tag}:incidents:open"

    @property
    def detector_states(self) -> str:
        """Hash service → the detector's JSON state of it (last window handled, tracker, open incidents)."""
        return f"{self.incident_tag}:det"

    def scores(self, service: str) -> str:
        """Stream of the windows the detector scored for `service` (score, severity, anomalous, model
        version), entry id = the fingerprint's; in the alert log's slot, not the service's, because the
        detector writes it in the script that commits the window's state (`detect.window_scores`)."""
        return f"{self.incident_tag}:scores:{service}"

    @property
    def alert_stats(self) -> str:
        """Hash with `alerts_total`: alerts ever appended to the (trimmed) alert log."""
        return f"{self.incident_tag}:stats"

    @property
    def alerts_dead(self) -> str:
        """Stream of webhook deliveries that kept failing (acknowledged on the alert log with them)."""
        return f"{self.incident_tag}:alerts:dead"

    @property
    def webhook_stats(self) -> str:
        """Hash `<route>:delivered|failed_attempts|dead|skipped` → count."""
        return f"{self.incident_tag}:webhooks:stats"

    # keys of releases before the incident slot (read once by `store.admin.migrate_incident_keys`)
    @property
    def legacy_incidents(self) -> str:
        """Before the incident slot: hash incident id → JSON."""
        return f"{self.prefix}incidents"

    @property
    def legacy_incidents_open(self) -> str:
        """Before the incident slot: set of open incident ids."""
        return f"{self.prefix}incidents:open"

    @property
    def legacy_alerts_dead(self) -> str:
        """Before the incident slot: the webhook dead-letter stream."""
        return f"{self.prefix}alerts:dead"

    @property
    def legacy_webhook_stats(self) -> str:
        """Before the incident slot: the webhook delivery counters."""
        return f"{self.prefix}webhooks:stats"

    @property
    def silences(self) -> str:
        return f"{self.prefix}silences"

    @property
    def models_index(self) -> str:
        """Hash service → active model version."""
        return f"{self.prefix}models"

    @property
    def detector_lease(self) -> str:
        return f"{self.prefix}detector:lease"

    @property
    def demo_truth(self) -> str:
        return f"{self.prefix}demo:truth"

    @property
    def traffic_stops(self) -> str:
        """Hash service → JSON `{since, resumed?, by}`: its traffic stopped on purpose (a demo's end), so
        its silent windows from `since` until `resumed` are no gap (`store.traffic_stops`)."""
        return f"{self.prefix}stopped"

    # --- per service (hash-tagged) ----------------------------------------------------------
    def tag(self, service: str) -> str:
        return f"{self.prefix}{{{service}}}"

    def fingerprints(self, service: str) -> str:
        """Stream of sealed fingerprints; entry id = window start in ms."""
        return f"{self.tag(service)}{S['fp']}"

    def history(self, service: str, window_seconds: int) -> str:
        """Stream of sealed history fingerprints of one window length: windows before the live stream's
        first one, sent later (a backfill); training and plots read it, and the detector reads its newest
        windows as scoring context when the live stream is shorter than that (`owned_services.history`)."""
        return f"{self.tag(service)}{S['hist']}{window_seconds}"

    def state(self, service: str) -> str:
        """Hash: first (window), sealed (last sealed window), clock/clock_at (replay clock), live, hsealed,
        hclock/hclock_at (history), g/W (the config generation and window length it is set to)."""
        return f"{self.tag(service)}{S['state']}"

    def open_windows(self, service: str) -> str:
        """Sorted set of the windows holding aggregates that are not sealed yet (score = window)."""
        return f"{self.tag(service)}{S['open']}"

    def window(self, service: str, window: int) -> str:
        """Hash of one open window's aggregates."""
        return f"{self.tag(service)}{S['win']}{window}"

    def window_endpoints(self, service: str, window: int) -> str:
        return f"{self.tag(service)}{S['we']}{window}"

    def window_hll(self, service: str, window: int) -> str:
        return f"{self.tag(service)}{S['wh']}{window}"

    def window_new(self, service: str, window: int) -> str:
        """Set of the endpoints first seen in one open live window (history landing later clears them)."""
        return f"{self.tag(service)}{S['wn']}{window}"

    def cms_endpoints(self, service: str) -> str:
        return f"{self.tag(service)}{S['cms_ep']}"

    def cms_status(self, service: str) -> str:
        return f"{self.tag(service)}{S['cms_st']}"

    def filter(self, service: str) -> str:
        return f"{self.tag(service)}{S['bf']}"

    def topk(self, service: str) -> str:
        return f"{self.tag(service)}{S['topk']}"

    def raw(self, service: str) -> str:
        return f"{self.tag(service)}{S['raw']}"

    def models(self, service: str) -> str:
        """Hash version → model JSON (arrays + metadata)."""
        return f"{self.tag(service)}:models"

    def model_versions(self, service: str) -> str:
        """List of version numbers, newest last."""
        return f"{self.tag(service)}:models:versions"

    def legacy_detector_state(self, service: str) -> str:
        """Before the incident slot: string with the detector's JSON state of a service (now `detector_states`)."""
        return f"{self.tag(service)}:det"

    def detector_owner(self, service: str) -> str:
        """String with TTL: the consumer name of the detector that scores this service right now."""
        return f"{self.tag(service)}:det:owner"
