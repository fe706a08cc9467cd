"""A minimal SSE subscriber over raw HTTP/1.1, cheap enough to run thousands per process.

Publishers put `B<index>:<monotonic_ns>` in each event's `message` (see `bench_message`).
The subscriber does not decode JSON: it cuts the byte stream at SSE frame ends and pulls
those markers out with one regex call per read, which is what lets one Python process
count 100k+ deliveries per second. CLOCK_MONOTONIC is system-wide on Linux, so the
publisher's stamp and the subscriber's receive time are comparable across processes.

So it does not use `tests.sse_frames`, the parser the tests read streams with:
counting needs no frame taken apart, and the bench client must stay
cheaper than the hub it measures.

HTTP chunk-size lines never fall inside a frame (uvicorn writes each body message as one
chunk and SSE servers send whole frames), so they need no decoding here.
"""

from __future__ import annotations

import asyncio
import re
import time
from array import array
from dataclasses import dataclass, field
from typing import cast

MESSAGE_RE = re.compile(rb'"message": ?"B(\d+):(\d+)"')
FRAME_END_RE = re.compile(rb"\r?\n\r?\n")


def bench_message(index: int) -> str:
    """The `message` of the index-th published event, stamped with the current time."""
    return f"B{index}:{time.monotonic_ns()}"


def stream_request(job_id: str, port: int) -> bytes:
    """The HTTP/1.1 request that opens a job's event stream."""
    return (
        f"GET /api/jobs/{job_id}/events HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode()


@dataclass(slots=True)
class Tally:
    """Deliveries counted across all streams of one process since the last `arm`."""

    final: int = 0
    armed: bool = False
    record: bool = False
    remaining: int = 0
    delivered: int = 0
    expected: int = 0
    gaps: int = 0
    disorder: int = 0
    first_ns: int = 0
    last_ns: int = 0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def finish_one(self, now: int) -> None:
        """One armed stream has reached `final` (or closed for good)."""
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()


class SseStream(asyncio.Protocol):
    """One subscriber: parses the response head, the snapshot, then counts progress events."""

    __slots__ = (
        "tally", "transport", "request", "head", "buf", "ready", "last",
        "finished", "closed", "ended", "started_ns", "ready_ns",
    )  # fmt: skip

    def __init__(self, tally: Tally, request: bytes) -> None:
        self.tally = tally
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""
        self.buf = b""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last = 0
        self.finished = False
        self.closed = False
        self.ended = False
        self.started_ns = time.monotonic_ns()
        self.ready_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"stream closed before its snapshot: {exc}"))
        elif self.tally.armed and not self.finished:
            self.finished = True
            self.tally.finish_one(time.monotonic_ns())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.head is not None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                return
            self.head = None
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                self._fail(f"stream answered {status!r}")
                return
            data = head[end + 4 :]
        buf = self.buf + data if self.buf else data
        cut = max(buf.rfind(b"\n\n"), buf.rfind(b"\n\r\n"))
        if cut < 0:
            self.buf = buf
            return
        region = buf[:cut]
        self.buf = buf[cut:]
        if not self.ready.done():
            pos = region.find(b"event: snapshot")
            if pos < 0:
                return  # the retry hint or a ping: still waiting for the snapshot
            found = FRAME_END_RE.search(region, pos)
            split = found.start() if found else len(region)
            marks = MESSAGE_RE.findall(region, 0, split)
            self.last = int(marks[-1][0]) if marks else 0
            self.ready_ns = now
            self.ready.set_result(None)
            region = region[split:]
        marks = MESSAGE_RE.findall(region)
        if marks:
            self._count(marks, now)
        if b"event: end" in region or b"event: deleted" in region:
            self.ended = True

    def _count(self, marks: list[tuple[bytes, bytes]], now: int) -> None:
        tally = self.tally
        last = self.last
        record = tally.record
        latencies = tally.latencies
        for index_b, stamp_b in marks:
            index = int(index_b)
            if index != last + 1:
                if index <= last:
                    tally.disorder += 1
                else:
                    tally.gaps += index - last - 1
            last = index
            if record:
                latencies.append(now - int(stamp_b))
        self.last = last
        tally.delivered += len(marks)
        tally.last_ns = now
        if tally.first_ns == 0:
            tally.first_ns = now
        if tally.armed and not self.finished and last >= tally.final:
            self.finished = True
            tally.finish_one(now)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()
