"""The channels this process follows: one broker subscription per job, shared by its streams.

A channel also caches the job's latest snapshot while it is followed. Once subscribed,
every later event reaches this process, so the newest snapshot a channel saw (or read
after subscribing) stays current for as long as the feed is not lost: a connect then
costs no Redis read, which is how Centrifugo's channel cache works too. A snapshot taken
in an earlier feed epoch is not trusted: events may have been missed while it was down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import anyio
import structlog

from progress_hub import metrics
from progress_hub.mailbox import Mailbox
from pubsub.broker import Broker
from pubsub.errors import BrokerUnavailable
from pubsub.events import Snapshot

log = structlog.get_logger(__name__)

KEPT_AFTER_GAP: Final = 64
GIVEN_AFTER_GAP: Final = 10_000


@dataclass(slots=True, eq=False)
class Channel:
    """The streams of one job (or of the every-job feed), sharing one broker subscription."""

    mailboxes: set[Mailbox] = field(default_factory=set)
    last_seq: int = 0
    """The newest seq this channel's streams were given."""
    shown_epoch: int = -1
    """The broker feed epoch `last_seq` was given in. Until a gap's resync settles the
    channel, an event at or below it is not surely a repeat (`keep`)."""
    kept: list[tuple[Snapshot, bytes]] | None = None
    """The events `keep` holds until `settle` (None: none, as in all but a gap's wake)."""
    given_since_gap: dict[str, int] | None = None
    """The every-job channel's: the newest seq of each job its streams were given since a
    gap, until its resync settles it, which sends no job's snapshot older than that."""
    snapshot: Snapshot | None = None
    """The job's latest snapshot seen since the subscription began (None: not yet)."""
    epoch: int = -1
    """The broker feed epoch `snapshot` belongs to: only the current one is trusted."""
    subscribed: asyncio.Future[None] | None = None
    """Done once the broker confirmed the subscription (None: confirmed long ago)."""

    def keep(self, snapshot: Snapshot, data: bytes) -> None:
        """Hold an event at or below `last_seq` that came after a gap, before its resync
        read settled the channel: if the read finds the job rewound (writes lost), the
        event is the job's reuse of a lost seq, to be given after all (app/delivery.py)."""
        kept = self.kept if self.kept is not None else []
        kept.append((snapshot, data))
        # A job's updates between a gap and its read are few; past these, the read's
        # snapshot covers the oldest.
        self.kept = kept[-KEPT_AFTER_GAP:]

    def settle(self, epoch: int) -> list[tuple[Snapshot, bytes]]:
        """The channel is known current as of `epoch`: what it kept, oldest seq first."""
        kept, self.kept, self.shown_epoch = self.kept or [], None, epoch
        self.given_since_gap = None
        return sorted(kept, key=lambda event: event[0].seq)

    def given_after_gap(self, job_id: str, seq: int, epoch: int) -> None:
        """Note an event the every-job channel's streams were given, if a gap's resync
        is still to come (bounded: past that many jobs, the oldest are forgotten)."""
        if self.shown_epoch == epoch:
            return
        given = self.given_since_gap if self.given_since_gap is not None else {}
        given[job_id] = seq
        if len(given) > GIVEN_AFTER_GAP:
            del given[next(iter(given))]
        self.given_since_gap = given

    def observe(self, snapshot: Snapshot, epoch: int) -> None:
        """Keep `snapshot` as the job's latest if it is newer than what is known."""
        known = self.snapshot
        if known is None or self.epoch != epoch or snapshot.seq > known.seq:
            self.snapshot, self.epoch = snapshot, epoch


