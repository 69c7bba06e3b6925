"""The `anomalydesk` command: global options, subcommand dispatch, `--json` on stdout, logs on stderr.

Each subcommand lives in `anomalydesk.commands.<name>` and provides
`register(subparsers, parent) -> None` (adds its parser, with `parent` among its parents so the
global options work after the subcommand too) and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from anomalydesk import __version__, logs

# subcommand name → module in anomalydesk.commands (imported lazily: `--help` stays fast and the
# command-line tools never import Qt unless they open the app)
COMMANDS: dict[str, str] = {
    "app": "app",
    "server": "server",
    "setup": "setup",
    "demo": "demo",
    "collect": "collect",
    "train": "train",
    "detect": "detect",
    "status": "status",
    "query": "query",
    "incidents": "incidents",
    "models": "models",
    "services": "services",
    "backtest": "backtest",
    "bench": "bench",
    "scrape": "scrape",
    "notify": "notify",  # extension: webhook routing of alerts (docs/integrations.md)
    "diagnose": "diagnose",  # a zip for support (docs/reliability.md)
}


# exit status when stdout is closed before the output is written (`anomalydesk models list | head -1`):
# 128 + SIGPIPE, what a shell reports for a C tool stopped by the closed pipe, so `set -o pipefail`
# scripts see the same for us
EXIT_BROKEN_PIPE = 141


class CommandError(Exception):
    """A user-facing failure: printed as one line on stderr, exit code 2 (or `code`)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    default = argparse.SUPPRESS if suppress else None
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--redis", metavar="URL", default=default,
                        help="Redis URL (else $ANOMALYDESK_REDIS_URL, else the embedded server)")
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="machine-readable output on stdout (logs go to stderr)")
    parent.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0,
                        help="more logging on stderr")
    return parent


def _available() -> dict[str, str]:
    found = {}
    for name, module in COMMANDS.items():
        if importlib.util.find_spec(f"anomalydesk.commands.{module}") is not None:
            found[name] = module
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomalydesk", parents=[_global_options(suppress=False)],
        description="Desktop anomaly monitoring for microservices, on Redis.",
    )
    parser.add_argument("--version", action="version", version=f"anomalydesk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    after = _global_options(suppress=True)
    for module in _available().values():
        importlib.import_module(f"anomalydesk.commands.{module}").register(sub, after)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: the process's); its exit status."""
    try:
        try:
            return _dispatch(sys.argv[1:] if argv is None else argv)
        finally:
            if sys.stdout is not None:  # None in a windowed app (pythonw, the packaged binary)
                sys.stdout.flush()  # output that fit the buffer meets a closed pipe here, not at exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at the null device: the reader is gone, and Python's flush at exit must not fail
    (with a second traceback) on what is still buffered (the idiom of Python's `signal` docs)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file descriptor (captured in a test): nothing flushes to the pipe at exit


def _dispatch(argv: list[str]) -> int:
    parser = build_parser()
    names_command = any(a in COMMANDS for a in argv if not a.startswith("-"))
    asks_help = any(a in ("-h", "--help", "--version") for a in argv)
    if not names_command and not asks_help and "app" in _available():
        argv = ["app", *argv]  # `anomalydesk` alone opens the desktop app
    args = parser.parse_args(argv)
    logs.setup(getattr(args, "command", None) or "anomalydesk", getattr(args, "verbose", 0))
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    module = importlib.import_module(f"anomalydesk.commands.{COMMANDS[args.command]}")
    try:
        return int(module.run(args) or 0)
    except CommandError as err:
        print(f"anomalydesk {args.command}: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m anomalydesk.cli` runs this file as __main__; commands raise anomalydesk.cli.CommandError,
    # a different class from __main__.CommandError, so dispatch through the importable module
    from anomalydesk.cli import main as _main

    sys.exit(_main())
