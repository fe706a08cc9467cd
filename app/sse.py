"""Server-Sent Event streams: one job's events, and every job's for dashboards (API.md §3)."""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any, Final, cast

import anyio
import structlog
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from progress_hub import frames, metrics
from progress_hub.auth import require_reader
from progress_hub.body import whole_number
from progress_hub.fanout import DRAIN_RETRY_MS, Fanout, SendWatchdog
from progress_hub.jobs import path_job_id
from progress_hub.settings import Settings
from pubsub.errors import BrokerUnavailable, InvalidUpdate, JobNotFound
from pubsub.events import ENCODER, Snapshot
from pubsub.store import JobStore
from pubsub.tokens import TokenClaims

log = structlog.get_logger(__name__)

# What sse-starlette's constructor builds for our arguments, built once per process.
STREAM_HEADERS: Final = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
# How long a turned-away browser waits before it comes back: 5-15 s, jittered so that a
# crowd turned away together does not return together.
TURN_AWAY_RETRY_MS: Final = (5000, 15000)
TURN_AWAY_SEND_TIMEOUT: Final = 5.0
MAX_DASHBOARD_JOBS: Final = 500
# `?job=` filters of the every-job feed: each is held for the stream's life (issue 5: no
# unbounded structure keyed by client input).
MAX_FILTER_JOBS: Final = 100


class HubStream(EventSourceResponse):
    """sse-starlette's response, lean enough to hold tens of thousands per process (issue 6).

    With `ping=0` nothing but the body iterator sends, so there is no send lock, and the
    body already yields encoded frames. sse-starlette runs three tasks per stream in a
    task group and a cancel scope around every send; here one bare task waits for the
    client's disconnect, and a send stuck for `send_timeout` (a client that stopped
    reading) is cut by the fan-out's one clock (`Fanout.watch_sends`), not by a timer per
    stream. Shutdown is one listener per process (`Fanout`) too. Together that took a
    third off the memory of an idle stream and a fifth off the CPU of a connect.

    The constructor is not sse-starlette's either: for every connect that one validated
    its arguments, built the same four headers through `MutableHeaders` and made an
    `anyio.Lock` for pings this class never sends, 30 µs and 0.5 KiB a stream.
    """

    _sending_since: float | None = None
    _stuck = False
    _cut: anyio.CancelScope | None = None
    _send: Send | None = None
    """Set while the body is being streamed: then `write_now` may write."""
    _in_flight: _InFlight | None = None

    def __init__(
        self,
        body: Callable[[HubStream], AsyncIterator[bytes]],
        *,
        send_timeout: float,
        watchdog: SendWatchdog | None = None,
    ) -> None:
        self.body_iterator = body(self)
        self.status_code = 200
        self.raw_headers = STREAM_HEADERS  # only read: every sender copies before adding
        self.send_timeout = send_timeout
        self.background = None
        self.active = True
        self.watchdog = watchdog

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD":
            await self._head(send)
            return
        watchdog = self.watchdog
        with anyio.CancelScope() as self._cut:
            disconnect = asyncio.get_running_loop().create_task(_on_disconnect(receive, self._cut))
            if watchdog is not None:
                watchdog.watch_sends(self)
            try:
                await self._stream_response(send)
            finally:
                disconnect.cancel()
                if watchdog is not None:
                    watchdog.unwatch_sends(self)
                # Cut mid-send, the body is suspended at a yield: close it so that its
                # subscription is released now, not when the generator is collected.
                with anyio.CancelScope(shield=True):
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]
        if self._stuck:
            metrics.SLOW_CLIENT_DISCONNECTS.inc()
            log.info("slow_client_disconnected", send_timeout=self.send_timeout)

    def cut_if_stuck(self, now: float) -> None:
        """End the stream if one send has been blocked for `send_timeout` seconds."""
        since = self._sending_since
        if since is not None and now - since >= (self.send_timeout or 30.0):
            self._stuck = True
            if self._cut is not None:
                self._cut.cancel()

    @property
    def can_write(self) -> bool:
        """True while the body streams and no write started by `write_now` waits."""
        return self._send is not None and self._in_flight is None

    @property
    def busy(self) -> bool:
        """True while a write started by `write_now` waits for the client."""
        return self._in_flight is not None

    def write_now(self, frame: bytes) -> None:
        """Write `frame` from the caller's context (the fan-out), without a task switch.

        The ASGI `send` coroutine is stepped here: when the socket takes the frame (the
        usual case) it finishes in that one step. When it has to wait for the client
        (flow control), it is kept in flight and the stream's own task finishes it; until
        then `can_write` is False and frames queue. Python 3.12's eager tasks do the same.
        It relies on no layer's `send` entering a cancel scope or anything else bound to
        the task it started in (none of this app's middleware does).
        """
        send = self._send
        assert send is not None and self._in_flight is None, "write_now without can_write"
        message: Message = {"type": "http.response.body", "body": frame, "more_body": True}
        write = cast(Coroutine[Any, Any, None], send(message))
        try:
            waiting_on = write.send(None)
        except StopIteration:
            return
        except BaseException as exc:  # raised again by the stream's task
            self._in_flight = _InFlight(write, None, exc)
            return
        self._in_flight = _InFlight(write, waiting_on, None)
        self._sending_since = time.monotonic()

    async def _finish_in_flight(self) -> None:
        in_flight = self._in_flight
        if in_flight is None:
            return
        try:
            await in_flight
        finally:
            self._in_flight = None
            self._sending_since = None

    async def _stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        # Only a coroutine function's call can be stepped by hand (every ASGI server's
        # and middleware's `send` is one; a plain callable returning a future is not).
        self._send = send if inspect.iscoroutinefunction(send) else None
        try:
            async for chunk in self.body_iterator:
                await self._finish_in_flight()
                if not chunk:
                    continue  # woken only to finish a direct write
                self._sending_since = time.monotonic()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._sending_since = None
            await self._finish_in_flight()
        finally:
            self._send = None
        self.active = False
        await send({"type": "http.response.body", "body": b"", "more_body": False})


    async def _head(self, send: Send) -> None:
        await self.body_iterator.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _InFlight:
    """A send coroutine first stepped outside any task, awaited to its end by the stream's
    task: each future it waits on is handed up to that task, each result handed down."""

    __slots__ = ("_write", "_waiting_on", "_error")

    def __init__(
        self, write: Coroutine[Any, Any, None], waiting_on: Any, error: BaseException | None
    ) -> None:
        self._write = write
        self._waiting_on = waiting_on
        self._error = error

    def __await__(self) -> Generator[Any, Any, None]:
        if self._error is not None:
            raise self._error
        write, waiting_on = self._write, self._waiting_on
        while True:
            try:
                result = yield waiting_on
            except BaseException as exc:  # cancelled: let the write clean up, then re-raise
                try:
                    waiting_on = write.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = write.send(result)
                except StopIteration:
                    return


