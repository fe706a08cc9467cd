"""Delivery into stream mailboxes, through the real channel registry and the memory
broker's feed: what a dashboard's opening covers is not sent twice, and what a gap's
resync could not read is read by the next one."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import anyio

from progress_hub.channels import Channels
from progress_hub.delivery import Delivery
from progress_hub.mailbox import Mailbox
from pubsub.broker import open_broker
from pubsub.brokers.memory import MemoryBroker
from pubsub.errors import BrokerUnavailable
from pubsub.events import Update
from pubsub.store import JobStore


async def test_delivery_dashboard_opening_drops_the_events_it_covers() -> None:
    broker = open_broker("memory://")
    store = JobStore(broker)
    channels = Channels(broker)
    delivery = Delivery(broker, store, channels)
    mailbox = Mailbox(None)

    async def on_gap(channels: Collection[str | None]) -> None:
        raise AssertionError("the memory broker's feed has no gaps")

    async with anyio.create_task_group() as feed:
        feed.start_soon(broker.listen, delivery.on_message, on_gap)
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
    """The memory broker, with a feed that can be declared lost (its epoch moves) and
    reads that fail while `down`. A cluster gives this timing (a second shard's
    connection dropping while the first gap's reads still fail) but never on cue."""

    def __init__(self) -> None:
        super().__init__()
        self.feed_epoch = 0
        self.down = False

    async def load_many(self, job_ids: Sequence[str]) -> list[bytes | None]:
        if self.down:
            raise BrokerUnavailable("the shard is failing over")
        return await super().load_many(job_ids)


async def test_a_gap_whose_resync_reads_fail_is_resynced_by_the_next_gaps_resync() -> None:
    broker = FeedLosingBroker()
    store = JobStore(broker)
    channels = Channels(broker)
    delivery = Delivery(broker, store, channels)
    mailboxes = {job_id: Mailbox(job_id) for job_id in ("on-shard-1", "on-shard-2")}

    async def on_gap(channels: Collection[str | None]) -> None:
        raise AssertionError("the test declares the gaps itself")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broker.listen, delivery.on_message, on_gap)
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
