"""`anomalydesk setup`: load the gears library and store window length and sketch sizes (idempotent)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from anomalydesk.cli import CommandError
from anomalydesk.commands._common import client, emit

_CMS_FLAGS = ("cms_width", "cms_depth", "cms_error", "cms_prob")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _between_0_and_1(exclusive: bool) -> Callable[[str], float]:
    """An argparse type for a number in (0, 1) (`exclusive`) or [0, 1]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        inside = 0.0 < value < 1.0 if exclusive else 0.0 <= value <= 1.0
        if not inside:
            raise argparse.ArgumentTypeError(
                f"must be between 0 and 1{' (exclusive)' if exclusive else ''}, got {value}")
        return value

    return parse


_fraction = _between_0_and_1(exclusive=True)
_share = _between_0_and_1(exclusive=False)


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `setup` parser."""
    p = subparsers.add_parser(
        "setup", parents=[parent], help="load the gears library and store window and sketch sizes",
        description="Idempotent. Options not given keep their stored value (or the default on a new "
        "setup). Changing sketch sizes or the window on an existing setup needs --force, which "
        "recreates what they size and says what was reset.",
    )  # fmt: skip
    p.add_argument("--window", type=_positive_int, metavar="S", help="window length in seconds")
    p.add_argument("--cms-width", type=_positive_int, metavar="W", help="Count-Min Sketch width (with --cms-depth)")
    p.add_argument("--cms-depth", type=_positive_int, metavar="D", help="Count-Min Sketch depth (with --cms-width)")
    p.add_argument("--cms-error", type=_fraction, metavar="E",
                   help="Count-Min Sketch error as a fraction of the total count (with --cms-prob)")
    p.add_argument("--cms-prob", type=_fraction, metavar="P",
                   help="probability the CMS error bound is exceeded (with --cms-error)")
    p.add_argument("--cf-capacity", type=_positive_int, metavar="N",
                   help="interactions per service the filter holds before it grows")
    p.add_argument("--topk", type=_positive_int, metavar="K", help="heavy-hitter endpoints kept per service")
    p.add_argument("--retention", type=_positive_int, metavar="WINDOWS",
                   help="windows kept per fingerprint stream")
    p.add_argument("--raw-sample", type=_share, metavar="RATE",
                   help="full-fidelity mode: share of events also kept raw in a trimmed stream per service "
                        "(0 = off, the default; 1 = every event)")
    p.add_argument("--force", action="store_true", help="recreate sketches whose size changed (resets them)")


def check_cms_flags(args: argparse.Namespace) -> None:
    """Refuse a half-given or mixed Count-Min Sketch sizing with a message saying what to give."""
    given = {name for name in _CMS_FLAGS if getattr(args, name, None) is not None}
    dims, bounds = given & {"cms_width", "cms_depth"}, given & {"cms_error", "cms_prob"}
    if dims and bounds:
        raise CommandError("give either --cms-width and --cms-depth, or --cms-error and --cms-prob, not both")
    if len(dims) == 1:
        raise CommandError("--cms-width and --cms-depth go together: give both")
    if len(bounds) == 1:
        raise CommandError("--cms-error and --cms-prob go together: give both")


def build_settings(args: argparse.Namespace, base: Any) -> Any:
    """`base` (a config.SketchSettings) with what the command line sets replaced."""
    check_cms_flags(args)
    changes: dict[str, Any] = {}
    if args.cms_width is not None:
        changes.update(cms_width=args.cms_width, cms_depth=args.cms_depth)
    elif args.cms_error is not None:
        changes.update(cms_width=0, cms_depth=0, cms_error=args.cms_error, cms_prob=args.cms_prob)
    for flag, field in (("window", "window_seconds"), ("cf_capacity", "filter_capacity"),
                        ("topk", "topk"), ("retention", "retention"), ("raw_sample", "raw_sample")):  # fmt: skip
        if getattr(args, flag) is not None:
            changes[field] = getattr(args, flag)
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as err:  # a size beyond config.SKETCH_MAX_*: refused before anything is written
        raise CommandError(f"sketch size refused: {err} (limits: docs/engine.md)") from err


def _summary(result: dict[str, Any]) -> str:
    s = result.get("settings", {})
    sizes = (
        f"window {s.get('window_seconds')} s, Count-Min Sketch {s.get('cms_width')}×{s.get('cms_depth')}, "
        f"filter capacity {s.get('filter_capacity')}, Top-K {s.get('topk')}, "
        f"retention {s.get('retention')} windows, raw sample {s.get('raw_sample')}, "
        f"sketches: {result.get('sketch_backend')}"
    )
    if result.get("created"):
        return f"set up: {sizes}"
    if not result.get("changed"):
        return f"already set up, nothing changed: {sizes}"
    lines = [f"updated: {sizes}"]
    lines += [f"  {name}: {old} → {new}" for name, (old, new) in result["changed"].items()]
    lines += [f"  reset: {what}" for what in result.get("reset", [])]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Build the settings, call store.admin.setup, report what was created or reset."""
    from anomalydesk.config import SketchSettings
    from anomalydesk.store import admin, capabilities
    from anomalydesk.store.gears import GearsError

    check_cms_flags(args)  # before connecting: a usage error needs no server
    r = client(args)
    try:
        capabilities.detect(r)  # Redis < 7 (no Functions) gets its own clear message
        stored = admin.read_settings(r)
        settings = build_settings(args, stored.settings if stored.configured else SketchSettings())
        result = admin.setup(r, settings, force=args.force)
    except (admin.SetupConflict, GearsError, capabilities.UnsupportedServer) as err:
        raise CommandError(str(err)) from err
    finally:
        r.close()
    emit(args, result, _summary(result))
    return 0
