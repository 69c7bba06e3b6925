"""HTTP transports: the standard library's http.client (default, keep-alive) and httpx (optional, async)."""

from __future__ import annotations

import http.client
import ssl
import threading
from typing import Any, Union
from urllib.parse import urlsplit

from anomalydesk_client._core import Answer, TransportError, parse_answer

Verify = Union[bool, str]


def ssl_context(verify: Verify) -> ssl.SSLContext:
    """Verify against the system CAs (True), a CA bundle file (str), or not at all (False)."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return ssl.create_default_context()


def split_base_url(base_url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of the collector's base URL."""
    parts = urlsplit(base_url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must look like http(s)://host:port, got {base_url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path


class StdlibTransport:
    """One keep-alive connection, used by one request at a time (thread-safe through a lock)."""

    def __init__(self, base_url: str, timeout: float, verify: Verify = True):
        self.scheme, self.host, self.port, self.prefix = split_base_url(base_url)
        self.timeout = timeout
        self._context = ssl_context(verify) if self.scheme == "https" else None
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._context is not None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=self._context)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        """Send one request; TransportError when the collector cannot be reached."""
        with self._lock:
            delivered = False  # whether any attempt may have reached the collector
            for fresh in (self._conn is None, True):
                conn = self._connection()
                if conn.sock is None:
                    try:
                        conn.connect()
                    except OSError as err:  # refused, unreachable, TLS failure: nothing was sent
                        self.close_unlocked()
                        raise TransportError(f"{self.scheme}://{self.host}:{self.port}: {err}",
                                             maybe_delivered=delivered) from err
                try:
                    conn.request(method, self.prefix + path, body=body, headers=headers)
                    response = conn.getresponse()
                    raw = response.read()
                    answer = parse_answer(response.status, dict(response.getheaders()), raw)
                    if response.will_close:
                        self.close_unlocked()
                    return answer
                except (OSError, http.client.HTTPException) as err:
                    self.close_unlocked()
                    delivered = True  # the request, or part of it, may have been read
                    # a kept-alive connection the server closed meanwhile: try once on a new one
                    # (safe for POSTs: they carry an idempotency key)
                    stale = isinstance(err, (http.client.RemoteDisconnected, BrokenPipeError,
                                             ConnectionResetError))
                    if fresh or not stale:
                        raise TransportError(f"{self.scheme}://{self.host}:{self.port}: {err}",
                                             maybe_delivered=delivered) from err
            raise AssertionError("unreachable")

    def close_unlocked(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self.close_unlocked()


class HttpxAsyncTransport:
    """httpx.AsyncClient (connection pool, HTTP keep-alive) for AsyncAnomalyClient when httpx is installed."""

    def __init__(self, base_url: str, timeout: float, verify: Verify = True):
        import httpx

        self._httpx = httpx
        split_base_url(base_url)
        verify_arg: Any = ssl_context(verify) if base_url.startswith("https") else True
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, verify=verify_arg)

    async def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        try:
            response = await self._client.request(method, path, content=body, headers=headers)
        except self._httpx.TransportError as err:
            never_sent = isinstance(err, (self._httpx.ConnectError, self._httpx.ConnectTimeout,
                                          self._httpx.PoolTimeout))
            raise TransportError(str(err) or type(err).__name__, maybe_delivered=not never_sent) from err
        return parse_answer(response.status_code, dict(response.headers), response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def httpx_available() -> bool:
    """True when the optional httpx dependency is importable."""
    try:
        import httpx  # noqa: F401
    except ImportError:
        return False
    return True
