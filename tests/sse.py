"""Reading Server-Sent Event streams in tests, always under a deadline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from httpx_sse import ServerSentEvent, aconnect_sse


@dataclass
class Stream:
    """An open SSE response and the events read from it so far."""

    response: httpx.Response
    events: list[ServerSentEvent] = field(default_factory=list)
    retry: int | None = None
    _iterator: AsyncIterator[ServerSentEvent] | None = None

    async def next(self, timeout: float = 5) -> ServerSentEvent:
        """The next event; `TimeoutError` if none comes in time, `EOFError` at the end."""
        assert self._iterator is not None
        with anyio.fail_after(timeout):
            while True:
                try:
                    event = await self._iterator.__anext__()
                except StopAsyncIteration:
                    raise EOFError("the stream ended") from None
                if event.retry is not None:
                    self.retry = event.retry
                # A browser dispatches no event for a frame without data (a bare retry:).
                if event.data or event.event != "message":
                    break
        self.events.append(event)
        return event

    async def take(self, count: int, timeout: float = 5) -> list[ServerSentEvent]:
        """The next `count` events."""
        return [await self.next(timeout) for _ in range(count)]

    async def until_end(self, timeout: float = 5) -> list[ServerSentEvent]:
        """Every event up to the server closing the stream."""
        taken: list[ServerSentEvent] = []
        with anyio.fail_after(timeout):
            while True:
                try:
                    taken.append(await self.next(timeout))
                except EOFError:
                    return taken


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    """Open an SSE stream (status 200 expected) for the duration of the block."""
    async with aconnect_sse(client, "GET", path, headers=dict(headers or {})) as source:
        stream = Stream(response=source.response)
        stream._iterator = source.aiter_sse()
        yield stream


def data(event: ServerSentEvent) -> dict[str, Any]:
    """An event's JSON data."""
    decoded: dict[str, Any] = json.loads(event.data)
    return decoded
