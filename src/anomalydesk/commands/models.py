"""`anomalydesk models [list | activate SERVICE VERSION | rollback SERVICE]`: the model registry."""

from __future__ import annotations

import argparse
from typing import Any

from anomalydesk.cli import CommandError
from anomalydesk.commands._common import client, emit, require_known_service


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `models` parser."""
    p = subparsers.add_parser(
        "models", parents=[parent], help="list model versions, activate one, or roll back",
        description="`list` (default) shows every kept model version per service (active, stale = "
        "trained on an older fingerprint schema); `activate SERVICE VERSION`; `rollback SERVICE` "
        "activates the version before the active one.",
    )  # fmt: skip
    p.add_argument("action", nargs="?", choices=("list", "activate", "rollback"), default="list")
    p.add_argument("service", nargs="?", metavar="SERVICE")
    p.add_argument("version", nargs="?", metavar="VERSION")


def _row(m: dict[str, Any]) -> str:
    from anomalydesk.detect.incident_model import local_time

    created = local_time(m["created"])  # as the app's Training panel shows it
    flags = ", ".join(x for x in ("active" if m["active"] else "", "STALE" if m["stale"] else "") if x)
    drift = "drift-aware" if int(m.get("model_format") or 1) >= 2 else "format 1"  # detect/model.py
    return f"{m['service']:<20} v{m['version']:<4} {created}  {m['windows']:>7} windows  {drift:<11}  {flags}"


def _as_json(m: dict[str, Any]) -> dict[str, Any]:
    """A model version for `--json`: times as RFC 3339 UTC, as every `--json` output gives them (the
    epoch seconds as `created_epoch`, as `incidents silences --json` names its epoch times)."""
    from anomalydesk.detect.incident_model import rfc3339

    created = m.get("created")
    if not isinstance(created, int | float):
        return m
    return {**m, "created": rfc3339(created), "created_epoch": created}


def run(args: argparse.Namespace) -> int:
    """List, activate or roll back."""
    from anomalydesk.store import models as registry

    r = client(args)
    try:
        if args.service:
            require_known_service(args.service, _known(r))
        if args.action == "list":
            services = [args.service] if args.service else sorted(_services(r))
            found = [m.as_dict() for s in services for m in registry.list_models(r, s)]
            emit(args, {"models": [_as_json(m) for m in found]},
                 "\n".join(map(_row, found)) or "no models yet (run `anomalydesk train`)")
            return 0
        if not args.service:
            raise CommandError(f"`models {args.action}` needs the SERVICE")
        try:
            if args.action == "activate":
                if args.version is None or not args.version.lstrip("v").isdigit():
                    raise CommandError(f"`models activate {args.service}` needs a VERSION number, got {args.version!r}")
                info = registry.activate(r, args.service, int(args.version.lstrip("v")))
            else:
                info = registry.rollback(r, args.service)
        except registry.ModelNotFound as err:
            raise CommandError(str(err), code=1) from None
    finally:
        r.close()
    emit(args, _as_json(info.as_dict()), f"{info.service}: model v{info.version} is active")
    return 0


def _services(r: Any) -> set[str]:
    from anomalydesk import config
    from anomalydesk.store import models as registry
    from anomalydesk.store.keys import Keys

    keys = Keys(config.key_prefix())
    names = {s.decode() if isinstance(s, bytes) else s for s in r.smembers(keys.services)}
    return names | set(registry.active_versions(r, keys=keys))


def _known(r: Any) -> set[str]:
    """Every service a SERVICE argument may name: the live ones, those with a model, and retired ones."""
    from anomalydesk.store import admin

    return _services(r) | set(admin.service_names(r))
