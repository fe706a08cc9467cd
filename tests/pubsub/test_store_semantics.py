"""Store rules the publisher library relies on, on each backend: merges and the job index."""

from __future__ import annotations

import redis

from pubsub.broker import open_broker
from pubsub.events import JobStatus, Update
from pubsub.store import READ_BATCH, JobStore
from tests.conditions import eventually


async def test_store_recovery_from_retrying_clears_the_retry_error_and_message(
    job_store: JobStore,
) -> None:
    await job_store.create("retry-1", pipeline="summary")
    await job_store.publish("retry-1", Update(stage="transcript"))
    retrying = await job_store.publish(
        "retry-1",
        Update(status=JobStatus.RETRYING, attempt=2, max_attempts=3, error="Upstream timed out"),
    )
    running = await job_store.publish("retry-1", Update(stage="connecting"))
    completed = await job_store.publish("retry-1", Update(status=JobStatus.COMPLETED))

    assert (retrying.message, retrying.error) == ("Retrying... (2/3)", "Upstream timed out")
    assert (running.status, running.progress) == (JobStatus.RUNNING, 5)
    assert (running.message, running.error) == ("Connecting", None)
    assert completed.error is None, "a completed job does not carry an error"


async def test_store_failure_after_retrying_keeps_the_retry_error(job_store: JobStore) -> None:
    await job_store.create("retry-2")
    await job_store.publish(
        "retry-2",
        Update(status=JobStatus.RETRYING, attempt=3, max_attempts=3, error="Out of quota"),
    )
    failed = await job_store.publish("retry-2", Update(status=JobStatus.FAILED))

    assert (failed.status, failed.error) == (JobStatus.FAILED, "Out of quota")


async def test_store_heartbeat_while_retrying_keeps_the_pipeline_message(
    job_store: JobStore,
) -> None:
    await job_store.create("retry-3")
    await job_store.publish("retry-3", Update(status=JobStatus.RETRYING, attempt=2, max_attempts=5))
    await job_store.publish("retry-3", Update(message="Waiting 30 s before retrying"))
    beat = await job_store.publish("retry-3", Update(heartbeat=True))

    assert (beat.status, beat.message) == (JobStatus.RETRYING, "Waiting 30 s before retrying")


async def test_store_prune_index_drops_expired_jobs_only(broker_url: str) -> None:
    broker = open_broker(broker_url)
    store = JobStore(broker, retention=1)
    try:
        for job_id in ("old-1", "old-2", "live-1"):
            await store.create(job_id)
        for job_id in ("old-1", "old-2"):
            await store.publish(job_id, Update(status=JobStatus.COMPLETED))

        pruned: list[int] = []

        async def prune() -> int:
            pruned.append(await store.prune_index())
            return sum(pruned)

        await eventually(prune, lambda total: total == 2, 5, "expired jobs pruned")
        assert await broker.recent_jobs(0, 10) == ["live-1"]
    finally:
        await broker.aclose()


async def test_store_mark_stalled_flags_every_silent_job_not_only_the_newest(
    broker_url: str,
) -> None:
    now = [1000.0]
    broker = open_broker(broker_url)
    store = JobStore(broker, clock=lambda: now[0])
    jobs = [f"quiet-{i}" for i in range(READ_BATCH * 2 + 50)]
    try:
        for job_id in jobs:
            await store.create(job_id)
        await store.publish("done", Update(status=JobStatus.COMPLETED))
        now[0] += 120
        flagged = await store.mark_stalled(60)
        assert sorted(flagged) == sorted(jobs)  # the finished job is not stalled
        assert (await store.get(jobs[0])).stalled  # the oldest one too
        assert await store.mark_stalled(60) == []  # flagged once
    finally:
        await broker.aclose()


async def test_store_list_jobs_reads_only_the_records_it_returns(redis_url: str) -> None:
    """An unfiltered list of N reads N records (the dashboard's opening lists 500), not a
    page ahead: counted by the server's own command statistics."""
    broker = open_broker(redis_url)
    store = JobStore(broker)
    server = redis.Redis.from_url(redis_url)
    try:
        for i in range(160):
            await store.create(f"listed-{i}")
        server.config_resetstat()
        listed = await store.list_jobs(limit=120)
        assert [s.job_id for s in listed] == [f"listed-{i}" for i in range(159, 39, -1)]
        reads = server.info("commandstats").get("cmdstat_hget", {}).get("calls", 0)
        assert reads == 120, f"{reads} HGETs to list 120 jobs"
    finally:
        server.close()
        await broker.aclose()


async def test_store_mark_stalled_reads_only_jobs_that_can_stall(redis_url: str) -> None:
    """A sweep's reads follow the quiet live jobs, not every job kept (finished ones stay
    for their retention): counted by the server's own command statistics."""
    now = [1000.0]
    broker = open_broker(redis_url)
    store = JobStore(broker, clock=lambda: now[0])
    server = redis.Redis.from_url(redis_url)
    try:
        for i in range(READ_BATCH + 20):
            await store.create(f"done-{i}")
            await store.publish(f"done-{i}", Update(status=JobStatus.COMPLETED))
        await store.create("quiet")
        await store.publish("recent", Update(status=JobStatus.RUNNING))
        now[0] += 50
        await store.publish("recent", Update(progress=10))
        now[0] += 20
        server.config_resetstat()
        assert await store.mark_stalled(60) == ["quiet"]
        # One HGET reads the quiet job's record; the flagging commit's script makes the
        # other (its seq check). Reading the index as a whole would read all 521.
        reads = server.info("commandstats").get("cmdstat_hget", {}).get("calls", 0)
        assert reads == 2, f"{reads} HGETs to flag one quiet job"
        assert await store.mark_stalled(60) == []  # flagged once, and out of the index
        assert not (await store.get("recent")).stalled
    finally:
        server.close()
        await broker.aclose()
