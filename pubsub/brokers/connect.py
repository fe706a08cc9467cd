"""From a broker URL to Redis clients: one server or a cluster, and how they retry.

`redis://` and `rediss://` (TLS) name one server or any node of a cluster: the first use
asks the node (`INFO cluster`) and, on `cluster_enabled:1`, talks to the whole cluster
through `redis.asyncio.RedisCluster`, which routes each command by its key's slot.
`redis+cluster://` and `rediss+cluster://` skip the question (docs/api.md §8).

The one retry policy (docs/api.md §7): redis-py retries nothing. A write whose reply was
lost may have been applied (a commit, a milestone count), so it must not be sent twice;
every caller sees `BrokerUnavailable` at once instead, and the one that can wait retries
on the schedule of `pubsub.backoff`: the publisher's queue, the subscription feed. HTTP
answers 503 + Retry-After. Redirections (MOVED, ASK) are followed: they are refusals,
nothing ran. Pooled connections a restarted server closed are replaced by redis-py at
checkout, so one restart costs no failed call.

A TLS handshake that fails (the server's certificate not signed by `ssl_ca_certs`, a
plain-text port) is an outage like a refused connection, whose `BrokerUnavailable` says
so, naming the address (`tls_refusal`): that is what `/readyz`, a refused publish and
`progress-hub serve` at start show (tests/app/test_tls_cluster.py).
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Final
from urllib.parse import SplitResult, urlsplit, urlunsplit

import anyio
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pubsub.brokers.endpoint import Unanswered
from pubsub.errors import BrokerUnavailable

CONNECT_TIMEOUT: Final = 2.0
COMMAND_TIMEOUT: Final = 3.0
POOL_SIZE: Final = 64
POOL_WAIT: Final = 5.0
# redis-py's cluster client has no blocking pool: past this many connections to one node
# a command fails (MaxConnectionsError) instead of waiting for one. Far more than the
# batched commands of one process keep busy, so that it means a real overload.
CLUSTER_NODE_CONNECTIONS: Final = 512
OUTAGE_ERRORS: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    # A cluster in the middle of a failover or a slot move: no master for the slot yet,
    # a script's keys split between two nodes (TRYAGAIN), redirections that ran out.
    ClusterDownError,
    ClusterError,
    MasterDownError,
    TryAgainError,
    SlotNotCoveredError,
)
DEFAULT_PORT: Final = 6379
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SCHEMES: Final = ("redis", "rediss", "unix", "valkey", *CLUSTER_SCHEMES)

Client = redis.Redis | RedisCluster


def no_retry() -> Retry:
    """redis-py's retry object for the policy above: no retry."""
    return Retry(NoBackoff(), 0)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def tls_refusal(exc: BaseException, address: str) -> str | None:
    """What went wrong, in a sentence naming `address`, when a TLS handshake failed
    behind `exc` (redis-py wraps it in a `ConnectionError`); None for any other error."""
    error = next((e for e in _chain(exc) if isinstance(e, ssl.SSLError)), None)
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of {address} was refused ({error.verify_message}): "
            "ssl_ca_certs in the broker URL must name the CA that signed it, and the URL a "
            "host it was made for"
        )
    if error is not None:
        return (
            f"the TLS handshake with {address} failed ({error.reason or error}): does it "
            "listen with TLS on that port?"
        )
    return None


def outage_detail(exc: BaseException, address: str | None = None) -> str | None:
    """The detail of the `BrokerUnavailable` for `exc`, or None when `exc` is no outage.

    A connection failure of redis-py's is named by its type (`ConnectionError`), one of
    ours by its message (`endpoint.Unanswered`: the address), a failed TLS
    handshake by `tls_refusal`; redis-py's cluster client reports an unreachable cluster
    as a `RedisClusterException` raised from the connection failure, named by that."""
    chain = _chain(exc)
    if not isinstance(exc, OUTAGE_ERRORS):
        if not isinstance(exc, RedisClusterException):
            return None
        cause = next((e for e in chain[1:] if isinstance(e, OUTAGE_ERRORS)), None)
        if cause is None:
            return None  # a refusal of our own making (keys of two slots, say)
        exc = cause
    refusal = tls_refusal(exc, address or "the broker")
    if refusal is not None:
        return refusal
    # Our own connections' failures name the address (`endpoint.Unanswered`); redis-py's
    # may carry more than that, so they give their kind only.
    return str(exc) if isinstance(exc, Unanswered) else type(exc).__name__


class OutageTranslation:
    """Turn connection failures (redis-py's, our connections') into `BrokerUnavailable`.

    A class, not `contextlib.asynccontextmanager`: every command of the hub passes through
    one, and a generator-based one costs a generator per command (docs/performance.md:
    publish path).
    """

    address: str | None = None
    """The server's `host:port`, for a failed TLS handshake's message, when known."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and (detail := outage_detail(exc, self.address)) is not None:
            raise BrokerUnavailable(detail) from exc


def translated_outage() -> OutageTranslation:
    """Turn connection failures met in the block into `BrokerUnavailable`."""
    return OutageTranslation()


def translated_outage_at(address: str) -> OutageTranslation:
    """`translated_outage`, whose failed TLS handshake's message names `address`."""
    translation = OutageTranslation()
    translation.address = address
    return translation


