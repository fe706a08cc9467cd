"""Delivery into an every-job stream's mailbox, through the real channel registry and the
memory broker's feed: what a dashboard's opening covers is not sent twice."""

from __future__ import annotations

from collections.abc import Collection

import anyio

from progress_hub.channels import Channels
from progress_hub.delivery import Delivery
from progress_hub.mailbox import Mailbox
from pubsub.broker import open_broker
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
