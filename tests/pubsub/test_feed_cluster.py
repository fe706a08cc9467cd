"""The feed on a real cluster: a slot that moves is followed, and told as a gap."""

from __future__ import annotations

from collections.abc import Collection

import anyio
from redis.crc import key_slot

from pubsub.brokers import keys
from pubsub.brokers.redis import RedisBroker
from pubsub.events import Update
from pubsub.store import JobStore
from tests.cluster import RedisCluster
from tests.conditions import eventually


async def test_feed_follows_a_moved_slot_and_reports_its_jobs_as_a_gap(
    breakable_cluster: RedisCluster,
) -> None:
    cluster = breakable_cluster
    moving, staying = (
        "moving-1",
        next(
            f"staying-{i}"
            for i in range(1000)
            if keys.partition(f"staying-{i}") != keys.partition("moving-1")
        ),
    )
    slot = key_slot(keys.job_channel(moving).encode())
    target = next(n for n in cluster.master_nodes() if n is not cluster.master_of_slot(slot))
    broker = RedisBroker(cluster.url)
    store = JobStore(RedisBroker(cluster.url))
    delivered: list[str] = []
    gaps: list[set[str | None]] = []

    def on_message(raw: bytes, every_job: bool) -> None:
        delivered.append(raw.decode())

    async def on_gap(jobs: Collection[str | None]) -> None:
        gaps.append(set(jobs))

    async def up() -> bool:
        return broker.feed_up

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(broker.listen, on_message, on_gap)
            await eventually(up, bool, 10, "the feed is up")
            await store.publish(moving, Update(progress=1))
            for job_id in (moving, staying):
                await broker.subscribe(job_id)
            epoch = broker.feed_epoch
            await anyio.to_thread.run_sync(cluster.move_slot, slot, target)

            async def told() -> list[set[str | None]]:
                return gaps

            await eventually(told, bool, 10, "the moved job reported as a gap")
            assert broker.feed_epoch > epoch
            await eventually(up, bool, 10, "the feed is whole again")
            await store.publish(moving, Update(progress=50, message="after the move"))
            await store.publish(staying, Update(progress=5, message="never moved"))

            async def both() -> list[str]:
                return delivered

            await eventually(
                both,
                lambda got: sum("after the move" in d or "never moved" in d for d in got) == 2,
                10,
                "events of both jobs delivered after the move",
            )
            for job_id in (moving, staying):
                await broker.unsubscribe(job_id)

            async def footprint() -> dict[str, int]:
                return broker.feed.footprint()

            # Nothing of either job is kept: neither by us (the node the slot left
            # was told `sunsubscribe`) nor by any master.
            left = await eventually(footprint, lambda f: not any(f.values()), 5, "nothing kept")
            held = [n.command("PUBSUB", "SHARDCHANNELS") for n in cluster.master_nodes()]
            tg.cancel_scope.cancel()
    finally:
        await broker.aclose()
        await store.broker.aclose()
    assert moving in set().union(*gaps)
    assert not any(left.values()), left
    assert held == [[], [], []]
    assert broker.feed_resubscriptions >= 1


async def test_any_node_url_or_a_forced_cluster_url_reaches_every_master(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    last = redis_cluster.master_nodes()[-1]
    urls = [cluster_url, f"redis+cluster://127.0.0.1:{last.port}"]
    stores = [JobStore(RedisBroker(url)) for url in urls]
    jobs = [f"anywhere-{i}" for i in range(12)]
    try:
        for i, job_id in enumerate(jobs):
            await stores[i % 2].publish(job_id, Update(progress=i))
        for store in stores:
            listed = await store.list_jobs(limit=50)
            assert sorted(s.job_id for s in listed) == sorted(jobs)
            assert [s.progress for s in listed] == sorted(
                (s.progress for s in listed), reverse=True
            )
    finally:
        for store in stores:
            await store.broker.aclose()
    masters = {redis_cluster.master_of_slot(key_slot(keys.job_key(j).encode())).port for j in jobs}
    assert len(masters) == 3, "the jobs spread over every master"
