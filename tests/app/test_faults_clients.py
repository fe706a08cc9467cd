"""Client faults against a real hub process: a subscriber that stops reading, and churn."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from pubsub.brokers.keys import job_channel
from pubsub.events import ENCODER, JobStatus, Snapshot, Update
from pubsub.store import JobStore
from tests.conditions import eventually
from tests.hub import ThreadHub, spawn_hub
from tests.probes import metric, rss_kib, settled
from tests.streams import RawStream

EVENTS = 10_000
CHURN = 2_000
CHURN_CONCURRENCY = 50
CHURN_WARM_UP = 1_000
# After the warm-up, 2,000 more visits may cost the allocator's noise (0.3-3.3 MiB seen),
# while 2,000 leaked streams (task, mailbox, socket) would cost tens of MiB.
MAX_CHURN_RSS_GROWTH_KIB = 10 * 1024
# A stuck client costs at most its conflated mailbox plus socket buffers; allow for the
# allocator's slack, but nothing near 10,000 queued snapshots.
MAX_RSS_GROWTH_KIB = 20 * 1024
SMALL_RECEIVE_BUFFER = 4096
FLOOD_BATCH = 10


async def _read_until_seq(stream: RawStream, seq: int, timeout: float) -> list[int]:
    """The seqs of every event read until `seq` arrives."""
    seen: list[int] = []
    async with asyncio.timeout(timeout):
        while not seen or seen[-1] < seq:
            event = await stream.next_event()
            assert event is not None, f"stream closed after seq {seen[-1:]}"
            if event.id is not None:
                seen.append(event.seq)
    return seen


async def _flood(redis_url: str, base: Snapshot, count: int) -> int:
    """Publish `count` ~7 KiB events after `base` on its job's channel; the last seq.

    The envelopes are exactly what the store's commit script publishes, pipelined so that
    10,000 of them take a fraction of a second (the store's two round trips per update
    would make the test about Redis latency, not about the hub's fan-out).
    """
    client = aioredis.Redis.from_url(redis_url)
    # Near the 8 KiB meta limit: 10,000 events are ~70 MiB, far more than the kernel
    # buffers of one socket (4 MiB), so a client that stops reading really blocks the hub.
    meta = {"padding": "x" * 7000}
    try:
        for first in range(0, count, FLOOD_BATCH):
            async with client.pipeline(transaction=False) as pipe:
                for i in range(first, min(first + FLOOD_BATCH, count)):
                    snapshot = msgspec.structs.replace(
                        base, seq=base.seq + 1 + i, message=f"step {i}", meta=meta
                    )
                    envelope = b'{"event":"progress","snapshot":%s}' % ENCODER.encode(snapshot)
                    pipe.spublish(job_channel(base.job_id), envelope)
                await pipe.execute()
    finally:
        await client.aclose()
    return base.seq + count


@pytest.mark.alone  # the reading subscriber's lag after a 70 MiB flood is bounded (1 s)
async def test_slow_client_gets_the_latest_state_without_growing_the_hub_or_delaying_others(
    redis_url: str, store: JobStore
) -> None:
    env = {"PROGRESS_BROKER_URL": redis_url, "PROGRESS_HEARTBEAT": "1"}
    with spawn_hub(env) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            base = await store.publish("slow", Update(status=JobStatus.RUNNING))
            # Warm up the hub's code paths and allocator before the baseline.
            async with await RawStream.open(hub.url, "/api/jobs/slow/events") as warm:
                assert (await warm.next_event()) is not None
                warmed = await _flood(redis_url, base, 500)
                await _read_until_seq(warm, warmed, timeout=10)
            base = msgspec.structs.replace(base, seq=warmed)
            fast = await RawStream.open(hub.url, "/api/jobs/slow/events")
            slow = await RawStream.open(
                hub.url, "/api/jobs/slow/events", receive_buffer=SMALL_RECEIVE_BUFFER
            )
            try:
                assert (await fast.next_event()) is not None
                assert (await slow.next_event()) is not None  # then it stops reading
                rss_before = rss_kib(hub.process.pid)
                final = warmed + EVENTS
                follower = asyncio.create_task(_read_until_seq(fast, final, timeout=30))
                await _flood(redis_url, base, EVENTS)
                published_at = time.monotonic()
                fast_seqs = await follower
                fast_lag = time.monotonic() - published_at
                rss_after = rss_kib(hub.process.pid)

                # The slow client, reading again, ends on the latest state and got far fewer
                # events than were published: its backlog was conflated, not queued.
                resumed_at = time.monotonic()
                slow_seqs = await _read_until_seq(slow, final, timeout=10)
                slow_catch_up = time.monotonic() - resumed_at
                conflated = await metric(http, "progress_frames_conflated_total")
            finally:
                await fast.aclose()
                await slow.aclose()

    assert fast_seqs == sorted(fast_seqs) and fast_seqs[-1] == final
    assert fast_lag < 1.0, f"the reading subscriber lagged {fast_lag:.2f}s behind"
    assert slow_seqs == sorted(slow_seqs) and slow_seqs[-1] == final
    assert len(slow_seqs) < EVENTS // 2
    assert conflated >= 1
    growth = rss_after - rss_before
    assert growth < MAX_RSS_GROWTH_KIB, f"hub RSS grew by {growth} KiB"
    print(
        f"\nslow client: {EVENTS} events; hub RSS {rss_before} KiB -> {rss_after} KiB "
        f"({growth:+d} KiB); reading subscriber got {len(fast_seqs)} events, the last "
        f"{fast_lag * 1000:.0f} ms after the last publish; the stopped one got "
        f"{len(slow_seqs)} events, the latest within {slow_catch_up:.3f}s of reading again"
    )


async def test_stuck_client_is_disconnected_after_the_send_timeout(
    redis_url: str, store: JobStore
) -> None:
    env = {"PROGRESS_BROKER_URL": redis_url, "PROGRESS_SEND_TIMEOUT": "1"}
    with spawn_hub(env) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            base = await store.publish("stuck", Update(status=JobStatus.RUNNING))
            stuck = await RawStream.open(
                hub.url, "/api/jobs/stuck/events", receive_buffer=SMALL_RECEIVE_BUFFER
            )
            try:
                assert (await stuck.next_event()) is not None
                await _flood(redis_url, base, EVENTS)
                flooded_at = time.monotonic()

                await eventually(
                    lambda: metric(http, "progress_slow_client_disconnects_total"),
                    lambda dropped: dropped >= 1,
                    10,
                    "the slow client was dropped",
                    interval=0.05,
                )
                dropped_after = time.monotonic() - flooded_at
                assert await metric(http, "progress_streams_open") == 0
                # Reading again, the client finds the stream ended.
                while (block := await stuck.next_block(timeout=10)) is not None:
                    assert block.event in (None, "snapshot", "progress")
            finally:
                await stuck.aclose()
    print(f"\nstuck client: dropped {dropped_after:.2f}s after the flood (send timeout 1 s)")


async def test_client_churn_leaves_no_subscription_behind(redis_url: str, store: JobStore) -> None:
    jobs = [f"churn-{i}" for i in range(4)]
    for job_id in jobs:
        await store.publish(job_id, Update(status=JobStatus.RUNNING))
    env = {"PROGRESS_BROKER_URL": redis_url}
    with spawn_hub(env) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            gate = asyncio.Semaphore(CHURN_CONCURRENCY)

            async def visit(i: int) -> None:
                async with gate:
                    path = f"/api/jobs/{jobs[i % len(jobs)]}/events"
                    if i % 5 == 0:
                        path = "/api/events"
                    async with await RawStream.open(hub.url, path) as stream:
                        assert stream.status == 200
                        if i % 2:  # half of them leave before reading a single event
                            event = await stream.next_event()
                            assert event is not None and event.event == "snapshot"

            # A first round warms the allocator up, so that the baseline is a steady state
            # and the growth over the full run measures what churn leaves behind.
            await asyncio.gather(*(visit(i) for i in range(CHURN_WARM_UP)))
            rss_before = rss_kib(hub.process.pid)
            started = time.monotonic()
            await asyncio.gather(*(visit(i) for i in range(CHURN)))
            churn_seconds = time.monotonic() - started

            await eventually(lambda: settled(http), bool, 5, "streams closed", interval=0.05)
            rss_after = rss_kib(hub.process.pid)
            raw = redis.Redis.from_url(redis_url)
            try:
                channels = raw.pubsub_shardchannels("progress:*")
                counts = dict(raw.pubsub_shardnumsub(*(job_channel(job) for job in jobs)))
                patterns = raw.pubsub_numpat()
            finally:
                raw.close()
            # The hub still serves streams after the churn.
            await store.publish(jobs[0], Update(progress=50))
            async with await RawStream.open(hub.url, f"/api/jobs/{jobs[0]}/events") as stream:
                event = await stream.next_event()
                assert event is not None and json.loads(event.data or "")["progress"] == 50

    assert channels == []
    assert set(counts.values()) == {0}
    assert patterns == 0
    growth = rss_after - rss_before
    assert growth < MAX_CHURN_RSS_GROWTH_KIB, f"hub RSS grew by {growth} KiB"
    print(
        f"\nchurn: {CHURN} connects/disconnects in {churn_seconds:.2f}s; 0 streams, "
        f"0 subscriptions, 0 Redis channels after; hub RSS {rss_before} -> {rss_after} KiB"
    )


async def test_writes_held_up_by_a_stopped_client_finish_in_order_when_it_reads_again(
    hub: ThreadHub, redis_url: str, store: JobStore
) -> None:
    # In this process (the hub runs in a thread), so that the path it exercises is seen
    # here: the fan-out starts a write that the client's flow control holds up, the
    # stream's own task finishes it later, and frames arriving meanwhile queue behind it.
    base = await store.publish("held", Update(status=JobStatus.RUNNING))
    held = await RawStream.open(
        hub.url, "/api/jobs/held/events", receive_buffer=SMALL_RECEIVE_BUFFER
    )
    async with held:
        assert (await held.next_event()) is not None  # then it stops reading
        final = await _flood(redis_url, base, 1_000)  # ~7 MiB: more than socket buffers
        seqs = await _read_until_seq(held, final, timeout=20)
    assert seqs == sorted(set(seqs)), "an event came twice or out of order"
    assert seqs[-1] == final
