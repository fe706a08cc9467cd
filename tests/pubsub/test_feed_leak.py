"""The feed keeps nothing of a job after its last unsubscribe, on one server and a cluster."""

from __future__ import annotations

import time

import anyio
import pytest

from pubsub.brokers.redis import RedisBroker
from tests.conditions import eventually

JOBS = 20_000
WAVE = 4_000  # concurrent subscriptions: a burst of stream connects


@pytest.fixture(params=["redis", "cluster"])
def feed_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def _noop_gap(jobs: object) -> None:
    return None


async def test_feed_subscribe_unsubscribe_20000_jobs_leaves_every_structure_as_before(
    feed_url: str,
) -> None:
    broker = RedisBroker(feed_url)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(broker.listen, lambda raw, every_job: None, _noop_gap)
            await eventually(lambda: _up(broker), bool, 10, "the feed is up")
            await broker.subscribe("warm-up")  # redis-py connected, nothing else held
            await broker.unsubscribe("warm-up")
            before = await eventually(
                lambda: _footprint(broker), lambda f: not f["leaving"], 10, "settled"
            )
            started = time.monotonic()
            for wave in range(0, JOBS, WAVE):
                ids = [f"leak-{n}" for n in range(wave, wave + WAVE)]
                async with anyio.create_task_group() as subscribers:
                    for job_id in ids:
                        subscribers.start_soon(broker.subscribe, job_id)
                during = broker.feed.footprint()
                async with anyio.create_task_group() as leavers:
                    for job_id in ids:
                        leavers.start_soon(broker.unsubscribe, job_id)
            took = time.monotonic() - started
            after = await eventually(
                lambda: _footprint(broker), lambda f: f == before, 10, "every structure back"
            )
            assert broker.feed_up
            tg.cancel_scope.cancel()
    finally:
        await broker.aclose()
    assert during["pubsub.shard_channels"] >= WAVE, "the footprint sees redis-py's sets"
    assert after == before
    print(f"\n{JOBS} subscribe+unsubscribe in {took:.1f} s; footprint {after}")


async def _up(broker: RedisBroker) -> bool:
    return broker.feed_up


async def _footprint(broker: RedisBroker) -> dict[str, int]:
    return broker.feed.footprint()