class Channels:
    """Every followed channel by job id (None: the every-job feed), reference-counted.

    Joining a channel that is being subscribed waits for that one subscription; no lock
    is held across a broker round trip, so first streams of different jobs subscribe
    concurrently (docs/performance.md, streams to new jobs).
    """

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._channels: dict[str | None, Channel] = {}
        # Unsubscriptions in flight: a new first stream of that job waits for its end,
        # so that Redis never sees SUBSCRIBE then a late UNSUBSCRIBE of the same channel.
        self._leaving: dict[str | None, asyncio.Future[None]] = {}

    def get(self, job_id: str | None) -> Channel | None:
        """The channel of `job_id`, when a stream here follows it."""
        return self._channels.get(job_id)

    def items(self) -> list[tuple[str | None, Channel]]:
        """Every channel, by job id (a copy: callers may await while walking it)."""
        return list(self._channels.items())

    def mailboxes(self) -> Iterator[Mailbox]:
        """Every open stream's mailbox (walked only on drain and shutdown)."""
        for channel in list(self._channels.values()):
            yield from list(channel.mailboxes)

    def footprint(self) -> dict[str, int]:
        """The size of each structure here: the followed channels, their streams, the
        unsubscriptions in flight; none keeps a job its last stream left."""
        return {
            "channels.followed": len(self._channels),
            "channels.streams": sum(len(c.mailboxes) for c in self._channels.values()),
            "channels.leaving": len(self._leaving),
        }

    def latest(self, job_id: str) -> Snapshot | None:
        """The job's current snapshot without a broker read, when a stream here follows it."""
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

    async def join(self, mailbox: Mailbox) -> None:
        """Add `mailbox` to its job's channel; returns once the broker subscription is
        confirmed (raises `BrokerUnavailable` when it cannot be)."""
        job_id = mailbox.job_id
        while (leaving := self._leaving.get(job_id)) is not None:
            await asyncio.shield(leaving)
        channel = self._channels.get(job_id)
        if channel is not None:
            channel.mailboxes.add(mailbox)
            if channel.subscribed is not None:
                # Another stream's subscription of this job is in flight: share it.
                await asyncio.shield(channel.subscribed)
            return
        confirmed = asyncio.get_running_loop().create_future()
        # Nothing given yet, so nothing missed: settled in the epoch it starts in.
        epoch = self._broker.feed_epoch
        channel = self._channels[job_id] = Channel(subscribed=confirmed, shown_epoch=epoch)
        channel.mailboxes.add(mailbox)
        metrics.SUBSCRIPTIONS.inc()
        try:
            # Shielded: a client leaving mid-subscribe must not leave Redis subscribed to
            # a channel nobody here follows (test_client_churn_leaves_no_subscription_behind).
            with anyio.CancelScope(shield=True):
                await self._broker.subscribe(job_id)
        except BaseException as exc:
            del self._channels[job_id]
            metrics.SUBSCRIPTIONS.dec()
            confirmed.set_exception(exc if isinstance(exc, Exception) else BrokerUnavailable())
            confirmed.exception()  # retrieved here, whether or not another stream waits
            raise
        channel.subscribed = None
        confirmed.set_result(None)
        if not channel.mailboxes:
            # Every stream left while the subscription was being confirmed.
            await self._drop(job_id, channel)

    async def leave(self, mailbox: Mailbox) -> None:
        """Remove `mailbox` wherever its join got to; the last one out unsubscribes."""
        job_id = mailbox.job_id
        channel = self._channels.get(job_id)
        if channel is None:
            return
        if mailbox not in channel.mailboxes:
            return  # its join failed, and the channel is another one now
        channel.mailboxes.discard(mailbox)
        if channel.mailboxes or channel.subscribed is not None:
            return  # still followed, or the subscribing stream cleans up (`join`)
        await self._drop(job_id, channel)

    async def _drop(self, job_id: str | None, channel: Channel) -> None:
        if self._channels.get(job_id) is not channel:
            return
        del self._channels[job_id]
        metrics.SUBSCRIPTIONS.dec()
        done = self._leaving[job_id] = asyncio.get_running_loop().create_future()
        try:
            with anyio.CancelScope(shield=True):
                await self._broker.unsubscribe(job_id)
        except BrokerUnavailable:
            log.debug("unsubscribe_deferred", job_id=job_id)
        finally:
            del self._leaving[job_id]
            done.set_result(None)
