"""`anomalydesk status`: window length, sketch backend, counters, services, models, incidents."""

from __future__ import annotations

import argparse
from typing import Any

from anomalydesk.commands._common import client, emit


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `status` parser."""
    subparsers.add_parser(
        "status", parents=[parent], help="what the server holds: counters, services, models, incidents",
        description="Summarise the AnomalyDesk data on the server; --json prints the documented keys.",
    )  # fmt: skip


def render(url: str, st: dict[str, Any], unused_models: dict[str, str] | None = None) -> str:
    """The human-readable status page; `unused_models`: service → why its active model does not score."""
    version = st.get("server_version")
    lines = [f"redis       {url}" + (f" (Redis {version})" if version else "")]
    if st.get("configured") is False:
        lines.append("setup       not done yet: run `anomalydesk setup`")
    lines += [
        f"window      {st['window_seconds']} s, sketches: {st['sketch_backend']}",
        f"events      {st['events_total']} accepted, {st['events_rejected']} rejected",
        f"windows     {st['windows_sealed']} sealed, {st['fingerprints']} fingerprints kept",
        f"services    {', '.join(st['services']) or '(none yet)'}",
    ]
    if st.get("retired_services"):
        lines.append(f"retired     {', '.join(st['retired_services'])}")
    models = st.get("models") or {}
    unused = unused_models or {}
    lines.append("models      " + (", ".join(f"{s} v{v}" + (" (not used)" if s in unused else "")
                                           for s, v in sorted(models.items())) or "(none trained)"))  # fmt: skip
    if unused:  # e.g. after a window-length change: the detector skips them until trained again
        service, reason = sorted(unused.items())[0]
        lines.append(f"            not used: {service}: {reason}" + (f" (and {len(unused) - 1} more)"
                                                                       if len(unused) > 1 else ""))  # fmt: skip
    lines.append(f"incidents   {st['incidents_open']} open, {st['alerts_total']} alerts in total")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print store.admin.status as text or JSON."""
    from anomalydesk.detect.service_state import service_states
    from anomalydesk.store import admin
    from anomalydesk.store.connection import redact_url
    from anomalydesk.store.locate import resolve_url

    r = client(args)
    try:
        st = admin.status(r)
        states = service_states(r) if st.get("models") else {}
    finally:
        r.close()
    unused = {s: e["reason"] for s, e in states.items() if s in st["models"] and e.get("reason")}
    emit(args, st, render(redact_url(resolve_url(getattr(args, "redis", None))), st, unused))
    return 0
