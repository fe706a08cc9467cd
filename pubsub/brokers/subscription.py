"""One subscription connection of ours: connect, authenticate, subscribe, read.

The feed reads every event of every followed job on these connections. Through redis-py's
public `PubSub.get_message` a delivered message cost several times what it costs here
(docs/performance.md, "The Redis broker on redis-py's public API": feed CPU per delivered
message, and the many-jobs rows it moves): each call goes through a retry wrapper,
connection checks, an awaited read and a dict per message. Here the socket's bytes go
from `asyncio.Protocol.data_received` to a `hiredis.Reader`, and each parsed reply to a
callback, synchronously: no task, future or await per message. Commands are written
(`transport.write`), never awaited; their confirmations arrive as replies like any other.

The connection owns all of it, end to end:

- **URL.** As `pubsub.brokers.endpoint` reads it (shared with the command connection).
  The database number is accepted and not sent: pub/sub ignores it (a message published
  from any database reaches every subscriber).
- **Handshake.** `AUTH [user] password`, `CLIENT SETNAME`, then `SUBSCRIBE` of the
  channels given, pipelined, and their replies awaited under a deadline. RESP2, not
  `HELLO 3`: in RESP2 every reply in subscribed mode is an array whose first element says
  what it is, which is all the feed needs, and every Redis-compatible server speaks it.
- **Replies.** `[b"smessage", channel, data]`, `[b"ssubscribe", channel, count]`,
  `[b"sunsubscribe", channel, count]` (also unasked: a slot moved away),
  `[b"pong", b""]`, ... to `on_push`; an error reply (`MOVED 1234 host:port`) to
  `on_error`; the connection's end, when we did not close it, to `on_lost`, once. A
  callback that raises ends the connection (asyncio logs it): a loss like any other.

Tested on its own in `tests/pubsub/test_subscription.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, Final, cast

import hiredis

from pubsub.brokers.endpoint import Endpoint, ErrorReply, close
from pubsub.errors import BrokerUnavailable

CONNECT_TIMEOUT: Final = 5.0

OnPush = Callable[[list[Any]], None]
OnError = Callable[["ErrorReply"], None]
OnLost = Callable[[Exception], None]


class SubscriptionConnection(asyncio.Protocol):
    """One connection in subscribed mode; open it with `SubscriptionConnection.open`."""

    def __init__(self, address: str, on_push: OnPush, on_error: OnError, on_lost: OnLost) -> None:
        self.address = address
        """`host:port` or the socket's path: what error messages name (never the URL)."""
        self._on_push, self._on_error, self._on_lost = on_push, on_error, on_lost
        self._parser = hiredis.Reader(replyError=ErrorReply)
        self._transport: asyncio.Transport | None = None
        self._handshake: list[Any] = []  # its replies
        self._pending: list[int] = []  # replies still due, per handshake command
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        on_push: OnPush,
        on_error: OnError,
        on_lost: OnLost,
        subscribe: Iterable[bytes] = (),
        timeout: float = CONNECT_TIMEOUT,
    ) -> SubscriptionConnection:
        """Connect to `url`, authenticate, `SUBSCRIBE` to `subscribe`; raises
        `BrokerUnavailable` (naming the address) when the server refuses the handshake,
        `OSError` when it cannot be reached in `timeout` seconds."""
        endpoint = Endpoint.of(url, select=False)
        connection = cls(endpoint.address, on_push, on_error, on_lost)
        commands: list[tuple[Any, ...]] = list(endpoint.handshake)
        connection._pending = [1] * len(commands)
        channels = list(subscribe)
        if channels:  # one reply per channel (or one error for the command)
            commands.append((b"SUBSCRIBE", *channels))
            connection._pending.append(len(channels))
        if not connection._pending:
            connection._ready.set_result(None)  # nothing to wait for: ready once connected
        try:
            async with asyncio.timeout(timeout):
                await endpoint.connect(lambda: connection)
                connection._write(b"".join(hiredis.pack_command(c) for c in commands))
                if connection._pending:
                    await asyncio.shield(connection._ready)
        except BaseException:
            connection.abort()
            raise
        for reply in connection._handshake:
            if isinstance(reply, ErrorReply):
                connection.abort()
                raise BrokerUnavailable(endpoint.refusal("subscription", reply))
        return connection

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost (nothing can be sent)."""
        return self._transport is None or self._transport.is_closing()

    def subscribe(self, channels: Iterable[bytes]) -> None:
        """`SUBSCRIBE` to plain channels, in one command."""
        self._send(b"SUBSCRIBE", channels)

    def ssubscribe(self, channels: Iterable[bytes]) -> None:
        """`SSUBSCRIBE` to sharded channels, in one command (all of one slot on a cluster)."""
        self._send(b"SSUBSCRIBE", channels)

    def sunsubscribe(self, channels: Iterable[bytes]) -> None:
        """`SUNSUBSCRIBE` from sharded channels, in one command."""
        self._send(b"SUNSUBSCRIBE", channels)

    def ping(self) -> None:
        """`PING`: answered `[b"pong", b""]` in subscribed mode."""
        self._send(b"PING", ())

    def abort(self) -> None:
        """Drop the connection at once (a peer that stopped answering); not told to `on_lost`."""
        self._closing = True
        if not self._ready.done():
            self._ready.cancel()
        if self._transport is not None:
            self._transport.abort()

    async def aclose(self) -> None:
        """Close the connection (TLS says goodbye) and wait until it is closed."""
        self._closing = True
        if self._transport is not None:
            await close(self._transport, self._closed)

    def _send(self, command: bytes, arguments: Iterable[bytes]) -> None:
        if self.closed:
            raise ConnectionError(f"the subscription connection to {self.address} is closed")
        # hiredis's stub types the command as a 1-tuple; it takes any number of arguments.
        self._write(hiredis.pack_command((command, *arguments)))  # type: ignore[arg-type]

    def _write(self, data: bytes) -> None:
        if self._transport is not None and data:
            self._transport.write(data)

    def _handshake_reply(self, reply: Any) -> None:
        self._handshake.append(reply)
        self._pending[0] = 0 if isinstance(reply, ErrorReply) else self._pending[0] - 1
        if not self._pending[0]:
            del self._pending[0]
        if not self._pending and not self._ready.done():
            self._ready.set_result(None)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's are not subclasses of asyncio's classes.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._parser
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                if self._pending:
                    self._handshake_reply(reply)
                elif type(reply) is list:
                    self._on_push(reply)
                elif isinstance(reply, ErrorReply):
                    self._on_error(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self._lose(ConnectionError(f"unreadable reply from {self.address}: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        self._lose(exc or ConnectionError(f"{self.address} closed the subscription connection"))

    def _lose(self, exc: Exception) -> None:
        """Report the end once, unless we closed it; during the handshake, raise it."""
        if self._transport is not None:
            self._transport.abort()
        if not self._ready.done():
            self._ready.set_exception(exc)
            return
        if self._closing:
            return
        self._closing = True
        self._on_lost(exc)

