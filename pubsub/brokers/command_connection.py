"""One command connection of ours: multiplexed, pipelined, for the hot commands.

Commits and record reads are most of what a hub asks Redis, and through redis-py's public
API each `EVALSHA` round trip cost several times what the bytes cost over a bare asyncio
connection with a hiredis reader (docs/performance.md, "Publish path": "The floor:
redis-py per command"). What this module bought is in the figures of "The command
connection" there: client CPU per `EVALSHA` less than half of redis-py's, and a fifth
less hub CPU per HTTP publish one request at a time. The cost was in the client, not
the wire: the pool's checkout and release, the retry wrapper, connection checks, an
awaited read per reply. Here a batch of commands is packed by `hiredis.pack_command`,
written at once, and answered by one future, resolved from `data_received` when its last
reply is parsed.

One connection carries every caller's commands (multiplexed): Redis answers the commands
of a connection in the order it received them, so replies are matched to batches first
in, first out, and nothing waits for a connection to be free.

- **URL and handshake.** `pubsub.brokers.endpoint`: `AUTH`, `CLIENT SETNAME` and, unlike
  the subscription connection, `SELECT db` when the URL names a database other than 0.
- **Replies.** In order, one list per batch; an error reply is an `ErrorReply` in its
  reply's place and leaves the others alone (as redis-py's `raise_on_error=False`).
- **Failures.** The connection's loss, an unreadable reply, or a batch unanswered past
  `timeout` (its replies can no longer be matched) end the connection: every batch still
  pending fails with `Unanswered` naming the address (an outage to `translated_outage`),
  and `closed` turns True. Nothing is sent again: the owner opens a new connection for the
  next call (the one retry policy, `pubsub.brokers.connect`).

Tested on its own in `tests/pubsub/test_command_connection.py`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import hiredis

from pubsub.brokers.endpoint import Endpoint, ErrorReply, Unanswered, close
from pubsub.errors import BrokerUnavailable

CONNECT_TIMEOUT: Final = 2.0
COMMAND_TIMEOUT: Final = 3.0

Command = Sequence[bytes | str | int | float]


@dataclass(slots=True)
class _Batch:
    """Commands written together, waiting for their replies."""

    wanted: int
    deadline: float
    reply: asyncio.Future[list[Any]]
    replies: list[Any]


class CommandConnection(asyncio.Protocol):
    """One connection for commands; open it with `CommandConnection.open`."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        """`host:port` or the socket's path: what error messages name (never the URL)."""
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._parser = hiredis.Reader(replyError=ErrorReply)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[_Batch] = deque()
        self._watch: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._lost: Exception | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        timeout: float = COMMAND_TIMEOUT,
    ) -> CommandConnection:
        """Connect to `url` and greet it, within `connect_timeout` seconds; raises
        `BrokerUnavailable` (naming the address) when the server refuses the handshake,
        `OSError` when it cannot be reached. `timeout`: how long a batch may wait for its
        replies before the connection is taken as dead."""
        endpoint = Endpoint.of(url, select=True)
        connection = cls(endpoint.address, timeout)
        try:
            async with asyncio.timeout(connect_timeout):
                await endpoint.connect(lambda: connection)
                if endpoint.handshake:
                    replies = await connection.send(endpoint.handshake)
                else:
                    replies = []
        except BaseException:
            connection.abort()
            raise
        for reply in replies:
            if isinstance(reply, ErrorReply):
                connection.abort()
                raise BrokerUnavailable(endpoint.refusal("command", reply))
        return connection

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost: open a new one."""
        return self._lost is not None or self._transport is None

    @property
    def idle(self) -> bool:
        """True when no batch waits for its replies."""
        return not self._pending

    def send(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Write `commands` at once; the future of their replies, in order (an error reply
        an `ErrorReply` in its place). Raises `Unanswered` when the connection is closed."""
        if self._lost is not None or self._transport is None:
            raise Unanswered(f"the command connection to {self.address} is closed")
        reply: asyncio.Future[list[Any]] = self._loop.create_future()
        deadline = self._loop.time() + self.timeout
        self._pending.append(_Batch(len(commands), deadline, reply, []))
        # hiredis's stub types a command as a 1-tuple; it takes any number of arguments.
        pack = hiredis.pack_command
        if len(commands) == 1:
            self._transport.write(pack(commands[0]))  # type: ignore[arg-type]
        else:
            self._transport.write(b"".join([pack(c) for c in commands]))  # type: ignore[arg-type]
        if self._watch is None:
            self._watch = self._loop.call_at(deadline, self._expire)
        return reply

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """`send`, and wait for the replies."""
        return await self.send(commands)

    def abort(self) -> None:
        """Drop the connection at once; whatever is pending fails."""
        self._lose(Unanswered(f"the command connection to {self.address} was closed"))

    async def aclose(self) -> None:
        """Close the connection (TLS says goodbye) and wait until it is closed."""
        self._fail(Unanswered(f"the command connection to {self.address} was closed"))
        if self._transport is not None:
            await close(self._transport, self._closed)

    def _expire(self) -> None:
        """The watch on the oldest batch: past its deadline, the server is taken as dead
        (a reply that came later could not be told from the next batch's)."""
        self._watch = None
        if not self._pending or self._lost is not None:
            return
        deadline = self._pending[0].deadline
        if self._loop.time() >= deadline:
            self._lose(Unanswered(f"{self.address} did not answer within {self.timeout:g} s"))
        else:
            self._watch = self._loop.call_at(deadline, self._expire)

    def _lose(self, exc: Exception) -> None:
        transport = self._transport
        self._fail(exc)
        if transport is not None:
            transport.abort()

    def _fail(self, exc: Exception) -> None:
        """The end: every pending batch fails with `exc`, and nothing more is sent."""
        if self._lost is None:
            self._lost = exc
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        pending, self._pending = self._pending, deque()
        for batch in pending:
            if not batch.reply.done():  # done: its caller was cancelled meanwhile
                batch.reply.set_exception(exc)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's are not subclasses of asyncio's classes.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        pending = self._pending
        try:
            reply = parser.gets()
            while reply is not False:
                if not pending:
                    raise hiredis.ProtocolError("a reply nobody asked for")
                batch = pending[0]
                batch.replies.append(reply)
                if len(batch.replies) == batch.wanted:
                    pending.popleft()
                    if not batch.reply.done():
                        batch.reply.set_result(batch.replies)
                reply = parser.gets()
        except hiredis.ProtocolError as exc:
            self._lose(Unanswered(f"unreadable reply from {self.address}: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        said = f": {exc}" if exc is not None else ""
        self._fail(Unanswered(f"{self.address} closed the command connection{said}"))
