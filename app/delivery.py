"""Delivery: broker envelopes become frames, encoded once per event, in every mailbox that
shows the job; after a gap in the feed, the current snapshots take the missed events' place."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Final

import anyio
import msgspec
import structlog

from progress_hub import frames, metrics
from progress_hub.channels import Channel, Channels
from pubsub.backoff import Outage
from pubsub.broker import Broker
from pubsub.errors import BrokerUnavailable
from pubsub.events import ENCODER, ENVELOPE_DECODER, EventKind, Snapshot
from pubsub.store import JobStore

log = structlog.get_logger(__name__)

# What an every-job stream (a dashboard) is shown at connect, and again after a gap.
MAX_DASHBOARD_JOBS: Final = 500


class Delivery:
    """Routes broker envelopes to the mailboxes of this process's streams."""

    def __init__(self, broker: Broker, store: JobStore, channels: Channels) -> None:
        self._broker = broker
        self._store = store
        self._channels = channels
        # The channels a gap's resync has not given their snapshots yet (None: every one).
        self._owed: set[str | None] | None = set()

    def on_message(self, raw: bytes, every_job: bool) -> None:
        """One envelope from the broker's feed (`every_job`: it came via the every-job feed)."""
        try:
            envelope = ENVELOPE_DECODER.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Someone else's PUBLISH on our channel: never let it reach a browser.
            log.warning("broker_message_ignored", error=str(exc), size=len(raw))
            metrics.MESSAGES_IGNORED.inc()
            return
        snapshot = envelope.snapshot
        channel = self._channels.get(None if every_job else snapshot.job_id)
        if channel is None or not channel.mailboxes:
            return
        data = ENCODER.encode(snapshot)
        if every_job:
            self._every_job(channel, envelope.event, snapshot, data, self._broker.feed_epoch)
        else:
            self._one_job(channel, envelope.event, snapshot, data)

    def _one_job(self, channel: Channel, kind: EventKind, snapshot: Snapshot, data: bytes) -> None:
        if kind is EventKind.DELETED:
            channel.snapshot = None
            frame = frames.event(b"deleted", data)
            for mailbox in list(channel.mailboxes):
                mailbox.push(snapshot.job_id, frame, final=True)
            return
        epoch = self._broker.feed_epoch
        if snapshot.seq > channel.last_seq:
            self._deliver(channel, snapshot, data, epoch)
        elif channel.shown_epoch != epoch:
            # After a gap, until its resync read settles the channel: maybe a rewound
            # job's reuse of a lost seq (`_rewound`), maybe a repeat. The read decides.
            channel.keep(snapshot, data)

    def _deliver(self, channel: Channel, snapshot: Snapshot, data: bytes, epoch: int) -> None:
        """Give the channel's streams an event newer than any they were given."""
        seq = snapshot.seq
        channel.last_seq, channel.shown_epoch, channel.kept = seq, epoch, None
        channel.observe(snapshot, epoch)
        frame = frames.event(b"progress", data, seq)
        final = snapshot.is_terminal
        if final:
            frame += frames.end(snapshot.job_id, seq, snapshot.status)
        delivered = 0
        for mailbox in channel.mailboxes:
            if seq > mailbox.last_seq:
                mailbox.last_seq = seq
                mailbox.push(snapshot.job_id, frame, seq=seq, final=final)
                delivered += 1
        metrics.EVENTS_DELIVERED.inc(delivered)

    @staticmethod
    def _every_job(
        channel: Channel, kind: EventKind, snapshot: Snapshot, data: bytes, epoch: int
    ) -> None:
        deleted = kind is EventKind.DELETED
        if not deleted:
            channel.given_after_gap(snapshot.job_id, snapshot.seq, epoch)
        frame = frames.event(b"deleted" if deleted else b"progress", data)
        # Queued with its seq, which a dashboard's opening read may cover
        # (`Mailbox.drop_covered`); a deletion never is: it must always arrive.
        seq = 0 if deleted else snapshot.seq
        delivered = 0
        for mailbox in channel.mailboxes:
            if mailbox.wants(snapshot.job_id):
                mailbox.push(snapshot.job_id, frame, seq=seq)
                delivered += 1
        metrics.EVENTS_DELIVERED.inc(delivered)

    async def resync(self, channels: Collection[str | None] | None = None) -> None:
        """After a possible gap in the feed, give the streams of `channels` (None: every
        followed channel) the current snapshot of each job they show.

        Jobs are read in batches (one round trip per `RESYNC_BATCH`), every followed job,
        and for the every-job feed the jobs its dashboards were shown at connect.
        """
        metrics.BROKER_RECONNECTS.inc()
        epoch = self._broker.feed_epoch
        if channels is None or self._owed is None:
            self._owed = None
        else:
            self._owed.update(channels)
        outage = Outage()
        # The feed is back, but reads may still fail for a moment (a failover's slot map
        # settling): retry on the publisher's schedule, or a stream whose job goes quiet
        # would never hear of the events it missed. A newer gap runs its own resync, and
        # it takes over what this one still owes: that gap may be another shard's.
        while epoch == self._broker.feed_epoch:
            owed = None if self._owed is None else set(self._owed)
            try:
                await self._resync_once(owed, epoch)
            except BrokerUnavailable:
                if outage.failed(time.monotonic()):
                    log.warning("resync_failed", retrying=True)
                await anyio.sleep(outage.delay)
            else:
                if owed is None:
                    self._owed = set()
                elif self._owed is not None:
                    self._owed -= owed
                return

    async def _resync_once(self, wanted: set[str | None] | None, epoch: int) -> None:
        followed = [
            (job_id, channel)
            for job_id, channel in self._channels.items()
            if wanted is None or job_id in wanted
        ]
        job_ids = [job_id for job_id, _ in followed if job_id is not None]
        self._push_read(await self._store.get_many(job_ids), epoch)
        every_job = self._channels.get(None)
        if every_job is not None and (wanted is None or None in wanted):
            await self._resync_dashboards(every_job, epoch)

    def _push_read(self, snapshots: list[Snapshot], epoch: int) -> None:
        """Give the streams of each followed job its snapshot read after a gap, then the
        events kept meanwhile that are newer than it (a rewound job's next updates)."""
        for snapshot in snapshots:
            channel = self._channels.get(snapshot.job_id)
            if channel is None:
                continue
            rewound = _rewound(channel, snapshot, epoch)
            self._channels.observe(snapshot, epoch)
            self._push_snapshot(channel, snapshot, rewound=rewound)
            for event, data in channel.settle(epoch):
                if event.seq > channel.last_seq:
                    self._deliver(channel, event, data, epoch)

    async def _resync_dashboards(self, channel: Channel, epoch: int) -> None:
        """Give the every-job streams the current snapshot of each job they show, except
        where an event newer than the read already reached them: within one response a
        snapshot older than an event it gave then means a rewound job, to a client
        (static/progress-client.js)."""
        named: set[str] = set()
        unfiltered = False
        for mailbox in channel.mailboxes:
            if mailbox.jobs is None:
                unfiltered = True
            else:
                named.update(mailbox.jobs)
        snapshots = {s.job_id: s for s in await self._store.get_many(sorted(named))}
        if unfiltered:
            for snapshot in await self._store.list_jobs(limit=MAX_DASHBOARD_JOBS):
                snapshots.setdefault(snapshot.job_id, snapshot)
        given = channel.given_since_gap or {}
        for snapshot in snapshots.values():
            if given.get(snapshot.job_id, 0) <= snapshot.seq:
                self._push_snapshot(channel, snapshot)
        channel.settle(epoch)

    @staticmethod
    def _push_snapshot(channel: Channel, snapshot: Snapshot, *, rewound: bool = False) -> None:
        """Give the channel's streams `snapshot`; `rewound`: the stored job is older than
        what they were shown, and it goes on from there (`_rewound`)."""
        data = ENCODER.encode(snapshot)
        if rewound:
            log.warning("job_rewound", job_id=snapshot.job_id, shown=channel.last_seq,
                        stored=snapshot.seq)  # fmt: skip
            channel.last_seq = snapshot.seq
        else:
            channel.last_seq = max(channel.last_seq, snapshot.seq)
        dashboard_frame = frames.event(b"snapshot", data)
        frame = frames.event(b"snapshot", data, snapshot.seq)
        final = snapshot.is_terminal
        if final:
            frame += frames.end(snapshot.job_id, snapshot.seq, snapshot.status)
        for mailbox in list(channel.mailboxes):
            if mailbox.job_id is None:
                if mailbox.wants(snapshot.job_id):
                    mailbox.push(snapshot.job_id, dashboard_frame)
                continue
            if snapshot.seq < mailbox.last_seq and not rewound:
                # Live delivery got there first: the stream already shows a newer state,
                # and this snapshot would move its bar backwards. An equal one is still
                # sent: after a gap every stream hears the current state (docs/api.md §8).
                continue
            mailbox.last_seq = snapshot.seq
            mailbox.push(snapshot.job_id, frame, seq=snapshot.seq, final=final)


def _rewound(channel: Channel, snapshot: Snapshot, epoch: int) -> bool:
    """True when a job read after a gap is older than what its streams were given before
    the gap: the writes past it were lost (a failover before the replica had them, a
    Redis restart that lost its last writes). The job goes on from the stored seq,
    reusing the lost ones, so its streams must take them again, the ones that came while
    the read was out included (`Channel.keep`; docs/production.md, failover). A stream
    given a newer event since the gap shows a state newer than the read: no rewind."""
    return snapshot.seq < channel.last_seq and channel.shown_epoch != epoch
