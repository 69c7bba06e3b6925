"""Which Redis to use — the one place that may start the embedded server.

`resolve_url(url)`: an explicit URL, else `$ANOMALYDESK_REDIS_URL`, else the embedded server
(`store.embedded`, started if it is not running). Entry points (the CLI's commands, the collector,
the app, the demo) call it; `store.connection.connect()` only connects to a URL it is given or finds
in the environment, and never spawns a server (so the connection module and the embedded server no
longer import each other).
"""

from __future__ import annotations

from anomalydesk.store import embedded
from anomalydesk.store.connection import configured_url


def resolve_url(url: str | None) -> str:
    """The URL to use: `url`, else `$ANOMALYDESK_REDIS_URL`, else the embedded server (started if needed)."""
    return configured_url(url) or embedded.ensure_running().url
