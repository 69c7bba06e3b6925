"""ASGI and WSGI middleware: one request metric per HTTP request, recorded exactly once.

The endpoint is `METHOD:/path` (the collector turns numeric and id-like path segments into `{id}` and
drops a trailing slash);
the latency runs until the response body is complete; an exception before the response started
counts as status 500.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable

EndpointFn = Callable[[str, str], str]


def _default_endpoint(method: str, path: str) -> str:
    return f"{method.upper()}:{path or '/'}"


class _Once:
    """Records one metric the first time it is called; later calls do nothing."""

    def __init__(self, client: Any, service: str | None, endpoint: str):
        self.client, self.service, self.endpoint = client, service, endpoint
        self.started = time.perf_counter()
        self.status: int | None = None
        self.done = False

    def __call__(self, status: int | None = None) -> None:
        if self.done:
            return
        self.done = True
        elapsed = (time.perf_counter() - self.started) * 1000.0
        code = self.status or status or 500
        self.client.record(self.client._metric(self.endpoint, code, elapsed, self.service, None))


class AnomalyASGIMiddleware:
    """`app = AnomalyASGIMiddleware(app, client, service="orders")` (Starlette, FastAPI, Quart, ...)."""

    def __init__(self, app: Any, client: Any, service: str | None = None,
                 endpoint: EndpointFn = _default_endpoint, exclude_paths: Iterable[str] = ()):
        self.app, self.client, self.service, self.endpoint = app, client, service, endpoint
        self.exclude = frozenset(exclude_paths)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") in self.exclude:
            await self.app(scope, receive, send)
            return
        once = _Once(self.client, self.service, self.endpoint(scope.get("method", "GET"), scope.get("path", "/")))

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                once.status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                once()

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            once(500)  # no-op when the body completed; else the app failed or returned early


class _ClosingIterable:
    """Wraps a WSGI response so the metric is recorded when the server closes it."""

    def __init__(self, result: Iterable[bytes], once: _Once):
        self._result, self._once = result, once

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._once(500)


class AnomalyWSGIMiddleware:
    """`app.wsgi_app = AnomalyWSGIMiddleware(app.wsgi_app, client, service="orders")` (Flask, Django, ...)."""

    def __init__(self, app: Any, client: Any, service: str | None = None,
                 endpoint: EndpointFn = _default_endpoint, exclude_paths: Iterable[str] = ()):
        self.app, self.client, self.service, self.endpoint = app, client, service, endpoint
        self.exclude = frozenset(exclude_paths)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if path in self.exclude:
            return self.app(environ, start_response)
        once = _Once(self.client, self.service, self.endpoint(environ.get("REQUEST_METHOD", "GET"), path))

        def start_wrapper(status: str, headers: Any, exc_info: Any = None) -> Any:
            once.status = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        try:
            result = self.app(environ, start_wrapper)
        except BaseException:
            once(500)
            raise
        return _ClosingIterable(result, once)
