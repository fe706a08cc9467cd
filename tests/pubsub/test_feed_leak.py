"""The feed keeps nothing of a job after its last unsubscribe, on one server and a cluster."""

from __future__ import annotations

import time

import anyio
import pytest
import redis

from pubsub.brokers.redis import RedisBroker
from tests.conditions import eventually

JOBS = 20_000
WAVE = 4_000  # concurrent subscriptions: a burst of stream connects


@pytest.fixture(params=["redis", "cluster"])
def feed_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def masters(request: pytest.FixtureRequest, feed_url: str) -> list[str]:
    """The URL of every server the feed subscribes on."""
    if request.node.callspec.params["feed_url"] == "redis":
        return [feed_url]
    return [node.url for node in request.getfixturevalue("redis_cluster").master_nodes()]


def _server_channels(masters: list[str]) -> int:
    """Sharded channels the servers hold subscribers for (`PUBSUB SHARDCHANNELS`)."""
    held = 0
    for url in masters:
        client = redis.Redis.from_url(url)
        try:
            held += len(client.pubsub_shardchannels())
        finally:
            client.close()
    return held


async def _noop_gap(jobs: object) -> None:
    return None


async def test_feed_subscribe_unsubscribe_20000_jobs_leaves_every_structure_as_before(
    feed_url: str, masters: list[str]
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
                held = _server_channels(masters)
                async with anyio.create_task_group() as leavers:
                    for job_id in ids:
                        leavers.start_soon(broker.unsubscribe, job_id)
            took = time.monotonic() - started
            after = await eventually(
                lambda: _footprint(broker), lambda f: f == before, 10, "every structure back"
            )
            assert broker.feed_up
            left = _server_channels(masters)
            tg.cancel_scope.cancel()
    finally:
        await broker.aclose()
    assert during["channels"] >= WAVE, "the footprint sees the subscribed channels"
    assert held >= WAVE, "the servers held them too"
    assert after == before
    assert left == 0, "and the servers forgot them"
    print(f"\n{JOBS} subscribe+unsubscribe in {took:.1f} s; footprint {after}")


async def _up(broker: RedisBroker) -> bool:
    return broker.feed_up


async def _footprint(broker: RedisBroker) -> dict[str, int]:
    return broker.feed.footprint()
