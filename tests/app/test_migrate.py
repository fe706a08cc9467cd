"""`progress-hub migrate`: jobs written in the layout before partitions, read by today's hub.

The old layout is written here with raw Redis commands, exactly as its commit script left
it (`progress:{<id>}:job|history|result|milestones`, each with a TTL, and the one index
`progress:jobs`), so the test needs nothing of the old code.
"""

from __future__ import annotations

import time
from typing import cast

import httpx
import pytest
import redis

from progress_hub import cli
from pubsub.brokers import keys
from pubsub.events import ENCODER, JobStatus, Snapshot
from pubsub.merge import TEXT_RESULT, JobRecord
from tests.conftest import HubFactory
from tests.sse import data, open_stream

TTL = 5_000
CREATED = time.time() - 600


def _snapshot(
    job_id: str, seq: int, status: JobStatus, progress: float, created: float
) -> Snapshot:
    return Snapshot(
        job_id=job_id,
        seq=seq,
        status=status,
        progress=progress,
        message=f"step {seq}",
        has_result=status is JobStatus.COMPLETED,
        created_at=created,
        updated_at=created + seq,
    )


def write_legacy_job(
    client: redis.Redis,
    job_id: str,
    steps: list[tuple[JobStatus, float]],
    *,
    created: float,
    result: str | None = None,
    indexed: bool = True,
) -> None:
    """A job as the old commit script stored it: seq, record, history, result, TTLs."""
    job, history, result_key, milestones = keys.legacy_job_keys(job_id)
    snapshots = [
        _snapshot(job_id, seq, status, progress, created)
        for seq, (status, progress) in enumerate(steps, start=1)
    ]
    record = JobRecord(snapshot=snapshots[-1])
    client.hset(job, mapping={"seq": len(steps), "record": ENCODER.encode(record)})
    client.rpush(history, *(ENCODER.encode(snapshot) for snapshot in snapshots))
    client.hset(milestones, mapping={"calls:gate": 2, "last:gate": "25.0"})
    if result is not None:
        client.set(result_key, TEXT_RESULT + result.encode())
    for key in (job, history, result_key, milestones):
        client.expire(key, TTL)
    if indexed:
        client.zadd(keys.LEGACY_INDEX_KEY, {job_id: created})


def migrate(url: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `progress-hub migrate --broker-url url`; its one line of output."""
    assert cli.main(["migrate", "--broker-url", url]) == 0
    out: str = capsys.readouterr().out
    return out.strip()


@pytest.fixture
def legacy(redis_url: str) -> redis.Redis:
    """A client of the private Redis holding three jobs in the old layout."""
    client = redis.Redis.from_url(redis_url)
    running = [(JobStatus.RUNNING, 10.0), (JobStatus.RUNNING, 20.0), (JobStatus.RUNNING, 30.0)]
    write_legacy_job(client, "old-running", running, created=CREATED)
    done = [(JobStatus.RUNNING, 50.0), (JobStatus.COMPLETED, 100.0)]
    write_legacy_job(client, "old-done", done, created=CREATED + 1, result="all pages")
    # Written by the old commit, whose separate index write never happened.
    write_legacy_job(client, "old-unindexed", running[:1], created=CREATED + 2, indexed=False)
    # Listed, but its keys expired before anyone forgot it.
    client.zadd(keys.LEGACY_INDEX_KEY, {"old-expired": CREATED - 1})
    return client


def test_migrate_moves_every_key_keeping_values_and_ttls_and_is_safe_to_rerun(
    redis_url: str, legacy: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {key: legacy.dump(key) for key in keys.legacy_job_keys("old-done")}
    first = migrate(redis_url, capsys)
    assert "3 jobs moved" in first and "1 expired index entries dropped" in first, first
    for old_key, new_key in zip(
        keys.legacy_job_keys("old-done"), keys.job_keys("old-done"), strict=True
    ):
        assert legacy.exists(old_key) == 0
        assert legacy.dump(new_key) == before[old_key], new_key
        assert 0 < legacy.ttl(new_key) <= TTL, new_key
    assert legacy.exists(keys.LEGACY_INDEX_KEY) == 0
    created = {"old-running": CREATED, "old-done": CREATED + 1, "old-unindexed": CREATED + 2}
    for job_id, score in created.items():
        assert legacy.zscore(keys.index_key(keys.partition(job_id)), job_id) == score, job_id
    assert sum(legacy.zcard(keys.index_key(part)) for part in range(keys.PARTITIONS)) == 3
    # Run again: nothing left to do. An old worker still writing: its job moves next time.
    assert "0 jobs moved" in migrate(redis_url, capsys)
    write_legacy_job(legacy, "old-late", [(JobStatus.QUEUED, 0.0)], created=CREATED + 3)
    assert "1 jobs moved" in migrate(redis_url, capsys)
    assert legacy.zscore(keys.index_key(keys.partition("old-late")), "old-late") == CREATED + 3


def test_migrate_lists_live_jobs_for_the_stall_sweep(
    redis_url: str, legacy: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    line = migrate(redis_url, capsys)
    # Running jobs (old-running, old-unindexed) are listed, the completed one is not.
    assert "2 live jobs listed" in line, line
    live = {
        _member(member)
        for part in range(keys.PARTITIONS)
        for member in cast(list[bytes], legacy.zrange(keys.live_key(part), 0, -1))
    }
    assert live == {"old-running", "old-unindexed"}, live
    assert "2 live jobs listed" in migrate(redis_url, capsys), "safe to run again"


def _member(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


def test_migrate_leaves_a_job_found_in_both_layouts_as_it_is(
    redis_url: str, legacy: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate(redis_url, capsys)
    write_legacy_job(legacy, "old-running", [(JobStatus.QUEUED, 0.0)], created=CREATED)
    line = migrate(redis_url, capsys)
    assert "1 jobs exist in both layouts" in line and "old-running" in line, line
    assert legacy.hget(keys.job_key("old-running"), "seq") == b"3"


def test_migrate_refuses_a_cluster(cluster_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["migrate", "--broker-url", cluster_url]) == 2
    assert "single Redis" in capsys.readouterr().err


async def test_migrated_jobs_read_through_a_hub_with_replay_result_and_milestones(
    redis_url: str,
    legacy: redis.Redis,
    start_hub: HubFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    migrate(redis_url, capsys)
    hub = start_hub()
    async with httpx.AsyncClient(base_url=hub.url, timeout=5) as client:
        listed = (await client.get("/api/jobs")).json()["jobs"]
        assert [job["job_id"] for job in listed] == ["old-unindexed", "old-done", "old-running"]
        snapshot = await client.get("/api/jobs/old-running")
        assert snapshot.headers["etag"] == '"3"'
        assert snapshot.json()["progress"] == 30
        result = await client.get("/api/jobs/old-done/result")
        assert (result.status_code, result.text) == (200, "all pages")
        # The gate's cursor came along: 25 was reached before, 50 is not yet.
        gate = await client.get(
            "/api/jobs/old-running/milestone", params={"client": "gate", "milestones": "25,50"}
        )
        assert gate.status_code == 204
        headers = {"Last-Event-ID": "1"}
        async with open_stream(client, "/api/jobs/old-running/events", headers) as stream:
            replayed = await stream.take(2)
            published = await client.post("/api/jobs/old-running/events", json={"progress": 60})
            live = await stream.next()
    assert [(event.event, event.id) for event in replayed] == [("progress", "2"), ("progress", "3")]
    assert [data(event)["progress"] for event in replayed] == [20, 30]
    assert published.json()["seq"] == 4
    assert (live.event, live.id, data(live)["progress"]) == ("progress", "4", 60)
