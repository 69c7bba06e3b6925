"""Timing a block of code or a function as one request metric."""

from __future__ import annotations

import functools
import inspect
import time
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Timer:
    """Context manager and decorator: records `endpoint` once per use, with the elapsed milliseconds.

    The status is `timer.status_code` if the code set it, else 500 when an exception escaped, else 200.
    """

    def __init__(self, client: Any, endpoint: str, service: str | None = None):
        self.client = client
        self.endpoint = endpoint
        self.service = service
        self.status_code: int | None = None
        self.elapsed_ms: float | None = None
        self._started = 0.0

    def __enter__(self) -> Timer:
        self.status_code = None
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.elapsed_ms = (time.perf_counter() - self._started) * 1000.0
        status = self.status_code or (500 if exc_type is not None else 200)
        self.client.record(self.client._metric(self.endpoint, status, self.elapsed_ms, self.service, None))

    def _fresh(self) -> Timer:
        return Timer(self.client, self.endpoint, self.service)

    def __call__(self, func: F) -> F:
        """Decorate a function (sync or async): each call is timed by its own Timer."""
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    return await func(*args, **kwargs)
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return func(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
