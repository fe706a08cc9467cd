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
"""

from __future__ import annotations

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
CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SCHEMES: Final = ("redis", "rediss", "unix", "valkey", *CLUSTER_SCHEMES)

Client = redis.Redis | RedisCluster


def no_retry() -> Retry:
    """redis-py's retry object for the policy above: no retry."""
    return Retry(NoBackoff(), 0)


class OutageTranslation:
    """Turn connection failures (redis-py's, our connections') into `BrokerUnavailable`.

    A class, not `contextlib.asynccontextmanager`: every command of the hub passes through
    one, and a generator-based one costs a generator per command (docs/performance.md:
    publish path).
    """

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, OUTAGE_ERRORS):
            # Our own connections' failures name the address (`endpoint.Unanswered`);
            # redis-py's may carry more than that, so they give their kind only.
            detail = str(exc) if isinstance(exc, Unanswered) else type(exc).__name__
            raise BrokerUnavailable(detail) from exc


def translated_outage() -> OutageTranslation:
    """Turn connection failures met in the block into `BrokerUnavailable`."""
    return OutageTranslation()


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
        if not self._forced:
            probe = server_client(self.url, pool=True)
            try:
                async with translated_outage():
                    info = await probe.info("cluster")
            except BaseException:
                await probe.aclose()
                raise
            if not info.get("cluster_enabled"):
                return probe
            await probe.aclose()
        cluster = cluster_client(self.url)
        async with translated_outage():
            await cluster.initialize()
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
