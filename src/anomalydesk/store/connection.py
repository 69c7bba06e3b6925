"""Redis clients from a URL: redis://, rediss:// (TLS), unix://, ACL user and password.

Every client gets its timeouts, health checks and retry policy from `config.py` on purpose (not
redis-py's defaults) and returns bytes (`decode_responses=False`): callers decode what they read.
With no URL given and none in the environment, `connect()` refuses (ConnectionFailed): starting the
embedded server is the entry points' decision (`store.locate.resolve_url`), not this module's.

Accepted forms:
    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db][?ssl_ca_certs=F&ssl_certfile=F&ssl_keyfile=F&ssl_cert_reqs=R]
    unix://[[user]:password@]/path/to/redis.sock[?db=N]

Redis Cluster (docs/cluster.md): `redis+cluster://` or `rediss+cluster://` (any one node; the others
are discovered), or `?cluster=1` on a redis:// / rediss:// URL. Without either, `connect()` asks the
node (`INFO cluster`) and returns a cluster client when it says `cluster_enabled:1`; `?cluster=0`
skips that check. A cluster has only database 0 and no unix sockets.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from anomalydesk import config

SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
CLUSTER_OPTION = "cluster"
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
CERT_REQS = ("none", "optional", "required")
DEFAULT_PORT = 6379
_RETRIED = (RedisConnectionError, RedisTimeoutError)
_NEVER_RETRIED = (AuthenticationError, AuthorizationError)
_AUTH_REPLIES = ("NOAUTH", "WRONGPASS", "Authentication")


class ConnectionFailed(Exception):
    """Redis could not be reached or refused us; the message names the URL (no password) and why."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot connect to Redis at {redact_url(url)}: {reason}")
        self.url = redact_url(url)
        self.reason = reason


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***` (safe to print and log)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def configured_url(url: str | None) -> str | None:
    """`url`, else `$ANOMALYDESK_REDIS_URL`, else None (see `store.locate.resolve_url` for the embedded server)."""
    if url:
        return url
    return os.environ.get(config.ENV_REDIS_URL, "").strip() or None


def resolve_url(url: str | None) -> str:
    """`configured_url(url)`, or a ConnectionFailed saying where a URL comes from."""
    found = configured_url(url)
    if found is None:
        raise ConnectionFailed("(none)", f"no Redis URL: pass one (--redis URL) or set {config.ENV_REDIS_URL}; "
                               "the embedded server is started by the commands and the app, not by connect()")
    return found


def parse_url(url: str) -> dict[str, Any]:
    """redis-py keyword arguments for `url` (host/port or socket, db, user, password, TLS options)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ConnectionFailed(url, f"not a valid URL ({err})") from None
    scheme = parts.scheme.lower()
    scheme = CLUSTER_SCHEMES.get(scheme, scheme)
    if scheme not in SCHEMES:
        raise ConnectionFailed(url, f"unsupported scheme {scheme or '(none)'!r}; use redis://, rediss:// or unix://")
    query = parse_qs(parts.query, keep_blank_values=True)
    query.pop(CLUSTER_OPTION, None)  # read by cluster_mode()
    known = ("db", *TLS_OPTIONS, CLUSTER_OPTION)
    for name, values in query.items():
        if name not in known:
            raise ConnectionFailed(url, f"unknown URL option {name!r} (known: {', '.join(known)})")
        if len(values) != 1:
            raise ConnectionFailed(url, f"URL option {name!r} given {len(values)} times")
    options = {name: values[0] for name, values in query.items()}

    kwargs: dict[str, Any] = {}
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    if scheme == "unix":
        if not parts.path:
            raise ConnectionFailed(url, "unix:// needs a socket path, e.g. unix:///run/redis/redis.sock")
        kwargs["unix_socket_path"] = unquote(parts.path)
        db_text = options.get("db", "0")
    else:
        if not parts.hostname:
            raise ConnectionFailed(url, "no host in the URL")
        kwargs["host"] = parts.hostname
        kwargs["port"] = port or DEFAULT_PORT
        path_db = parts.path.strip("/")
        if path_db and "db" in options:
            raise ConnectionFailed(url, "database given twice (path and ?db=)")
        db_text = path_db or options.get("db", "0")
    try:
        kwargs["db"] = int(db_text)
    except ValueError:
        raise ConnectionFailed(url, f"database must be a number, not {db_text!r}") from None
    if kwargs["db"] < 0:
        raise ConnectionFailed(url, f"database must be 0 or more, not {kwargs['db']}")

    tls = {name: options[name] for name in TLS_OPTIONS if name in options}
    if scheme == "rediss":
        kwargs["ssl"] = True
        reqs = tls.get("ssl_cert_reqs", "required").lower()
        if reqs not in CERT_REQS:
            raise ConnectionFailed(url, f"ssl_cert_reqs must be one of {', '.join(CERT_REQS)}, not {reqs!r}")
        tls["ssl_cert_reqs"] = reqs
        kwargs.update(tls)
    elif tls:
        raise ConnectionFailed(url, f"TLS options ({', '.join(tls)}) need a rediss:// URL")
    return kwargs


def cluster_mode(url: str) -> bool | None:
    """True for a cluster URL, False for `?cluster=0`, None when the server should be asked."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    values = parse_qs(parts.query, keep_blank_values=True).get(CLUSTER_OPTION)
    if scheme in CLUSTER_SCHEMES:
        if values and values[-1] in ("0", "no", "false"):
            raise ConnectionFailed(url, f"{scheme}:// and ?cluster={values[-1]} contradict each other")
        return True
    if values is None:
        return None
    if len(values) != 1 or values[0] not in ("0", "1", "yes", "no", "true", "false"):
        raise ConnectionFailed(url, f"URL option 'cluster' must be 0 or 1, not {values!r}")
    if values[0] in ("1", "yes", "true"):
        if scheme == "unix":
            raise ConnectionFailed(url, "Redis Cluster cannot be reached over a unix socket")
        return True
    return False


def client_options() -> dict[str, Any]:
    """Timeouts, health checks and encoding every AnomalyDesk client uses (retry is added per flavour)."""
    return {
        "socket_timeout": config.SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": config.CONNECT_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "health_check_interval": config.HEALTH_CHECK_INTERVAL_SECONDS,
        "decode_responses": False,
    }


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=config.RETRY_BACKOFF_CAP_SECONDS, base=config.RETRY_BACKOFF_BASE_SECONDS)


def _retryable(err: Exception, is_retryable: Callable[[Exception], bool] | None) -> bool:
    # a refused password is a ConnectionError subclass in redis-py, but retrying cannot fix it (and the
    # connect and command retries nest: a wrong password would otherwise cost seconds before the error)
    return not isinstance(err, _NEVER_RETRIED) and (is_retryable is None or is_retryable(err))


class PolicyRetry(Retry):
    """Retry dropped connections and timeouts with exponential backoff; never a refused password.

    Only public redis-py API: `call_with_retry`'s own `is_retryable` hook, composed with the caller's.
    """

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any],
                        is_retryable: Callable[[Exception], bool] | None = None,
                        with_failure_count: bool = False) -> Any:  # fmt: skip
        """Run `do`, retrying as redis-py's Retry does except for authentication errors."""
        return super().call_with_retry(do, fail, is_retryable=lambda err: _retryable(err, is_retryable),
                                       with_failure_count=with_failure_count)


class AsyncPolicyRetry(redis.asyncio.retry.Retry):
    """The asyncio twin of PolicyRetry."""

    async def call_with_retry(self, do: Callable[[], Awaitable[Any]], fail: Callable[..., Awaitable[Any]],
                              is_retryable: Callable[[Exception], bool] | None = None,
                              with_failure_count: bool = False) -> Any:  # fmt: skip
        """Await `do`, retrying as redis-py's Retry does except for authentication errors."""
        return await super().call_with_retry(do, fail, is_retryable=lambda err: _retryable(err, is_retryable),
                                             with_failure_count=with_failure_count)


def retry_policy() -> Retry:
    """Reconnect and resend after a dropped connection or a timeout, with exponential backoff."""
    return PolicyRetry(_backoff(), config.RETRY_ATTEMPTS, supported_errors=_RETRIED)


def async_retry_policy() -> redis.asyncio.retry.Retry:
    """The asyncio twin of `retry_policy`."""
    return AsyncPolicyRetry(_backoff(), config.RETRY_ATTEMPTS, supported_errors=_RETRIED)


def describe_error(err: BaseException) -> str:
    """A short reason for a redis-py error, for messages that name the URL beside it."""
    text = str(err) or type(err).__name__
    if isinstance(err, AuthenticationError) or (
        isinstance(err, ResponseError) and any(word in text for word in _AUTH_REPLIES)
    ):
        return f"authentication failed ({text})"
    if isinstance(err, BusyLoadingError):
        return f"the server is still loading its data ({text})"
    if isinstance(err, RedisTimeoutError):
        return f"timed out ({text})"
    return text


def build_client(options: dict[str, Any], cluster: bool = False) -> redis.Redis:
    """The client for complete options: a ClusterClient when `cluster`, else a plain redis.Redis."""
    if not cluster:
        return redis.Redis(**options)
    from anomalydesk.store.cluster import ClusterClient

    options = dict(options)
    if options.pop("db", 0) != 0:
        raise ValueError("Redis Cluster has only database 0")
    if "unix_socket_path" in options:
        raise ValueError("Redis Cluster cannot be reached over a unix socket")
    return ClusterClient(**options)  # type: ignore[return-value]


def connect(url: str | None = None, *, check: bool = True, **overrides: Any) -> redis.Redis:
    """A client for `url` (or `$ANOMALYDESK_REDIS_URL`), checked with PING unless `check=False`.

    A URL that does not say whether it is a cluster is asked (`INFO cluster`, on the connection the
    PING opened) and a cluster client is returned when the node runs in cluster mode.
    """
    url = resolve_url(url)
    options = {**parse_url(url), **client_options(), "retry": retry_policy(), **overrides}
    cluster = cluster_mode(url)
    client = _build(url, options, bool(cluster))
    if check:
        try:
            client.ping()
        except RedisError as err:
            client.close()
            reason = describe_error(err)
            if reason.startswith("authentication failed") and "password" not in options:
                reason = "authentication failed: the server needs a password and the URL has none"
            raise ConnectionFailed(url, reason) from err
        except OSError as err:  # TLS files that cannot be read surface here
            client.close()
            raise ConnectionFailed(url, str(err)) from err
    if cluster is None and (_says_cluster(client) if check else _quick_probe(url)):
        client.close()
        client = _build(url, options, True)
    return client


def _build(url: str, options: dict[str, Any], cluster: bool) -> redis.Redis:
    try:
        return build_client(options, cluster)
    except (TypeError, ValueError) as err:
        raise ConnectionFailed(url, str(err)) from None
    except (RedisError, RedisClusterException) as err:  # a cluster client reads the slot map when built
        raise ConnectionFailed(url, describe_error(err)) from err


def _quick_probe(url: str) -> bool:
    """Ask a URL's node whether it runs in cluster mode: one short try, False if it does not answer.

    For clients created without a check (`connect(check=False)`, `connect_async`): an unreachable
    server costs at most CLUSTER_PROBE_TIMEOUT_SECONDS here and is reported by the first command.
    """
    options = parse_url(url)
    if "unix_socket_path" in options:
        return False
    probe = redis.Redis(**{**options, **client_options(), "retry": Retry(NoBackoff(), 0),
                           "socket_connect_timeout": config.CLUSTER_PROBE_TIMEOUT_SECONDS,
                           "socket_timeout": config.CLUSTER_PROBE_TIMEOUT_SECONDS})  # fmt: skip
    try:
        return _says_cluster(probe)
    finally:
        probe.close()


def _says_cluster(client: redis.Redis) -> bool:
    from anomalydesk.store.cluster import cluster_enabled

    try:
        return cluster_enabled(client)
    except (RedisError, OSError):  # unreachable now: the caller sees that on its first command
        return False


def connect_async(url: str | None = None, **overrides: Any) -> redis.asyncio.Redis:
    """An asyncio client for `url` (not yet connected: errors surface on the first command).

    `url` or `$ANOMALYDESK_REDIS_URL` (never the embedded server: resolve it first with
    `store.locate.resolve_url`). Close the client with `await client.aclose()`.
    """
    url = resolve_url(url)
    kwargs = {**parse_url(url), **client_options(), "retry": async_retry_policy(), **overrides}
    cluster = cluster_mode(url)
    if cluster is None:
        cluster = _quick_probe(url)
    if cluster:
        from anomalydesk.store.cluster import async_cluster_client

        return async_cluster_client(kwargs)  # type: ignore[return-value]
    return redis.asyncio.Redis(**kwargs)
