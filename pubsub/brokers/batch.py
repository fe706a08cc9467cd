"""The one batching mechanism of the Redis broker: calls of one loop tick, one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pubsub.brokers.connect import translated_outage

T = TypeVar("T")


class TickBatcher(Generic[T]):
    """Calls made in the same tick of the event loop share one pipelined round trip.

    The first call of a tick starts a sender task, which runs from the next tick on:
    by then every concurrent caller (publishers, HTTP requests, polls, stream connects)
    has joined the batch. It sends the whole batch with `send` and hands each caller its
    own reply (an exception in a reply's place is raised to that caller alone), or the
    round trip's failure. A task, not the first caller, so that a caller cancelled
    meanwhile takes nobody's reply with it. The pool checkout and the socket write are
    then paid once per batch (docs/performance.md: polling, publish).
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[list[Any]]]) -> None:
        self._send = send
        self._batch: list[tuple[T, asyncio.Future[Any]]] | None = None
        self._senders: set[asyncio.Task[None]] = set()  # referenced until done

    async def call(self, item: T) -> Any:
        """Join this tick's batch with `item`; its reply (raised if it is an exception)."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        if self._batch is not None:
            self._batch.append((item, reply))  # the sender has not taken the batch yet
        else:
            self._batch = [(item, reply)]
            sender = loop.create_task(self._send_batch())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        async with translated_outage():
            return await reply

    async def _send_batch(self) -> None:
        batch, self._batch = self._batch or [], None
        try:
            replies = await self._send([item for item, _ in batch])
        except Exception as exc:
            for _, reply in batch:
                if not reply.done():  # done: its caller was cancelled meanwhile
                    reply.set_exception(exc)
            return
        except BaseException:  # the sender itself cancelled (the loop shutting down)
            for _, reply in batch:
                reply.cancel()
            raise
        for (_, reply), value in zip(batch, replies, strict=True):
            if reply.done():
                continue
            if isinstance(value, BaseException):
                reply.set_exception(value)
            else:
                reply.set_result(value)
