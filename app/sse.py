"""Server-Sent Event streams: one job's events, and every job's for dashboards (docs/api.md §3)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Final

import structlog
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from progress_hub import frames, metrics
from progress_hub.auth import require_reader
from progress_hub.body import whole_number
from progress_hub.delivery import MAX_DASHBOARD_JOBS
from progress_hub.fanout import DRAIN_RETRY_MS, Fanout, Subscription
from progress_hub.headers import request_header
from progress_hub.jobs import path_job_id
from progress_hub.mailbox import Mailbox
from progress_hub.settings import Settings
from pubsub.errors import BrokerUnavailable, InvalidUpdate
from pubsub.events import ENCODER, Snapshot, is_valid_job_id
from pubsub.store import JobStore
from pubsub.tokens import TokenClaims

log = structlog.get_logger(__name__)

# sse-starlette's own default is `no-store`; the contract says `no-cache` (docs/api.md §3).
STREAM_HEADERS: Final = {"Cache-Control": "no-cache"}
# How long a turned-away browser waits before it comes back: 5-15 s, jittered so that a
# crowd turned away together does not return together.
TURN_AWAY_RETRY_MS: Final = (5000, 15000)
TURN_AWAY_SEND_TIMEOUT: Final = 5.0
# `?job=` filters of the every-job feed: each is held for the stream's life (no unbounded
# structure keyed by client input, docs/production.md).
MAX_FILTER_JOBS: Final = 100
LAST_EVENT_ID: Final = b"last-event-id"


class HubStream(EventSourceResponse):
    """sse-starlette's response carrying one of the hub's streams.

    The body yields frames already encoded (`app.frames`, once per event for every
    subscriber), which sse-starlette writes as they are. Heartbeats come from the
    fan-out's one clock (`app.clock`), not a ping task per stream (`ping=0`); a client
    that stops reading is cut by sse-starlette's `send_timeout`, and counted here.

    Args:
        subscription: the fan-out registration the endpoint made before answering
            (`Subscription.hand_over()`); released when the response ends, however it
            ends (the client gone before its first byte, cancellation, shutdown).
    """

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        send_timeout: float,
        subscription: Subscription | None = None,
    ) -> None:
        super().__init__(body, headers=STREAM_HEADERS, ping=0, sep="\n", send_timeout=send_timeout)
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the stream; a send blocked for `send_timeout` ends it (a stuck client)."""
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            metrics.SLOW_CLIENT_DISCONNECTS.inc()
            log.info("slow_client_disconnected", send_timeout=self.send_timeout)
        finally:
            if self.subscription is not None:
                await self.subscription.release()


def turn_away(retry_ms: tuple[int, int] = TURN_AWAY_RETRY_MS) -> EventSourceResponse:
    """200, a jittered `retry:` and a close: a browser retries that, never a 503
    (docs/api.md §3)."""
    metrics.STREAMS_REFUSED.inc()

    async def body() -> AsyncIterator[bytes]:
        yield frames.retry(random.randint(*retry_ms))

    return HubStream(body(), send_timeout=TURN_AWAY_SEND_TIMEOUT)


def _last_event_id(request: Request) -> int | None:
    """The seq a resuming client has; None for a new client.

    An id this hub never sends (not a whole number) is taken as no id: the client gets a
    snapshot. A 400 would make a browser give up for good, which the contract keeps
    for 404, 403 and 204 (docs/api.md §3).
    """
    header = request_header(request.scope, LAST_EVENT_ID)
    raw = header.decode("latin-1") if header is not None else None
    if not raw:
        raw = request.query_params.get("last_event_id") if request.scope["query_string"] else None
    return None if raw is None else whole_number(raw.strip())


def _followed(fanout: Fanout, job_id: str, last_seq: int | None) -> Snapshot | None:
    """This hub's current snapshot of a job its streams follow, unless the client has
    already seen a later event than this hub (then only a read can tell)."""
    snapshot = fanout.latest(job_id)
    if snapshot is None or (last_seq is not None and last_seq > snapshot.seq):
        return None
    return snapshot


async def job_events(request: Request) -> Response:
    """`GET /api/jobs/{job_id}/events`: snapshot or replay, then live events, then `end`.

    Subscribed first, read second, both before the response is chosen: the one read
    decides 404 and 204 (real statuses, docs/api.md §3) and is the stream's opening, and
    nothing published in between is missed. A first stream of a job so costs two round
    trips, each batched by the broker with the concurrent connects of the same loop tick;
    a stream of a followed job, none (docs/performance.md, streams to new jobs).
    """
    job_id = path_job_id(request)
    claims = require_reader(request, [job_id])
    last_seq = _last_event_id(request)
    settings: Settings = request.state.settings
    store: JobStore = request.state.store
    fanout: Fanout = request.state.fanout
    if fanout.draining:
        return turn_away(DRAIN_RETRY_MS)
    subscription = fanout.subscribe(job_id, expires_at=_expiry(claims))
    try:
        # Every way out of this block releases the subscription but the one that hands
        # it to the stream's response (tests/app/test_sse_release.py).
        async with subscription as mailbox:
            opening = await _opening(fanout, store, mailbox, last_seq, settings)
            if opening is None:
                # The client has the final event: 204 tells a browser to stop reconnecting.
                return Response(status_code=204)
            return HubStream(
                _live(mailbox, *opening),
                send_timeout=settings.send_timeout,
                subscription=subscription.hand_over(),
            )
    except BrokerUnavailable:
        return turn_away()


