"""Fan-out of broker events to this process's open streams.

One broker subscription per job however many streams follow it (reference-counted), one
more for the every-job feed while a dashboard listens, frames encoded once per event,
and a bounded mailbox per stream that conflates to the latest snapshot when its client
reads slower than events arrive. One ticker sends every stream's heartbeat.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

import anyio
import msgspec
import structlog
from sse_starlette import EventSourceResponse

from progress_hub import frames, metrics
from pubsub.broker import Broker
from pubsub.errors import BrokerUnavailable, JobNotFound
from pubsub.events import ENCODER, ENVELOPE_DECODER, EventKind, Snapshot
from pubsub.store import JobStore

log = structlog.get_logger(__name__)

# A stream that falls this many frames behind has its backlog conflated to the latest
# frame per job: every event is a full snapshot, so the latest one loses no state.
MAX_PENDING_FRAMES: Final = 64
RESYNC_JOBS: Final = 200
# A token's expiry ends its stream at most this late (API.md §3); a send blocked past
# its timeout is cut at most this late too.
TOKEN_CHECK_INTERVAL: Final = 1.0
# How long a stream told to go away (shutdown) waits before reconnecting: short, because
# another hub is there, and jittered, so that its clients do not all arrive at once.
DRAIN_RETRY_MS: Final = (250, 2000)


class DirectWriter(Protocol):
    """A stream that can take a frame from the fan-out's own context (`app.sse.HubStream`)."""

    @property
    def can_write(self) -> bool:
        """True when `write_now` may be called: streaming, and no write waiting."""

    @property
    def busy(self) -> bool:
        """True while a write waits for the client (its task must finish it)."""

    def write_now(self, frame: bytes) -> None:
        """Start writing `frame` here and now (only when `can_write`)."""


@dataclass(slots=True, eq=False)
class Subscriber:
    """One open stream's mailbox: frames waiting to be written, bounded and conflating.

    When the stream's task is idle (waiting for frames) and the stream has a `writer`,
    the fan-out writes what gathered in one pass of the event loop itself (`flush`): no
    wake-up, no task switch. That halves the cost of an unbatched delivery and, as one
    event reaches a thousand streams in one pass, the delay of the last one (issue 6:
    p99); a burst still leaves several frames per write. A write the client cannot take
    at once is finished by the stream's task, and frames arriving meanwhile queue.
    """

    job_id: str | None
    """The job this stream follows; None for the every-job feed."""
    jobs: frozenset[str] | None = None
    """For the every-job feed: only these jobs (None: all)."""
    last_seq: int = 0
    expires_at: float | None = None
    closed: bool = False
    # A list, not a deque: frames are only appended and taken all at once, and an empty
    # deque allocates a 64-slot block, 0.7 KiB per idle stream (issue 6: memory).
    _frames: list[tuple[str, int, bytes]] = field(default_factory=list)
    # A bare loop future, not anyio.Event: anyio.Event() looks up the async backend on
    # every construction, and a stream waits once per delivery (issue 6, bench profile).
    _wakeup: asyncio.Future[None] | None = None
    writer: DirectWriter | None = None
    on_pending: Callable[[Subscriber], None] | None = None
    """Called (once until `flush`) when frames wait for the fan-out to write them."""
    _flush_due: bool = False
    _nudged: bool = False

    def push(self, job_id: str, frame: bytes, *, seq: int = 0, final: bool = False) -> None:
        """Queue a frame (of `seq`, when it is one job's event); `final` ends the stream."""
        if self.closed:
            return
        frames_ = self._frames
        frames_.append((job_id, seq, frame))
        if len(frames_) > MAX_PENDING_FRAMES:
            self._conflate()
        if final:
            self.closed = True
        elif self.on_pending is not None and self._parked():
            if not self._flush_due:
                self._flush_due = True
                self.on_pending(self)
            return
        self._wake()

    def flush(self) -> None:
        """Write what is queued from the caller's context, if the stream's task is idle;
        else leave it to that task."""
        self._flush_due = False
        writer, waiter = self.writer, self._wakeup
        if not self._frames or writer is None or not writer.can_write or not self._parked():
            self._wake()
            return
        writer.write_now(self._take_all())
        if writer.busy and waiter is not None:
            # The client could not take it all: the stream's task finishes the write.
            self._nudged = True
            waiter.set_result(None)

    def _parked(self) -> bool:
        waiter = self._wakeup
        return waiter is not None and not waiter.done() and self.writer is not None

    def start_after(self, seq: int) -> None:
        """Resume live delivery after `seq`: drop what was queued up to it while loading."""
        self.last_seq = max(self.last_seq, seq)
        self._frames = [item for item in self._frames if item[1] == 0 or item[1] > seq]

    def close(self) -> None:
        """End the stream after what is already queued."""
        self.closed = True
        self._wake()

    def wants(self, job_id: str) -> bool:
        """True when this every-job stream shows `job_id`."""
        return self.jobs is None or job_id in self.jobs

    @property
    def idle(self) -> bool:
        """True when nothing waits to be written."""
        return not self._frames

    async def next_frames(self) -> bytes | None:
        """Everything queued, as one write (b"" when only a direct write needs finishing);
        None once the stream is over."""
        while not self._frames:
            if self._nudged:
                self._nudged = False
                return b""
            if self.closed:
                return None
            waiter = self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._wakeup = None
        return self._take_all()

    def _take_all(self) -> bytes:
        """Every queued frame, as one write; the mailbox is then empty."""
        batch = b"".join(frame for _, _, frame in self._frames)
        self._frames.clear()
        return batch

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _conflate(self) -> None:
        latest: dict[str, tuple[str, int, bytes]] = {}
        for item in self._frames:
            latest.pop(item[0], None)
            latest[item[0]] = item
        self._frames = list(latest.values())
        metrics.FRAMES_CONFLATED.inc()


