"""Cancel requests (docs/api.md §9): the store's request, and how trackers learn of it."""

from __future__ import annotations

import anyio
import pytest

from pubsub import JobCancelled, JobNotFound, JobStatus, JobTerminal, SyncTracker, Update
from pubsub.publisher import Tracker
from pubsub.store import JobStore
from tests.conditions import eventually, wait_until

# No silent-job reads: what the tracker learns, it learns from a publish's answer.
NO_POLL = None
FAST_POLL = 0.05


async def test_store_request_cancel_flags_the_job_once_and_later_updates_keep_it(
    job_store: JobStore,
) -> None:
    await job_store.publish("c1", Update(status=JobStatus.RUNNING, progress=10))
    asked = await job_store.request_cancel("c1")
    assert (asked.seq, asked.status, asked.cancel_requested) == (2, JobStatus.RUNNING, True)
    again = await job_store.request_cancel("c1")
    assert again.seq == 2, "asking twice must not publish a second event"

    later = await job_store.publish("c1", Update(progress=20))
    assert later.cancel_requested and later.status is JobStatus.RUNNING
    ended = await job_store.publish("c1", Update(status=JobStatus.CANCELLED))
    assert ended.status is JobStatus.CANCELLED

    with pytest.raises(JobTerminal):
        await job_store.request_cancel("c1")
    with pytest.raises(JobNotFound):
        await job_store.request_cancel("nobody")


async def test_tracker_learns_of_a_cancel_request_from_the_answer_to_its_next_publish(
    store: JobStore,
) -> None:
    hub = JobStore(store.broker)
    tracker = Tracker(store, "c2", raise_on_cancel=True, cancel_poll_interval=NO_POLL)
    async with tracker:
        await tracker.start()
        await tracker.flush()
        assert not tracker.cancel_requested
        await hub.request_cancel("c2")
        await tracker.heartbeat()
        await tracker.flush()
        assert tracker.cancel_requested
        with pytest.raises(JobCancelled, match="Job 'c2' was asked to cancel."):
            await tracker.advance(0.5)
        with pytest.raises(JobCancelled):
            await tracker.message("still going")  # every call, not only the first
        await tracker.cancel("Stopped on request")
    snapshot = await hub.get("c2")
    assert (snapshot.status, snapshot.message) == (JobStatus.CANCELLED, "Stopped on request")


async def test_silent_tracker_learns_within_its_poll_interval_and_with_records_cancelled(
    store: JobStore,
) -> None:
    hub = JobStore(store.broker)
    with pytest.raises(JobCancelled):
        async with Tracker(
            store, "c3", raise_on_cancel=True, cancel_poll_interval=FAST_POLL
        ) as tracker:
            await tracker.start()
            await tracker.flush()
            await hub.request_cancel("c3")
            # The pipeline says nothing: only the tracker's own read can tell it.
            await eventually(
                lambda: tracker.cancel_requested, bool, 5, "the silent tracker never learnt"
            )
            await tracker.set(50)
    snapshot = await hub.get("c3")
    assert snapshot.status is JobStatus.CANCELLED, "a `with` left with JobCancelled is cancelled"


async def test_tracker_without_raise_on_cancel_keeps_working_and_the_job_keeps_running(
    store: JobStore,
) -> None:
    hub = JobStore(store.broker)
    async with Tracker(store, "c4", cancel_poll_interval=FAST_POLL) as tracker:
        await tracker.start()
        await tracker.flush()
        await hub.request_cancel("c4")
        await eventually(lambda: tracker.cancel_requested, bool, 5, "the tracker never learnt")
        await tracker.set(60)
        await tracker.flush()
    snapshot = await hub.get("c4")
    assert (snapshot.status, snapshot.progress, snapshot.cancel_requested) == (
        JobStatus.RUNNING,
        60,
        True,
    )


def _sync_worker(url: str) -> None:
    """A thread-side task that never publishes while it waits: only the read can tell it."""
    with pytest.raises(JobCancelled):
        with SyncTracker(url, "c5", raise_on_cancel=True, cancel_poll_interval=FAST_POLL) as job:
            job.start()
            job.flush()
            wait_until(lambda: job.cancel_requested, 5, "the sync tracker never learnt")
            job.advance(0.9)


async def test_sync_tracker_raises_job_cancelled_and_its_with_records_cancelled(
    redis_url: str, store: JobStore
) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, _sync_worker, redis_url)

        async def created() -> bool:
            try:
                await store.get("c5")
            except JobNotFound:
                return False
            return True

        await eventually(created, bool, 5, "the sync worker created its job")
        await store.request_cancel("c5")
    final = await store.get("c5")
    assert final.status is JobStatus.CANCELLED
