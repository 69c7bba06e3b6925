"""`anomalydesk bench [ingest|collector|detect|app|all] [--quick]`: measured numbers, JSON with --json."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from anomalydesk.cli import CommandError
from anomalydesk.commands._common import emit

PARTS = ("ingest", "collector", "detect", "app")


def register(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bench", parents=[parent], help="measure throughput and latency (throwaway server)",
                       description="Benchmarks. Without --redis on this command line they start a throwaway "
                                   "redis-server (never your data); each figure sits beside a ceiling or "
                                   "reference measured in the same run.")
    p.add_argument("part", nargs="?", default="all", choices=[*PARTS, "all"])
    p.add_argument("--quick", action="store_true", help="the same parts, smaller (under ~30 s each)")


def run(args: argparse.Namespace) -> int:
    parts = PARTS if args.part == "all" else (args.part,)
    results: dict[str, dict] = {}
    for part in parts:
        try:
            module = importlib.import_module(f"anomalydesk.bench.{part}")
        except ImportError as err:
            raise CommandError(f"benchmark {part!r} is not available: {err}") from err
        print(f"bench {part}: running{' (quick)' if args.quick else ''} …", file=sys.stderr)
        start = time.perf_counter()
        results[part] = module.run(args.quick, getattr(args, "redis", None))
        print(f"bench {part}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    emit(args, results)
    return 0