def address_of(url: str) -> str:
    """The `host:port` (or socket path) a broker URL names: what messages may show."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or DEFAULT_PORT}"


PLAIN_PROBE_TIMEOUT: Final = 1.0


async def answers_plain_text(host: str, port: int) -> bool:
    """True when `host:port` answers a plain-text `PING` as Redis does: the diagnosis of
    a TLS handshake that never completed (a TLS client sent to a plain-text port)."""
    try:
        with anyio.fail_after(PLAIN_PROBE_TIMEOUT):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(b"PING\r\n")
                reply = await stream.receive()
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
        return False
    # `-NOAUTH`: a plain-text port that asks for a password first.
    return reply.startswith((b"+PONG", b"-NOAUTH"))


async def failed_open(
    url: str, where: str, exc: TimeoutError | ssl.SSLError, waited: float
) -> str:
    """Why a connection of ours (subscription or commands) to `where` at `url` failed to
    open within `waited` s, in a sentence naming it. A TLS handshake with a plain-text port
    never completes or fails at once, by the bytes the port answers; a cluster without
    `tls-cluster yes` announces those to TLS clients (tests/app/test_tls_cluster.py)."""
    parts = urlsplit(url)
    if parts.scheme == "rediss" and parts.hostname and parts.port:
        if await answers_plain_text(parts.hostname, parts.port):
            return (
                f"{where} answers in plain text, not TLS: a cluster tells TLS clients its "
                "nodes' TLS ports only with tls-cluster yes on every node"
            )
    refusal = tls_refusal(exc, where)
    return refusal or f"{where} did not answer within {waited:g} s"


def _plain(url: str) -> tuple[str, bool]:
    """The URL redis-py understands, and whether the scheme forces cluster mode."""
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        return urlunsplit(parts._replace(scheme=CLUSTER_SCHEMES[parts.scheme])), True
    if parts.scheme == "valkey":
        return urlunsplit(parts._replace(scheme="redis")), False
    return url, False


def plain_url(url: str) -> str:
    """`url` in a scheme redis-py knows (`redis+cluster://` and `valkey://` are `redis://`)."""
    return _plain(url)[0]


def node_url(url: str, host: str, port: int) -> str:
    """`url` (credentials, TLS, options kept) pointed at another node of its cluster."""
    parts: SplitResult = urlsplit(_plain(url)[0])
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    # A cluster has one database: keep no path.
    return urlunsplit(parts._replace(netloc=netloc, path=""))


def server_client(url: str, *, pool: bool) -> redis.Redis:
    """A client of one server; `pool`: commands (a bounded, blocking pool), else one
    connection's worth (a subscription connection, a probe)."""
    plain = _plain(url)[0]
    if not pool:
        return redis.Redis.from_url(plain, socket_connect_timeout=CONNECT_TIMEOUT, retry=no_retry())
    # The pool blocks rather than raising: redis-py's default async pool raises
    # MaxConnectionsError once 100 commands are in flight, which turned a burst of stream
    # connects away while Redis was fine (docs/performance.md, fan-out).
    connections = redis.BlockingConnectionPool.from_url(
        plain,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        retry=no_retry(),
    )
    return redis.Redis.from_pool(connections)


def cluster_client(url: str) -> RedisCluster:
    """A client of the cluster `url` names a node of."""
    return RedisCluster.from_url(
        _plain(url)[0],
        max_connections=CLUSTER_NODE_CONNECTIONS,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        retry=no_retry(),
    )


class Connector:
    """The command client of a broker URL, found on first use (one server or a cluster)."""

    def __init__(self, url: str) -> None:
        if urlsplit(url).scheme not in SCHEMES:
            raise ValueError(f"not a Redis URL: {url!r}")
        self.url = url
        self._forced = _plain(url)[1]
        self._client: Client | None = None
        self._finding = anyio.Lock()
        self._refreshing = False

    @property
    def cluster(self) -> RedisCluster | None:
        """The cluster client, once the URL is known to name a cluster."""
        return self._client if isinstance(self._client, RedisCluster) else None

    async def client(self) -> Client:
        """The client for commands; the first call asks the server what it is."""
        if self._client is not None:
            return self._client
        async with self._finding:  # only until the first answer
            if self._client is None:
                self._client = await self._find()
            return self._client

    async def _find(self) -> Client:
        address = address_of(self.url)
        if not self._forced:
            probe = server_client(self.url, pool=True)
            try:
                async with translated_outage_at(address):
                    info = await probe.info("cluster")
            except BaseException:
                await probe.aclose()
                raise
            if not info.get("cluster_enabled"):
                return probe
            await probe.aclose()
        cluster = cluster_client(self.url)
        try:
            # An unreachable node is a RedisClusterException here: translated too.
            async with translated_outage_at(address):
                await cluster.initialize()
        except BaseException:
            await cluster.aclose()
            raise
        return cluster

    async def refresh(self) -> None:
        """Read the cluster's slot map again: after a node failed, its slots may have a
        new master. redis-py does so by itself after a failed command, but not after a
        failed pipeline whose errors it hands back (`raise_on_error=False`)."""
        cluster = self.cluster
        if cluster is None or self._refreshing:
            return
        self._refreshing = True
        try:
            async with translated_outage():
                await cluster.nodes_manager.initialize()
        finally:
            self._refreshing = False

    async def aclose(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            await self._client.aclose()
