"""Fan-out of broker events to this process's open streams.

Four parts, each with one job: `Channels` (which jobs are followed, one broker
subscription each however many streams follow it, and their latest snapshots),
`Delivery` (envelopes to frames, encoded once per event, into every mailbox that shows
the job; the resync after a gap), `Mailbox` (one stream's bounded, conflating queue,
written by the stream's own task) and `Clock` (heartbeats and token expiry). `Fanout`
puts them together for the routes.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from typing import Final

import anyio
import structlog

from progress_hub import frames, metrics
from progress_hub.channels import Channels
from progress_hub.clock import Clock
from progress_hub.delivery import Delivery
from progress_hub.mailbox import Mailbox
from pubsub.broker import Broker
from pubsub.events import Snapshot
from pubsub.store import JobStore

log = structlog.get_logger(__name__)

# How long a stream told to go away (shutdown) waits before reconnecting: short, because
# another hub is there, and jittered, so that its clients do not all arrive at once.
DRAIN_RETRY_MS: Final = (250, 2000)


class Subscription:
    """`async with fanout.subscribe(...) as mailbox:` — a class rather than an
    `@asynccontextmanager`, whose suspended generator each open stream would hold for
    its whole life (docs/performance.md, memory per stream).

    A job stream's endpoint enters it before it chooses its response: the read after
    subscribing decides 404 and 204 (docs/api.md §3). The block releases it on every way
    out, unless `hand_over()` gave it to the response that carries the stream; that
    response's own `__call__` then releases it (`app.sse.HubStream`), once.
    """

    __slots__ = ("_fanout", "_mailbox", "_handed_over", "_released")

    def __init__(self, fanout: Fanout, mailbox: Mailbox) -> None:
        self._fanout = fanout
        self._mailbox = mailbox
        self._handed_over = False
        self._released = False

    async def __aenter__(self) -> Mailbox:
        await self._fanout.enter(self._mailbox)
        return self._mailbox

    async def __aexit__(self, *exc_info: object) -> None:
        # Handed over: returns without suspending, so that no cancellation can come
        # between the endpoint's return and the response's `__call__`.
        if not self._handed_over:
            await self.release()

    def hand_over(self) -> Subscription:
        """Leave the release to whoever now holds this (the stream's response)."""
        self._handed_over = True
        return self

    async def release(self) -> None:
        """Stop delivering to the mailbox (a second call does nothing)."""
        if self._released:
            return
        self._released = True
        await self._fanout.exit(self._mailbox)


class Fanout:
    """This process's streams: registered by `subscribe`, fed from the broker by `run`."""

    def __init__(self, broker: Broker, store: JobStore, *, heartbeat: float) -> None:
        self._broker = broker
        self.channels = Channels(broker)
        self.delivery = Delivery(broker, store, self.channels)
        self.clock = Clock(heartbeat)
        self.open_streams = 0
        self.draining = False

    async def run(self) -> None:
        """Listen to the broker and run the clock until cancelled (owned by the lifespan)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._broker.listen, self.delivery.on_message, self._resync)
            tg.start_soon(self.clock.run)

    async def _resync(self, channels: Collection[str | None] | None = None) -> None:
        """The broker's gap handler: `channels` may have missed events (None: all)."""
        await self.delivery.resync(channels)

    def subscribe(
        self,
        job_id: str | None,
        *,
        jobs: Iterable[str] | None = None,
        expires_at: float | None = None,
    ) -> Subscription:
        """Register a stream for one job (None: every job) for the duration of the block."""
        mailbox = Mailbox(
            job_id=job_id, jobs=frozenset(jobs) if jobs else None, expires_at=expires_at
        )
        return Subscription(self, mailbox)

    async def enter(self, mailbox: Mailbox) -> None:
        """Start delivering to `mailbox` (see `Subscription`)."""
        self.open_streams += 1
        metrics.STREAMS_OPEN.inc()
        try:
            await self.channels.join(mailbox)
        except BaseException:
            await self.exit(mailbox)
            raise
        self.clock.add(mailbox)
        if self.draining:
            # Admitted just before the shutdown notice: send it elsewhere too.
            self._send_away(mailbox)

    async def exit(self, mailbox: Mailbox) -> None:
        """Stop delivering to `mailbox`; the last stream of a job unsubscribes."""
        self.open_streams -= 1
        metrics.STREAMS_OPEN.dec()
        mailbox.close()
        self.clock.remove(mailbox)
        with anyio.CancelScope(shield=True):
            await self.channels.leave(mailbox)

    def footprint(self) -> dict[str, int]:
        """The size of every structure of this process's fan-out (`GET /metrics`,
        `progress_held`): each follows the open streams, none the jobs ever seen."""
        return {"fanout.open_streams": self.open_streams, **self.channels.footprint(),
                **self.clock.footprint()}  # fmt: skip

    @property
    def epoch(self) -> int:
        """The broker feed's epoch: take it before a read that `observe()` is given."""
        return self._broker.feed_epoch

    def latest(self, job_id: str) -> Snapshot | None:
        """The job's current snapshot without a broker read, when a stream here follows it."""
        return self.channels.latest(job_id)

    def observe(self, snapshot: Snapshot, epoch: int) -> None:
        """Tell a followed job's channel of a snapshot read (or written) in `epoch`."""
        self.channels.observe(snapshot, epoch)

    def forget(self, job_id: str) -> None:
        """Drop what is known of a job deleted through this hub."""
        self.channels.forget(job_id)

    def drain(self) -> None:
        """Tell every open stream to reconnect soon (to another hub) and end it (shutdown)."""
        self.draining = True
        streams = 0
        for mailbox in self.channels.mailboxes():
            self._send_away(mailbox)
            streams += 1
        log.info("streams_drained", streams=streams)

    @staticmethod
    def _send_away(mailbox: Mailbox) -> None:
        mailbox.push("", frames.retry(random.randint(*DRAIN_RETRY_MS)), final=True)
