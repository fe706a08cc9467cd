"""Reading Server-Sent Event streams over httpx in tests, always under a deadline.

The frames are parsed by the tests' one parser (`tests.sse_frames`), which keeps the
pings and bare `retry:` hints a browser does not dispatch.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from tests.sse_frames import Frame, FrameParser


@dataclass
class Stream:
    """An open SSE response and the events read from it so far."""

    response: httpx.Response
    events: list[Frame] = field(default_factory=list)
    retry: int | None = None
    _iterator: AsyncIterator[Frame] | None = None

    async def next(self, timeout: float = 5) -> Frame:
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
                if event.is_event or event.event is not None:
                    break
        self.events.append(event)
        return event

    async def opened(self, timeout: float = 5) -> None:
        """Wait for the `retry:` hint that starts the stream (docs/api.md §3). The hub writes
        it with the opening snapshots, after subscribing and reading them: what is published
        after it comes as progress, never folded into a snapshot that the race made late."""
        assert self._iterator is not None
        with anyio.fail_after(timeout):
            while self.retry is None:
                try:
                    frame = await self._iterator.__anext__()
                except StopAsyncIteration:
                    raise EOFError("the stream ended before its retry: hint") from None
                assert not frame.is_event, f"an event before the retry: hint: {frame}"
                self.retry = frame.retry

    async def take(self, count: int, timeout: float = 5) -> list[Frame]:
        """The next `count` events."""
        return [await self.next(timeout) for _ in range(count)]

    async def until_end(self, timeout: float = 5) -> list[Frame]:
        """Every event up to the server closing the stream."""
        taken: list[Frame] = []
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
    """Open an SSE stream for the duration of the block (`stream.response` has its status)."""
    asked = {"Accept": "text/event-stream", "Cache-Control": "no-store", **(headers or {})}
    async with client.stream("GET", path, headers=asked) as response:
        stream = Stream(response=response)
        stream._iterator = _frames(response)
        yield stream


async def _frames(response: httpx.Response) -> AsyncIterator[Frame]:
    parser = FrameParser()
    async for chunk in response.aiter_bytes():
        for frame in parser.feed(chunk):
            yield frame


def data(event: Frame) -> dict[str, Any]:
    """An event's JSON data."""
    assert event.data, f"no data in {event}"
    decoded: dict[str, Any] = json.loads(event.data)
    return decoded
