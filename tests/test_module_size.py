"""No module of the core over ~400 lines without a reason written at its top (docs/architecture.md).

The core is every module under src/anomalydesk except the desktop app (`anomalydesk/app/`). A module
longer than `LIMIT` lines must say why in its module docstring, on a line that starts with `MARKER`
followed by the reason itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "anomalydesk"
LIMIT = 400
MARKER = "Why this module is long:"
MIN_REASON = 40  # characters after the marker: a reason, not the marker alone


def reason_of(source: str) -> str | None:
    """The reason the module docstring gives for its length (the text from MARKER to the paragraph's end)."""
    doc = ast.get_docstring(ast.parse(source)) or ""
    for paragraph in doc.split("\n\n"):
        if paragraph.startswith(MARKER):
            return " ".join(paragraph[len(MARKER):].split())
    return None


def problems(files: list[tuple[str, str]]) -> list[str]:
    """What is wrong: modules over LIMIT lines whose docstring gives no reason for it."""
    found = []
    for name, source in files:
        lines = source.count("\n") + (not source.endswith("\n") and bool(source))
        if lines <= LIMIT:
            continue
        reason = reason_of(source)
        if reason is None or len(reason) < MIN_REASON:
            found.append(f"{name}: {lines} lines and no {MARKER!r} paragraph (of {MIN_REASON}+ characters) "
                         "in its module docstring")
    return found


def core_modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "app" not in p.relative_to(SRC).parts[:1])


def test_every_long_core_module_says_why() -> None:
    modules = core_modules()
    assert len(modules) > 50 and not any(p.relative_to(SRC).parts[0] == "app" for p in modules)
    assert any(p.name == "detector.py" for p in modules)  # the walk found the core
    files = [(str(p.relative_to(SRC.parent)), p.read_text(encoding="utf-8")) for p in modules]
    assert problems(files) == []


def test_the_check_catches_a_long_module_without_a_reason() -> None:
    body = "x = 1\n" * (LIMIT + 1)
    short_doc = '"""Short."""\n'
    marker_only = f'"""Long.\n\n{MARKER} yes.\n"""\n'
    reasoned = f'"""Long.\n\n{MARKER} it is one job, one table of answers read against DESIGN.md.\n"""\n'
    assert problems([("short.py", short_doc + "x = 1\n" * 10)]) == []
    assert len(problems([("no_reason.py", short_doc + body)])) == 1
    assert len(problems([("marker_only.py", marker_only + body)])) == 1
    assert problems([("reasoned.py", reasoned + body)]) == []
    assert problems([("exactly.py", "x = 1\n" * LIMIT)]) == []
