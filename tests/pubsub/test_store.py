"""The job store on a private Redis: atomic commits under concurrency, merge rules."""

from __future__ import annotations

import asyncio

import anyio
import msgspec
import pytest
import redis.asyncio

from pubsub.broker import open_broker
from pubsub.errors import InvalidUpdate, JobTerminal, PayloadTooLarge
from pubsub.events import ChunkRef, ChunksPatch, JobStatus, Update
from pubsub.store import JobStore
from tests.conftest import store_on


async def test_store_concurrent_publishers_get_gapless_unique_seqs(store: JobStore) -> None:
    await store.create("busy")
    seqs: list[int] = []

    async def publisher(n: int) -> None:
        snapshot = await store.publish("busy", Update(message=f"update {n}"))
        seqs.append(snapshot.seq)

    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(publisher, n)

    assert sorted(seqs) == list(range(2, 52))
    history = [msgspec.json.decode(raw) for raw in await store.history("busy")]
    assert [event["seq"] for event in history] == list(range(1, 52))
    assert sorted(event["message"] for event in history[1:]) == sorted(
        f"update {n}" for n in range(50)
    )
    final = await store.get("busy")
    assert final.seq == 51
    assert final.message == history[-1]["message"]


async def test_store_concurrent_chunk_increments_stay_exact(store: JobStore) -> None:
    await store.create("ocr-1", pipeline="ocr")
    await store.publish("ocr-1", Update(stage="chunks", chunks=ChunksPatch(total=40)))

    async def worker(first: int) -> None:
        for index in range(first, 40, 4):
            await store.publish("ocr-1", Update(chunks=ChunksPatch(add_completed=1)))

    async with anyio.create_task_group() as tg:
        for first in range(4):
            tg.start_soon(worker, first)

    snapshot = await store.get("ocr-1")
    assert snapshot.chunks is not None
    assert (snapshot.chunks.completed, snapshot.chunks.total) == (40, 40)
    assert snapshot.message == "Processing chunk 40/40"
    assert snapshot.progress == 90  # the end of the chunks stage (5-90)


@pytest.fixture(params=["server", "cluster"])
def commit_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """The private Redis, then the private cluster (URL, is a cluster): a commit is sent
    alone (one command) or in a batch (a pipeline), the same way on both."""
    cluster = request.param == "cluster"
    url: str = request.getfixturevalue("cluster_url" if cluster else "redis_url")
    return url, cluster


async def _forget_scripts(url: str, cluster: bool) -> None:
    """SCRIPT FLUSH everywhere, as a restarted server would have forgotten them."""
    if cluster:
        nodes = redis.asyncio.RedisCluster.from_url(url)
        try:
            await nodes.execute_command("SCRIPT FLUSH", target_nodes=nodes.ALL_NODES)
        finally:
            await nodes.aclose()
        return
    server = redis.asyncio.Redis.from_url(url)
    try:
        await server.script_flush()
    finally:
        await server.aclose()


@pytest.mark.parametrize("forgotten", [False, True], ids=["loaded", "scripts-flushed"])
async def test_store_commits_alone_and_in_batches(
    commit_target: tuple[str, bool], forgotten: bool
) -> None:
    commit_url, cluster = commit_target
    jobs = [f"batch-{n}" for n in range(12)]
    async with store_on(commit_url) as store, store_on(commit_url) as other:
        for job_id in jobs:
            await store.create(job_id)
        if forgotten:
            await _forget_scripts(commit_url, cluster)
        # Alone: one request at a time, each commit the only one of its tick.
        for n in range(3):
            assert (await store.publish(jobs[0], Update(message=f"alone {n}"))).seq == n + 2
        # In a batch: every job's commit made in the same tick (one pipeline per node).
        if forgotten:
            await _forget_scripts(commit_url, cluster)
        batch = await asyncio.gather(
            *(store.publish(job_id, Update(message="together")) for job_id in jobs)
        )
        assert [snapshot.seq for snapshot in batch] == [5, *([2] * 11)]
        # A stale guess (another store wrote since), alone and in a batch: one retry each.
        await other.publish(jobs[0], Update(progress=10))
        assert (await store.publish(jobs[0], Update(message="after"))).seq == 7
        for job_id in jobs[1:]:
            await other.publish(job_id, Update(progress=10))
        stale = await asyncio.gather(
            *(store.publish(job_id, Update(message="stale")) for job_id in jobs[1:])
        )
        assert [snapshot.seq for snapshot in stale] == [4] * 11
        for job_id in jobs:
            history = [msgspec.json.decode(raw) for raw in await store.history(job_id)]
            assert [event["seq"] for event in history] == list(range(1, len(history) + 1))
            assert history[-1]["progress"] == 10.0


