"""Redis goes away while a pipeline publishes, then comes back: the pipeline never notices."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as redis

from progress_hub.embedded import EmbeddedServer
from pubsub.broker import open_broker
from pubsub.brokers import keys
from pubsub.brokers.redis import RedisBroker
from pubsub.errors import BrokerUnavailable
from pubsub.events import JobStatus, Snapshot
from pubsub.publisher import Tracker
from pubsub.store import JobStore
from pubsub.sync import SyncTracker
from tests.conditions import eventually

# redis-py retries a refused connection for a few seconds before giving up.
OUTAGE_NOTICED = 15.0
FLUSHED = 15.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A Redis of this test's own, persisted to disk, so it can stop and start again."""
    with EmbeddedServer(data_dir=tmp_path) as embedded:
        yield embedded


@pytest.fixture
async def reader(server: EmbeddedServer) -> AsyncIterator[JobStore]:
    """How the test looks at the job: a store of its own on the same server."""
    broker = open_broker(server.url)
    try:
        yield JobStore(broker)
    finally:
        await broker.aclose()


def _outage_of(job: Tracker | SyncTracker) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return job.outage

    return probe


async def _noticed(job: Tracker | SyncTracker) -> None:
    async def probe() -> bool:
        return job.outage

    await eventually(probe, bool, OUTAGE_NOTICED, "the tracker noticed the outage")


async def _snapshot(
    reader: JobStore, job_id: str, accept: Callable[[Snapshot], bool], message: str
) -> Snapshot:
    return await eventually(lambda: reader.get(job_id), accept, FLUSHED, message)


async def test_tracker_keeps_state_through_an_outage_and_flushes_it_after(
    server: EmbeddedServer, reader: JobStore
) -> None:
    async with Tracker.connect(server.url, "down-1", pipeline="ocr") as job:
        await job.start()
        await job.chunks(17)
        await job.flush()
        await anyio.to_thread.run_sync(server.stop)

        started = anyio.current_time()
        for index in range(8):
            await job.chunk_done(index)
            await anyio.sleep(0)
        calls_took = anyio.current_time() - started
        await _noticed(job)
        started = anyio.current_time()
        for index in range(8, 12):  # while the tracker knows the broker is down
            await job.chunk_done(index)
        await job.chunk_failed(12, 301, 325, "Document AI timeout")
        await job.message("Still working, Redis or not")
        calls_took += anyio.current_time() - started

        await anyio.to_thread.run_sync(server.start)
        flushed = await _snapshot(
            reader, "down-1", lambda s: s.message == "Still working, Redis or not", "flushed"
        )
        # The reader can see the flushed update a moment before the tracker hears back.
        await eventually(_outage_of(job), lambda ongoing: not ongoing, FLUSHED, "outage over")
        await job.complete("text")

    assert flushed.chunks is not None
    assert (flushed.chunks.completed, flushed.chunks.failed) == (12, 1), "no chunk lost"
    assert flushed.error == "Chunk 13 (pages 301-325) failed: Document AI timeout"
    assert flushed.status is JobStatus.RUNNING
    assert calls_took < 1.0, "calls never waited for the broker"
    assert (await reader.get("down-1")).status is JobStatus.COMPLETED


def test_sync_tracker_keeps_state_through_an_outage_and_flushes_it_after(
    server: EmbeddedServer,
) -> None:
    with SyncTracker(server.url, "down-2", pipeline="pdf") as job:
        job.stage("extract")
        job.flush()
        server.stop()
        job.advance(0.4, "Page 8 of 20")
        anyio.run(_noticed, job)
        job.stage("process", "Summarising")
        server.start()
        job.flush(timeout=FLUSHED)
        job.complete()

    async def final() -> Snapshot:
        broker = open_broker(server.url)
        try:
            return await JobStore(broker).get("down-2")
        finally:
            await broker.aclose()

    snapshot = anyio.run(final)
    assert (snapshot.status, snapshot.stage, snapshot.progress) == (
        JobStatus.COMPLETED,
        "process",
        100,
    )


async def test_tracker_raise_on_outage_raises_yet_keeps_the_state(
    server: EmbeddedServer, reader: JobStore
) -> None:
    async with Tracker.connect(server.url, "down-3", pipeline="pdf", raise_on_outage=True) as job:
        await job.stage("parse")
        await job.flush()
        await anyio.to_thread.run_sync(server.stop)
        await job.advance(0.5)  # queued before anyone knows
        await _noticed(job)
        with pytest.raises(BrokerUnavailable, match="The broker is unreachable"):
            await job.stage("extract")
        await anyio.to_thread.run_sync(server.start)
        extract = await _snapshot(
            reader, "down-3", lambda s: s.stage == "extract", "the raising call's update kept"
        )
        # The reader can see that snapshot a moment before the tracker hears its own
        # answer; once its backlog is flushed it knows the broker is back.
        await job.flush()
        assert not job.outage
        await job.advance(0.2)  # no exception now
        await job.complete()

    assert extract.progress == 25


async def test_tracker_exit_during_an_outage_gives_up_after_close_timeout(
    server: EmbeddedServer,
) -> None:
    started = 0.0
    async with Tracker.connect(server.url, "down-4", close_timeout=0.5) as job:
        await job.start()
        await job.flush()
        await anyio.to_thread.run_sync(server.stop)
        await job.complete("lost")
        started = anyio.current_time()

    took = anyio.current_time() - started
    assert took < 3, f"leaving the block took {took:.1f} s"


async def test_a_subscription_that_stops_answering_is_replaced_and_resynced(
    server: EmbeddedServer,
) -> None:
    # A half-open connection (a dead peer that sent no RST, a NAT that forgot it) looks
    # like Redis not answering; CLIENT PAUSE makes Redis not answer for real.
    broker = RedisBroker(server.url, probe_interval=0.2)
    reconnected = anyio.Event()
    delivered: list[bytes] = []
    gaps: list[set[str | None]] = []

    async def on_gap(jobs: Collection[str | None]) -> None:
        gaps.append(set(jobs))
        reconnected.set()

    async def _delivered() -> list[bytes]:
        return delivered

    async def subscribed() -> bool:
        try:
            await broker.subscribe("quiet")
        except BrokerUnavailable:
            return False
        return True

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(broker.listen, lambda raw, _: delivered.append(raw), on_gap)
            await eventually(subscribed, bool, 5, "the feed is up")
            admin = redis.Redis.from_url(server.url)
            try:
                await admin.client_pause(1500)
            finally:
                await admin.aclose()

            async def feed_up() -> bool:
                return broker.feed_up

            # Given up (so /readyz says 503 and cached state is not trusted) ...
            await eventually(feed_up, lambda up: not up, 5, "the quiet feed given up")
            with anyio.fail_after(10):
                await reconnected.wait()  # ... then replaced
            assert broker.feed_up
            admin = redis.Redis.from_url(server.url)
            try:
                await admin.spublish(keys.job_channel("quiet"), b"after")
            finally:
                await admin.aclose()
            await eventually(lambda: _delivered(), bool, 5, "events flow again")
            tg.cancel_scope.cancel()
    finally:
        await broker.aclose()
    assert delivered == [b"after"]
    assert gaps == [{"quiet"}], "the stream of the job was told what it may have missed"