class WatchedSend(Protocol):
    """A stream whose blocked sends the fan-out's clock checks (`app.sse.HubStream`)."""

    def cut_if_stuck(self, now: float) -> None:
        """End the stream if one send has been blocked for too long (`now`: monotonic)."""


class SendWatchdog(Protocol):
    """Where streams register to have blocked sends cut (the `Fanout`)."""

    def watch_sends(self, stream: WatchedSend) -> None: ...

    def unwatch_sends(self, stream: WatchedSend) -> None: ...


class Subscription:
    """`async with fanout.subscribe(...) as subscriber:` — a class rather than an
    `@asynccontextmanager`, whose suspended generator each open stream would hold for
    its whole life (issue 6: memory per stream)."""

    __slots__ = ("_fanout", "_subscriber")

    def __init__(self, fanout: Fanout, subscriber: Subscriber) -> None:
        self._fanout = fanout
        self._subscriber = subscriber

    async def __aenter__(self) -> Subscriber:
        await self._fanout._enter(self._subscriber)
        return self._subscriber

    async def __aexit__(self, *exc_info: object) -> None:
        await self._fanout._exit(self._subscriber)


@dataclass(slots=True, eq=False)
class _Channel:
    """The streams of one job (or of the every-job feed), sharing one broker subscription."""

    subscribers: set[Subscriber] = field(default_factory=set)
    last_seq: int = 0
    snapshot: Snapshot | None = None
    """The job's latest snapshot seen since the subscription began (None: not yet)."""
    epoch: int = -1
    """The broker feed epoch `snapshot` belongs to: only the current one is trusted."""

    def observe(self, snapshot: Snapshot, epoch: int) -> None:
        """Keep `snapshot` as the job's latest if it is newer than what is known."""
        known = self.snapshot
        if known is None or self.epoch != epoch or snapshot.seq > known.seq:
            self.snapshot, self.epoch = snapshot, epoch