async def _live(mailbox: Mailbox, opening: bytes, terminal: bool) -> AsyncIterator[bytes]:
    """A job stream's body: its opening, then what the fan-out queues, until the end."""
    yield opening
    del opening  # an open stream does not hold what it read
    if terminal:
        return
    while (batch := await mailbox.next_frames()) is not None:
        yield batch


async def _opening(
    fanout: Fanout, store: JobStore, mailbox: Mailbox, last_seq: int | None, settings: Settings
) -> tuple[bytes, bool] | None:
    """A job stream's first write (its snapshot, or the events it missed) and whether the
    job is over; None when the client already has the job's final event (204).
    `JobNotFound` for an unknown job."""
    job_id = mailbox.job_id
    assert job_id is not None, "a job stream follows one job"
    # Called once subscribed: start_after() drops what this read already covers.
    epoch = fanout.epoch
    replay = await store.replay(job_id, last_seq, current=_followed(fanout, job_id, last_seq))
    current = replay.snapshot
    fanout.observe(current, epoch)
    if current.is_terminal and last_seq == current.seq:
        return None
    mailbox.start_after(current.seq)
    # The opening frames go out in one write: on this VM each socket write is the largest
    # single cost of a connect (docs/performance.md, connect).
    opening = [frames.retry(settings.retry_ms)]
    if replay.missed is None:
        opening.append(frames.event(b"snapshot", ENCODER.encode(current), current.seq))
    else:
        first = current.seq - len(replay.missed) + 1
        opening.extend(
            frames.event(b"progress", event, first + i) for i, event in enumerate(replay.missed)
        )
    if current.is_terminal:
        opening.append(frames.end(job_id, current.seq, current.status))
    return b"".join(opening), current.is_terminal


async def all_events(request: Request) -> Response:
    """`GET /api/events`: every job's events (or `?job=` ones), for dashboards."""
    named = request.query_params.getlist("job")
    if len(named) > MAX_FILTER_JOBS:
        raise InvalidUpdate(f"at most {MAX_FILTER_JOBS} job filters", field="job")
    # A filter naming no possible job (an invalid id) narrows to nothing rather than
    # ending the stream with a 400 that a browser would never retry (docs/api.md §3).
    jobs = list(dict.fromkeys(named))
    claims = require_reader(request, jobs or None)
    settings: Settings = request.state.settings
    store: JobStore = request.state.store
    fanout: Fanout = request.state.fanout
    if fanout.draining:
        return turn_away(DRAIN_RETRY_MS)

    async def body() -> AsyncIterator[bytes]:
        try:
            async with fanout.subscribe(None, jobs=jobs, expires_at=_expiry(claims)) as mailbox:
                yield await _dashboard_opening(store, mailbox, jobs, settings)
                while (batch := await mailbox.next_frames()) is not None:
                    yield batch
        except BrokerUnavailable:
            metrics.STREAMS_REFUSED.inc()
            yield frames.retry(random.randint(*TURN_AWAY_RETRY_MS))

    return HubStream(body(), send_timeout=settings.send_timeout)


async def _dashboard_opening(
    store: JobStore, mailbox: Mailbox, jobs: list[str], settings: Settings
) -> bytes:
    """An every-job stream's first write: the snapshots of its jobs (the named ones that
    exist, or the newest `MAX_DASHBOARD_JOBS`). Read once subscribed, so events queued
    meanwhile that these snapshots already show are dropped, not sent twice."""
    if jobs:
        # A narrowing filter may name jobs that do not exist (yet), or cannot exist.
        snapshots = await store.get_many([job_id for job_id in jobs if is_valid_job_id(job_id)])
    else:
        snapshots = await store.list_jobs(limit=MAX_DASHBOARD_JOBS)
    mailbox.drop_covered({s.job_id: s.seq for s in snapshots})
    return frames.retry(settings.retry_ms) + b"".join(
        frames.event(b"snapshot", ENCODER.encode(s)) for s in snapshots
    )


def _expiry(claims: TokenClaims | None) -> float | None:
    return None if claims is None else claims.exp