async def _on_disconnect(receive: Receive, cut: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    cut.cancel()


def _stream(
    body: Callable[[HubStream], AsyncIterator[bytes]],
    send_timeout: float,
    watchdog: SendWatchdog | None = None,
) -> EventSourceResponse:
    """A stream whose body is `body(stream)`: the body may hand the stream to the fan-out
    as the writer of its frames."""
    # Heartbeats come from the fan-out's one shared ticker, not a task per stream.
    return HubStream(body, send_timeout=send_timeout, watchdog=watchdog)


def turn_away(retry_ms: tuple[int, int] = TURN_AWAY_RETRY_MS) -> EventSourceResponse:
    """200, a jittered `retry:` and a close: a browser retries that, never a 503 (API.md §3)."""
    metrics.STREAMS_REFUSED.inc()

    async def body(_: HubStream) -> AsyncIterator[bytes]:
        yield frames.retry(random.randint(*retry_ms))

    return _stream(body, TURN_AWAY_SEND_TIMEOUT)


def _last_event_id(request: Request) -> int | None:
    """The seq a resuming client has; None for a new client.

    An id this hub never sends (not a whole number) is taken as no id: the client gets a
    snapshot. A 400 would make a browser give up for good, which the contract keeps
    for 404, 403 and 204 (API.md §3).
    """
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    return None if raw is None else whole_number(raw.strip())


def _followed(fanout: Fanout, job_id: str, last_seq: int | None) -> Snapshot | None:
    """This hub's current snapshot of a job its streams follow, unless the client has
    already seen a later event than this hub (then only a read can tell)."""
    snapshot = fanout.latest(job_id)
    if snapshot is None or (last_seq is not None and last_seq > snapshot.seq):
        return None
    return snapshot


async def job_events(request: Request) -> Response:
    """`GET /api/jobs/{job_id}/events`: snapshot or replay, then live events, then `end`."""
    job_id = path_job_id(request)
    claims = require_reader(request, [job_id])
    last_seq = _last_event_id(request)
    settings: Settings = request.state.settings
    store: JobStore = request.state.store
    fanout: Fanout = request.state.fanout
    if fanout.draining:
        return turn_away(DRAIN_RETRY_MS)
    try:
        snapshot = _followed(fanout, job_id, last_seq) or await store.get(job_id)
    except BrokerUnavailable:
        return turn_away()
    if snapshot.is_terminal and last_seq == snapshot.seq:
        # The client has the final event: 204 tells a browser to stop reconnecting.
        return Response(status_code=204)

    async def body(stream: HubStream) -> AsyncIterator[bytes]:
        try:
            async with fanout.subscribe(
                job_id, expires_at=_expiry(claims), writer=stream
            ) as subscriber:
                # Subscribed first, read second: nothing published in between is missed,
                # and start_after() drops what the read already covers.
                epoch = fanout.epoch
                replay = await store.replay(
                    job_id, last_seq, current=_followed(fanout, job_id, last_seq)
                )
                current = replay.snapshot
                fanout.observe(current, epoch)
                subscriber.start_after(current.seq)
                # The opening frames go out in one write: on this VM each socket write is
                # the largest single cost of a connect (issue 6, cProfile of connects).
                opening = [frames.retry(settings.retry_ms)]
                if replay.missed is None:
                    opening.append(frames.event(b"snapshot", ENCODER.encode(current), current.seq))
                else:
                    first = current.seq - len(replay.missed) + 1
                    opening.extend(
                        frames.event(b"progress", event, first + i)
                        for i, event in enumerate(replay.missed)
                    )
                if current.is_terminal:
                    opening.append(frames.end(job_id, current.seq, current.status))
                yield b"".join(opening)
                if current.is_terminal:
                    return
                while (batch := await subscriber.next_frames()) is not None:
                    yield batch
        except BrokerUnavailable:
            metrics.STREAMS_REFUSED.inc()
            yield frames.retry(random.randint(*TURN_AWAY_RETRY_MS))

    return _stream(body, settings.send_timeout, fanout)


async def all_events(request: Request) -> Response:
    """`GET /api/events`: every job's events (or `?job=` ones), for dashboards."""
    named = request.query_params.getlist("job")
    if len(named) > MAX_FILTER_JOBS:
        raise InvalidUpdate(f"at most {MAX_FILTER_JOBS} job filters", field="job")
    # A filter naming no possible job (an invalid id) narrows to nothing rather than
    # ending the stream with a 400 that a browser would never retry (API.md §3).
    jobs = list(dict.fromkeys(named))
    claims = require_reader(request, jobs or None)
    settings: Settings = request.state.settings
    store: JobStore = request.state.store
    fanout: Fanout = request.state.fanout
    if fanout.draining:
        return turn_away(DRAIN_RETRY_MS)

    async def body(stream: HubStream) -> AsyncIterator[bytes]:
        try:
            async with fanout.subscribe(
                None, jobs=jobs, expires_at=_expiry(claims), writer=stream
            ) as subscriber:
                if jobs:
                    snapshots = await _existing(store, jobs)
                else:
                    snapshots = await store.list_jobs(limit=MAX_DASHBOARD_JOBS)
                yield frames.retry(settings.retry_ms) + b"".join(
                    frames.event(b"snapshot", ENCODER.encode(s)) for s in snapshots
                )
                while (batch := await subscriber.next_frames()) is not None:
                    yield batch
        except BrokerUnavailable:
            metrics.STREAMS_REFUSED.inc()
            yield frames.retry(random.randint(*TURN_AWAY_RETRY_MS))

    return _stream(body, settings.send_timeout, fanout)


async def _existing(store: JobStore, jobs: list[str]) -> list[Snapshot]:
    found: list[Snapshot] = []
    for job_id in jobs:
        try:
            found.append(await store.get(job_id))
        except (JobNotFound, InvalidUpdate):
            continue  # a narrowing filter may name jobs that do not exist (yet)
    return found


def _expiry(claims: TokenClaims | None) -> float | None:
    return None if claims is None else claims.exp
