"""Delivery into stream mailboxes, through the real channel registry and the memory
broker's feed: what a dashboard's opening covers is not sent twice, and what a gap's
resync could not read is read by the next one."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import anyio

from progress_hub.channels import Channels
from progress_hub.delivery import Delivery
from progress_hub.mailbox import Mailbox
from pubsub.broker import Broker, open_broker
from pubsub.brokers.memory import MemoryBroker
from pubsub.errors import BrokerUnavailable
from pubsub.events import Update
from pubsub.store import JobStore


def _wired(broker: Broker) -> tuple[JobStore, Channels, Delivery]:
    """A store, the channel registry and delivery on `broker`, as a hub wires them."""
    store = JobStore(broker)
    channels = Channels(broker)
    return store, channels, Delivery(broker, store, channels)


async def _no_gap(channels: Collection[str | None]) -> None:
    raise AssertionError("no gap but the ones a test declares (it calls resync itself)")


async def test_delivery_dashboard_opening_drops_the_events_it_covers() -> None:
    broker = open_broker("memory://")
    store, channels, delivery = _wired(broker)
    mailbox = Mailbox(None)

    async with anyio.create_task_group() as feed:
        feed.start_soon(broker.listen, delivery.on_message, _no_gap)
        await anyio.wait_all_tasks_blocked()
        await channels.join(mailbox)  # subscribed first, as `all_events` is
        await store.create("a")
        await store.create("b")
        # The opening read, while those two events wait in the mailbox ...
        opening = await store.list_jobs()
        # ... and two events after it: news to the dashboard.
        await store.publish("a", Update(progress=50))
        await store.delete("b")
        mailbox.drop_covered({s.job_id: s.seq for s in opening})
        with anyio.fail_after(5):
            batch = await mailbox.next_frames()
        await channels.leave(mailbox)
        feed.cancel_scope.cancel()
    assert batch is not None
    events = [line for line in batch.split(b"\n") if line.startswith(b"event: ")]
    assert events == [b"event: progress", b"event: deleted"], batch
    assert b'"progress":50.0' in batch, batch
    await broker.aclose()


class FeedLosingBroker(MemoryBroker):
    """The memory broker, with a feed that can be declared lost (its epoch moves), reads
    that fail while `down`, and reads whose answers wait. A cluster gives these timings
    (a second shard's connection dropping while the first gap's reads still fail; an
    event overtaking a read's answer) but never on cue."""

    def __init__(self) -> None:
        super().__init__()
        self.feed_epoch = 0
        self.down = False
        self.answer: anyio.Event | None = None
        """When set, reads are made at once and answered once it is set."""

    async def load_many(self, job_ids: Sequence[str]) -> list[bytes | None]:
        if self.down:
            raise BrokerUnavailable("the shard is failing over")
        records = await super().load_many(job_ids)
        if self.answer is not None:
            await self.answer.wait()
        return records


async def test_a_gap_whose_resync_reads_fail_is_resynced_by_the_next_gaps_resync() -> None:
    broker = FeedLosingBroker()
    store, channels, delivery = _wired(broker)
    mailboxes = {job_id: Mailbox(job_id) for job_id in ("on-shard-1", "on-shard-2")}

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broker.listen, delivery.on_message, _no_gap)
        await anyio.wait_all_tasks_blocked()
        for job_id, mailbox in mailboxes.items():
            await store.create(job_id)
            await channels.join(mailbox)
        # A gap on shard 1 whose reads fail, then one on shard 2, after which reads work.
        broker.down = True
        broker.feed_epoch += 1
        tasks.start_soon(delivery.resync, ["on-shard-1"])
        await anyio.wait_all_tasks_blocked()
        broker.feed_epoch += 1
        broker.down = False
        await delivery.resync(["on-shard-2"])
        with anyio.fail_after(5):
            frames = {job_id: await box.next_frames() for job_id, box in mailboxes.items()}
        for mailbox in mailboxes.values():
            await channels.leave(mailbox)
        tasks.cancel_scope.cancel()
    for job_id, batch in frames.items():
        assert batch is not None and b"event: snapshot" in batch, (job_id, batch)


async def test_a_dashboards_resync_sends_no_snapshot_older_than_an_event_it_already_gave() -> None:
    # Within one response, a job's snapshot older than an event it gave that job means
    # a rewound job to the JS client: a resync read that an event overtook is not sent.
    broker = FeedLosingBroker()
    store, channels, delivery = _wired(broker)
    dashboard = Mailbox(None)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broker.listen, delivery.on_message, _no_gap)
        await anyio.wait_all_tasks_blocked()
        await channels.join(dashboard)
        await store.publish("overtaken", Update(progress=10))
        with anyio.fail_after(5):
            assert await dashboard.next_frames() is not None
        broker.feed_epoch += 1  # the gap
        broker.answer = anyio.Event()
        resynced = anyio.Event()

        async def resync() -> None:
            await delivery.resync()
            resynced.set()

        tasks.start_soon(resync)
        await anyio.wait_all_tasks_blocked()  # the resync's read is made, its answer held
        await store.publish("overtaken", Update(progress=20))  # seq 2, given live
        broker.answer.set()
        with anyio.fail_after(5):
            await resynced.wait()
            batch = await dashboard.next_frames()
        await channels.leave(dashboard)
        tasks.cancel_scope.cancel()
    assert batch is not None
    events = [line for line in batch.split(b"\n") if line.startswith(b"event: ")]
    assert events == [b"event: progress"], batch
    assert b'"seq":2' in batch, batch