@pytest.mark.parametrize(
    ("updates", "progress", "label"),
    [
        ([Update(stage="extract")], 25, "Extracting text"),
        ([Update(stage="extract", stage_progress=0.5)], 37.5, "Extracting text"),
        ([Update(stage="process"), Update(stage_progress=1.0)], 75, "Processing content"),
        ([Update(progress=60), Update(progress=40)], 60, None),  # never goes back
        ([Update(stage="finalize"), Update(status=JobStatus.COMPLETED)], 100, "Finalizing"),
    ],
)
async def test_store_stage_updates_map_onto_pipeline_ranges(
    store: JobStore, updates: list[Update], progress: float, label: str | None
) -> None:
    await store.create("doc", pipeline="pdf")
    for update in updates:
        snapshot = await store.publish("doc", update)
    assert (snapshot.progress, snapshot.stage_label) == (progress, label)


async def test_store_progress_may_restart_a_stage_after_retrying(store: JobStore) -> None:
    await store.create("flaky", pipeline="summary")
    await store.publish("flaky", Update(stage="generating", stage_progress=0.5))
    retrying = await store.publish(
        "flaky", Update(status=JobStatus.RETRYING, attempt=2, max_attempts=3)
    )
    assert (retrying.progress, retrying.message) == (90, "Retrying... (2/3)")
    restarted = await store.publish("flaky", Update(stage="generating"))
    assert (restarted.status, restarted.progress) == (JobStatus.RUNNING, 80)


@pytest.mark.parametrize(
    ("update", "error"),
    [
        (Update(stage="nope"), InvalidUpdate),
        (Update(chunks=ChunksPatch(total=2, completed=3)), InvalidUpdate),
        (Update(chunks=ChunksPatch(total=2, current=ChunkRef(index=2))), InvalidUpdate),
        (Update(meta={"blob": "x" * 9000}), PayloadTooLarge),
        (Update(result="x" * (1024 * 1024 + 1)), PayloadTooLarge),
    ],
)
async def test_store_rejected_update_changes_nothing(
    store: JobStore, update: Update, error: type[Exception]
) -> None:
    before = await store.create("strict", pipeline="pdf")
    with pytest.raises(error):
        await store.publish("strict", update)
    assert await store.get("strict") == before


async def test_store_rejects_invalid_job_ids(store: JobStore) -> None:
    for job_id in ("", "../x", "x" * 129, "-leading", "sp ace", "new\nline"):
        with pytest.raises(InvalidUpdate):
            await store.publish(job_id, Update(progress=1))


async def test_store_publish_after_another_writer_merges_onto_the_stored_record(
    redis_url: str,
) -> None:
    """Two stores (two processes) writing one job: neither's remembered record goes stale."""
    first, second = JobStore(open_broker(redis_url)), JobStore(open_broker(redis_url))
    try:
        await first.publish("shared", Update(chunks=ChunksPatch(total=10, add_completed=1)))
        await second.publish("shared", Update(chunks=ChunksPatch(add_completed=1)))
        latest = await first.publish("shared", Update(chunks=ChunksPatch(add_failed=1)))
        assert latest.seq == 3
        assert latest.chunks is not None
        assert (latest.chunks.completed, latest.chunks.failed) == (2, 1)
        await second.delete("shared")
        reborn = await first.publish("shared", Update(progress=5))
        assert (reborn.seq, reborn.chunks) == (1, None)
        await second.publish("shared", Update(status=JobStatus.CANCELLED))
        with pytest.raises(JobTerminal):
            await first.publish("shared", Update(progress=6))
    finally:
        await first.broker.aclose()
        await second.broker.aclose()


async def test_store_publish_survives_redis_forgetting_its_scripts(
    store: JobStore, redis_url: str
) -> None:
    """A restarted Redis has no scripts cached: commits load them again, nothing is lost."""
    await store.publish("scripted", Update(progress=10))
    admin = redis.asyncio.Redis.from_url(redis_url)
    try:
        await admin.script_flush()
    finally:
        await admin.aclose()
    async with anyio.create_task_group() as tg:  # several commits in one pipelined batch
        for percent in (20, 30, 40):
            tg.start_soon(store.publish, "scripted", Update(progress=percent))
    snapshot = await store.get("scripted")
    assert (snapshot.seq, snapshot.progress) == (4, 40)


async def test_store_first_update_of_a_job_it_created_costs_no_read(
    store: JobStore, redis_url: str
) -> None:
    admin = redis.asyncio.Redis.from_url(redis_url)

    async def commands_of(update: Update) -> int:
        before: int = (await admin.info("stats"))["total_commands_processed"]
        await store.publish("counted", update)
        after: int = (await admin.info("stats"))["total_commands_processed"]
        return after - before

    try:
        await store.create("counted")
        first = await commands_of(Update(progress=10))
        second = await commands_of(Update(progress=20))  # the store's own record: no read
        assert first == second, f"first update {first} commands, later ones {second}"
        assert (await store.get("counted")).seq == 3
    finally:
        await admin.aclose()