class Fanout:
    """Routes broker envelopes to the open streams of this process."""

    def __init__(self, broker: Broker, store: JobStore, *, heartbeat: float) -> None:
        if heartbeat <= 0:
            raise ValueError(f"heartbeat must be positive, got {heartbeat}")
        self._broker = broker
        self._store = store
        self._heartbeat = heartbeat
        self._channels: dict[str | None, _Channel] = {}
        self._lock = anyio.Lock()
        self._watched: set[WatchedSend] = set()
        self._pending: list[Subscriber] = []
        self.open_streams = 0
        self.draining = False

    async def run(self) -> None:
        """Listen to the broker and tick heartbeats until cancelled (owned by the lifespan)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._broker.listen, self._on_message, self._resync)
            tg.start_soon(self._tick)
            tg.start_soon(self._close_on_exit)

    def watch_sends(self, stream: WatchedSend) -> None:
        """Check `stream` for a blocked send on every tick, until `unwatch_sends`."""
        self._watched.add(stream)

    def unwatch_sends(self, stream: WatchedSend) -> None:
        """Stop checking `stream`."""
        self._watched.discard(stream)

    def subscribe(
        self,
        job_id: str | None,
        *,
        jobs: Iterable[str] | None = None,
        expires_at: float | None = None,
        writer: DirectWriter | None = None,
    ) -> Subscription:
        """Register a stream for one job (None: every job) for the duration of the block.

        Args:
            writer: the stream itself, when frames may be written from the fan-out.
        """
        subscriber = Subscriber(
            job_id=job_id,
            jobs=frozenset(jobs) if jobs else None,
            expires_at=expires_at,
            writer=writer,
            on_pending=None if writer is None else self._flush_soon,
        )
        return Subscription(self, subscriber)

    def _flush_soon(self, subscriber: Subscriber) -> None:
        """Have `subscriber`'s frames written at the end of this pass of the event loop,
        with every other frame that reaches it in the same pass."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush_pending)
        self._pending.append(subscriber)

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for subscriber in pending:
            subscriber.flush()

    async def _enter(self, subscriber: Subscriber) -> None:
        self.open_streams += 1
        metrics.STREAMS_OPEN.inc()
        try:
            await self._join(subscriber.job_id, subscriber)
        except BaseException:
            await self._exit(subscriber)
            raise
        if self.draining:
            # Admitted just before the shutdown notice: send it elsewhere too.
            self._send_away(subscriber)

    async def _exit(self, subscriber: Subscriber) -> None:
        self.open_streams -= 1
        metrics.STREAMS_OPEN.dec()
        subscriber.close()
        with anyio.CancelScope(shield=True):
            await self._leave(subscriber.job_id, subscriber)

    @property
    def epoch(self) -> int:
        """The broker feed's epoch: take it before a read that `observe()` is given."""
        return self._broker.feed_epoch

    def latest(self, job_id: str) -> Snapshot | None:
        """The job's current snapshot without a broker read, when a stream here follows it.

        Once subscribed, every later event reaches this process, so the newest snapshot
        a channel saw (or read after subscribing) stays current for as long as the feed
        is not lost. A connect then costs no Redis read (issue 6: connect time), which
        is how Centrifugo's channel cache works too. A snapshot taken in an earlier feed
        epoch is not trusted: events may have been missed while the feed was down.
        """
        channel = self._channels.get(job_id)
        if channel is None or channel.epoch != self._broker.feed_epoch:
            return None
        return channel.snapshot

    def observe(self, snapshot: Snapshot, epoch: int) -> None:
        """Tell a followed job's channel of a snapshot read (or written) in `epoch`."""
        channel = self._channels.get(snapshot.job_id)
        if channel is not None and epoch == self._broker.feed_epoch:
            channel.observe(snapshot, epoch)

    def forget(self, job_id: str) -> None:
        """Drop what is known of a job deleted through this hub."""
        channel = self._channels.get(job_id)
        if channel is not None:
            channel.snapshot = None

    async def _join(self, job_id: str | None, subscriber: Subscriber) -> None:
        channel = self._channels.get(job_id)
        if channel is not None:
            # Already subscribed: no lock, no await, so no leave can remove it meanwhile.
            channel.subscribers.add(subscriber)
            return
        async with self._lock:
            channel = self._channels.get(job_id)
            if channel is None:
                # Shielded: a client leaving mid-subscribe must not leave Redis subscribed to
                # a channel nobody here follows (found by the 2,000-client churn test).
                with anyio.CancelScope(shield=True):
                    await self._broker.subscribe(job_id)
                channel = self._channels[job_id] = _Channel()
                metrics.SUBSCRIPTIONS.inc()
            channel.subscribers.add(subscriber)

    async def _leave(self, job_id: str | None, subscriber: Subscriber) -> None:
        """Remove a stream wherever its join got to; the last one out unsubscribes."""
        async with self._lock:
            channel = self._channels.get(job_id)
            if channel is None:
                return
            channel.subscribers.discard(subscriber)
            if channel.subscribers:
                return
            del self._channels[job_id]
            metrics.SUBSCRIPTIONS.dec()
            try:
                await self._broker.unsubscribe(job_id)
            except BrokerUnavailable:
                log.debug("unsubscribe_deferred", job_id=job_id)

    def _on_message(self, raw: bytes, every_job: bool) -> None:
        try:
            envelope = ENVELOPE_DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Someone else's PUBLISH on our channel: never let it reach a browser.
            log.warning("broker_message_ignored", error=str(exc), size=len(raw))
            metrics.MESSAGES_IGNORED.inc()
            return
        snapshot = envelope.snapshot
        channel = self._channels.get(None if every_job else snapshot.job_id)
        if channel is None or not channel.subscribers:
            return
        data = ENCODER.encode(snapshot)
        if every_job:
            self._deliver_every_job(channel, envelope.event, snapshot, data)
        else:
            self._deliver_job(channel, envelope.event, snapshot, data)

    def _deliver_job(
        self, channel: _Channel, kind: EventKind, snapshot: Snapshot, data: bytes
    ) -> None:
        if kind is EventKind.DELETED:
            channel.snapshot = None
            frame = frames.event(b"deleted", data)
            for subscriber in list(channel.subscribers):
                subscriber.push(snapshot.job_id, frame, final=True)
            return
        seq = snapshot.seq
        if seq <= channel.last_seq:
            return
        channel.last_seq = seq
        channel.observe(snapshot, self._broker.feed_epoch)
        frame = frames.event(b"progress", data, seq)
        final = snapshot.is_terminal
        if final:
            frame += frames.end(snapshot.job_id, seq, snapshot.status)
        delivered = 0
        for subscriber in channel.subscribers:
            if seq > subscriber.last_seq:
                subscriber.last_seq = seq
                subscriber.push(snapshot.job_id, frame, seq=seq, final=final)
                delivered += 1
        metrics.EVENTS_DELIVERED.inc(delivered)

    def _deliver_every_job(
        self, channel: _Channel, kind: EventKind, snapshot: Snapshot, data: bytes
    ) -> None:
        name = b"deleted" if kind is EventKind.DELETED else b"progress"
        frame = frames.event(name, data)
        delivered = 0
        for subscriber in channel.subscribers:
            if subscriber.wants(snapshot.job_id):
                subscriber.push(snapshot.job_id, frame)
                delivered += 1
        metrics.EVENTS_DELIVERED.inc(delivered)

    async def _resync(self, channels: Collection[str | None] | None = None) -> None:
        """After a broker outage, give every stream the current state (events may be lost).

        `channels`: the job ids the broker says may have missed events (None: all).
        """
        metrics.BROKER_RECONNECTS.inc()
        epoch = self.epoch
        for job_id, channel in list(self._channels.items()):
            try:
                if job_id is None:
                    for snapshot in await self._store.list_jobs(limit=RESYNC_JOBS):
                        self._push_snapshot(channel, snapshot)
                else:
                    snapshot = await self._store.get(job_id)
                    self.observe(snapshot, epoch)
                    self._push_snapshot(channel, snapshot)
            except JobNotFound:
                continue
            except BrokerUnavailable:
                log.warning("resync_failed", job_id=job_id)
                return

    def _push_snapshot(self, channel: _Channel, snapshot: Snapshot) -> None:
        data = ENCODER.encode(snapshot)
        channel.last_seq = max(channel.last_seq, snapshot.seq)
        for subscriber in channel.subscribers:
            if subscriber.job_id is None:
                if subscriber.wants(snapshot.job_id):
                    subscriber.push(snapshot.job_id, frames.event(b"snapshot", data))
                continue
            subscriber.last_seq = max(subscriber.last_seq, snapshot.seq)
            frame = frames.event(b"snapshot", data, snapshot.seq)
            if snapshot.is_terminal:
                frame += frames.end(snapshot.job_id, snapshot.seq, snapshot.status)
            subscriber.push(snapshot.job_id, frame, seq=snapshot.seq, final=snapshot.is_terminal)

    def drain(self) -> None:
        """Tell every open stream to reconnect soon (to another hub) and end it (shutdown)."""
        self.draining = True
        streams = 0
        for channel in list(self._channels.values()):
            for subscriber in list(channel.subscribers):
                self._send_away(subscriber)
                streams += 1
        log.info("streams_drained", streams=streams)

    @staticmethod
    def _send_away(subscriber: Subscriber) -> None:
        subscriber.push("", frames.retry(random.randint(*DRAIN_RETRY_MS)), final=True)

    async def _close_on_exit(self) -> None:
        """End every stream once the server starts shutting down: one listener per process.

        sse-starlette would otherwise run this wait as a task in every stream (issue 6:
        a third of a stream's memory); its shared shutdown watcher still drives it.
        """
        await EventSourceResponse._listen_for_exit_signal()
        for channel in list(self._channels.values()):
            for subscriber in list(channel.subscribers):
                subscriber.close()

    async def _tick(self) -> None:
        """The one clock of the process: ends expired tokens' streams within a second,
        pings idle streams every heartbeat, and cuts sends blocked past their timeout."""
        step = min(self._heartbeat, TOKEN_CHECK_INTERVAL)
        next_ping = time.monotonic() + self._heartbeat
        while True:
            await anyio.sleep(step)
            now = time.time()
            ping = time.monotonic() >= next_ping
            if ping:
                next_ping += self._heartbeat
            for channel in list(self._channels.values()):
                for subscriber in list(channel.subscribers):
                    if subscriber.expires_at is not None and subscriber.expires_at <= now:
                        subscriber.close()
                    elif ping and subscriber.idle:
                        subscriber.push("", frames.PING)
            monotonic = time.monotonic()
            for stream in list(self._watched):
                stream.cut_if_stuck(monotonic)
