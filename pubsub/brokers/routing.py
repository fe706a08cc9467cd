"""Commands on our own connections: one per master node, each command sent to its key's.

The hot commands of the broker (commits, record reads) go through here, on
`pubsub.brokers.command_connection` (docs/performance.md, "Publish path"). On one server
there is one connection; on a cluster, one per master, each command routed by its key's
slot with redis-py's public cluster API (`RedisCluster.keyslot`, its `nodes_manager`'s slot
map, which `Connector.refresh` reads again). The connections of the nodes of one call are all
written before any reply is awaited: one round trip for the whole call, as a pipeline.

The one retry policy of `pubsub.brokers.connect`, unchanged:

- a refusal, where nothing ran, is sent again: `NOSCRIPT` (the server restarted and forgot
  a script: `SCRIPT LOAD` on that connection first), `MOVED` (the slot map is read again
  and the command goes to the slot's new master), `ASK` (a slot being moved: `ASKING` and
  the command to the node named), at most `REDIRECTIONS` times;
- a lost or silent node fails its commands with `Unanswered` in their places (the slot
  map is read again, so that the caller's own retry finds a promoted replica); nothing
  that may have run is sent again;
- the refusals of a cluster in motion (`TRYAGAIN`, `CLUSTERDOWN`, ...) and redirections
  that ran out are `BrokerUnavailable` in their replies' places.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio.cluster import RedisCluster

from pubsub.brokers.command_connection import (
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    Command,
    CommandConnection,
)
from pubsub.brokers.connect import Connector, address_of, failed_open, node_url, plain_url
from pubsub.brokers.endpoint import ErrorReply, Unanswered
from pubsub.errors import BrokerUnavailable

REDIRECTIONS: Final = 3
"""Rounds of refusals followed per call (a slot moved, then its new master failed over)."""
OUTAGE_REPLIES: Final = frozenset(
    {"TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING", "READONLY", "MOVED", "ASK"}
)
"""Error replies that mean the data is unreachable for now, not that the command is wrong
(as redis-py's `TryAgainError`, `ClusterDownError`, `BusyLoadingError` ... in
`connect.OUTAGE_ERRORS`)."""
SINGLE: Final = ""
"""The node name of a server that is not a cluster."""

Routed = tuple[bytes | str, Command]
"""A command and the key it is routed by (any of its keys: they share one slot)."""


@dataclass(slots=True)
class _Part:
    """The commands of one call that go to one node in one round."""

    node: str
    indices: list[int]
    asking: bool = False
    connection: CommandConnection | None = None
    reply: asyncio.Future[list[Any]] | None = None
    failed: Exception | None = None


class CommandRouter:
    """Commands on our own connections, each sent to the master of its key's slot.

    Args:
        scripts: the (source, sha1) of every script sent by `EVALSHA`, for `NOSCRIPT`.
        timeout: how long a call may wait for its replies before its connection is taken
            as dead.
    """

    def __init__(
        self,
        connector: Connector,
        *,
        scripts: Sequence[tuple[str, str]] = (),
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self._connector = connector
        self._timeout = timeout
        self._sources = {sha: source for source, sha in scripts}
        self._connections: dict[str, CommandConnection] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._found = False
        self._cluster: RedisCluster | None = None

    async def execute(
        self, commands: Sequence[Routed], *, tail: Command | None = None
    ) -> tuple[list[Any], list[Any]]:
        """The replies of `commands`, in order (an exception in a reply's place), and, with
        `tail`, per command the reply of the `tail` sent right behind its node's commands
        on that node's connection (a `WAIT` covers what was written before it there).

        On one server, raises `Unanswered` when its connection fails, `OSError` or
        `BrokerUnavailable` when it cannot be connected to; on a cluster, those are the
        replies of the failed node's commands, in their places."""
        if not self._found:
            await self._connector.client()  # found once: one server or a cluster
            self._cluster, self._found = self._connector.cluster, True
        cluster = self._cluster  # kept: redis-py's RedisCluster makes isinstance slow
        if cluster is None:
            return await self._on_server(commands, tail)
        replies: list[Any] = [None] * len(commands)
        tails: list[Any] = [None] * len(commands) if tail is not None else []
        parts = _route(cluster, range(len(commands)), commands)
        for rounds in range(REDIRECTIONS + 1):
            # Every connection first, then every write, then every reply: one round trip.
            for part in parts:
                try:
                    part.connection = await self._connection(part.node)
                except (OSError, BrokerUnavailable) as exc:
                    part.failed = exc  # that node's commands fail, the others go on
            for part in parts:
                if part.connection is not None:
                    part.reply = part.connection.send(_batch(commands, part, tail))
            moved: list[int] = []
            asked: dict[str, list[int]] = {}
            lost = False
            for part in parts:
                try:
                    got, behind = await self._answers(commands, part, tail)
                except (Unanswered, OSError, BrokerUnavailable) as exc:
                    lost = True  # lost or unreachable: nothing of it is sent again
                    got, behind = [exc] * len(part.indices), exc
                for i, value in zip(part.indices, got, strict=True):
                    replies[i] = value
                    if tail is not None:
                        tails[i] = behind
                    if type(value) is ErrorReply:
                        words = str(value).split() or [""]
                        if words[0] == "MOVED":
                            moved.append(i)
                        elif words[0] == "ASK" and len(words) == 3:
                            asked.setdefault(words[2], []).append(i)
            if lost or moved:
                await self._refresh()
            if not (moved or asked) or rounds == REDIRECTIONS:
                break
            parts = [
                *_route(cluster, moved, commands),
                *(_Part(node, indices, asking=True) for node, indices in asked.items()),
            ]
        _translate(replies)
        return replies, tails

    async def _on_server(
        self, commands: Sequence[Routed], tail: Command | None
    ) -> tuple[list[Any], list[Any]]:
        """`execute` on one server: one connection, no routing (the common case, and the
        publish path's: docs/performance.md, "Publish path")."""
        connection = self._connections.get(SINGLE)
        if connection is None or connection.closed:
            connection = await self._connection(SINGLE)
        part = _Part(SINGLE, list(range(len(commands))), connection=connection)
        part.reply = connection.send(_batch(commands, part, tail))
        replies, behind = await self._answers(commands, part, tail)
        _translate(replies)
        return replies, [behind] * len(commands) if tail is not None else []

    @property
    def nodes(self) -> list[str]:
        """The nodes this router holds a connection to (`host:port`; "" for one server)."""
        return sorted(self._connections)

    async def aclose(self) -> None:
        """Close every connection."""
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            await connection.aclose()

    async def _connection(self, node: str) -> CommandConnection:
        """The node's connection; a new one when there is none or it ended."""
        connection = self._connections.get(node)
        if connection is not None and not connection.closed:
            return connection
        lock = self._opening.setdefault(node, asyncio.Lock())
        async with lock:  # callers of one moment share one new connection
            connection = self._connections.get(node)
            if connection is None or connection.closed:
                url = self._url(node)
                try:
                    connection = await CommandConnection.open(url, timeout=self._timeout)
                except (TimeoutError, ssl.SSLError) as exc:
                    where = node or address_of(url)
                    raise BrokerUnavailable(
                        await failed_open(url, where, exc, CONNECT_TIMEOUT)
                    ) from exc
                if node not in self._connections:
                    await self._close_departed()  # a node new to us: the map has changed
                self._connections[node] = connection
            return connection

    async def _close_departed(self) -> None:
        """Close the connections of nodes that are masters no more (one failed, or
        demoted by a failover), once no batch waits on them: the table follows the
        cluster's current masters, not every node it ever had."""
        cluster = self._cluster
        if cluster is None:
            return
        masters = {node.name for node in cluster.get_primaries()}
        for node, connection in list(self._connections.items()):
            if node not in masters and (connection.closed or connection.idle):
                del self._connections[node]
                self._opening.pop(node, None)
                await connection.aclose()

    def _url(self, node: str) -> str:
        url = plain_url(self._connector.url)
        if node == SINGLE:
            return url
        host, _, port = node.rpartition(":")
        return node_url(url, host, int(port))

    async def _answers(
        self, commands: Sequence[Routed], part: _Part, tail: Command | None
    ) -> tuple[list[Any], Any]:
        """A part's replies and its tail's, its scripts loaded and sent again where the
        server did not know them (`NOSCRIPT`: refused, nothing ran)."""
        if part.failed is not None:
            raise part.failed
        assert part.reply is not None and part.connection is not None
        got, behind = _split(await part.reply, part, tail)
        for value in got:
            if type(value) is ErrorReply:
                break
        else:
            return got, behind  # the usual case: no error reply at all
        missing = [k for k, value in enumerate(got) if _noscript(value)]
        if not missing:
            return got, behind
        shas = {_sha(commands[part.indices[k]][1][1]) for k in missing}
        loads = [(b"SCRIPT", b"LOAD", self._sources[sha]) for sha in shas if sha in self._sources]
        again = _Part(part.node, [part.indices[k] for k in missing], asking=part.asking)
        replies = await part.connection.execute([*loads, *_batch(commands, again, tail)])
        retried, behind = _split(replies[len(loads) :], again, tail)
        for k, value in zip(missing, retried, strict=True):
            got[k] = value
        return got, behind

    async def _refresh(self) -> None:
        try:
            await self._connector.refresh()
        except BrokerUnavailable:
            pass  # the cluster is still choosing: the next failure asks again


def _route(
    cluster: RedisCluster, indices: Iterable[int], commands: Sequence[Routed]
) -> list[_Part]:
    """`indices` grouped by the master of their key's slot."""
    parts: dict[str, _Part] = {}
    for i in indices:
        node = cluster.nodes_manager.get_node_from_slot(cluster.keyslot(commands[i][0]))
        part = parts.get(node.name)
        if part is None:
            part = parts[node.name] = _Part(node.name, [])
        part.indices.append(i)
    return list(parts.values())


def _translate(replies: list[Any]) -> None:
    """Error replies of a cluster in motion, as `BrokerUnavailable` in their places."""
    for i, value in enumerate(replies):
        if type(value) is ErrorReply and str(value).split(" ", 1)[0] in OUTAGE_REPLIES:
            replies[i] = BrokerUnavailable(str(value))


def _batch(commands: Sequence[Routed], part: _Part, tail: Command | None) -> list[Command]:
    """What a part writes: its commands (each behind `ASKING` if asked to), and `tail`."""
    if part.asking:
        batch = [c for i in part.indices for c in (ASKING, commands[i][1])]
    else:
        batch = [commands[i][1] for i in part.indices]
    if tail is not None:
        batch.append(tail)
    return batch


def _split(replies: list[Any], part: _Part, tail: Command | None) -> tuple[list[Any], Any]:
    """A part's replies to its own commands, and its tail's reply (None without one)."""
    behind = replies.pop() if tail is not None else None
    return (replies[1::2] if part.asking else replies), behind


def _noscript(reply: Any) -> bool:
    return type(reply) is ErrorReply and str(reply).startswith("NOSCRIPT")


def _sha(value: bytes | str | int | float) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


ASKING: Final[Command] = (b"ASKING",)
