"""Invalid calls raise `ValueError` at the call site, in every kind of tracker; nothing changes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pubsub.errors import JobNotFound
from pubsub.publisher import Tracker
from pubsub.store import JobStore
from pubsub.sync import SyncTracker

BIG_RESULT = "x" * (1024 * 1024 + 1)
BIG_META = {"blob": "x" * 9000}
TOO_DEEP = "nests more than 32 levels deep"


def nested(depth: int) -> Any:
    """Arrays nested `depth` deep, built without recursion (`[[[]]]` is 3)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


Call = tuple[str, tuple[Any, ...]]
BadCall = tuple[str, tuple[Any, ...], dict[str, Any]]

# (pipeline, calls made first, the bad call, what the error says)
INVALID_CALLS: list[tuple[str, list[Call], BadCall, str]] = [
    ("pdf", [], ("stage", ("uploading",), {}), "unknown stage 'uploading' for pipeline 'pdf'"),
    ("pdf", [], ("merge", (), {}), "unknown stage 'merge' for pipeline 'pdf'"),
    ("pdf", [], ("stage", ("extract",), {"expected_seconds": 0}), "expected_seconds must be"),
    ("pdf", [], ("set", (130,), {}), "percent must be within 0-100, got 130"),
    ("pdf", [], ("set", (-1,), {}), "percent must be within 0-100, got -1"),
    ("pdf", [], ("advance", (1.5,), {}), "fraction must be within 0-1, got 1.5"),
    ("pdf", [], ("advance", (float("nan"),), {}), "fraction must be within 0-1, got nan"),
    ("ocr", [], ("chunks", (0,), {}), "chunk total must be a whole number of at least 1"),
    (
        "ocr",
        [("chunks", (17,))],
        ("chunk_done", (17,), {}),
        "chunk index 17 is out of range for 17",
    ),
    ("ocr", [("chunks", (17,))], ("chunk_done", (-1,), {}), "chunk index must be a whole number"),
    ("ocr", [("chunks", (17,))], ("chunk_failed", (2, 50, 25, "x"), {}), "page range 50-25"),
    ("ocr", [], ("retrying", (4, 3), {}), "attempt must be within 1-max_attempts"),
    ("pdf", [], ("complete", (BIG_RESULT,), {}), "result is over the limit of 1048576 bytes"),
    ("pdf", [], ("meta", (), BIG_META), "meta is 9011 bytes encoded; the limit is 8192"),
    # docs/api.md §2: meta and result nest 32 levels at most; meta's own object is one.
    *(
        ("pdf", [], ("meta", (), {"x": nested(depth - 1)}), TOO_DEEP)
        for depth in (33, 1000, 30_000)
    ),
    *(("pdf", [], ("complete", (nested(depth),), {}), TOO_DEEP) for depth in (33, 1000, 30_000)),
]
IDS = [f"{bad[0]}-{i}" for i, (_, _, bad, _) in enumerate(INVALID_CALLS)]


@pytest.mark.parametrize(("pipeline", "before", "bad", "says"), INVALID_CALLS, ids=IDS)
async def test_tracker_invalid_call_raises_at_the_call_site(
    job_store: JobStore, pipeline: str, before: list[Any], bad: Any, says: str
) -> None:
    async with Tracker(job_store, "bad-1", pipeline=pipeline) as job:
        for name, args in before:
            await getattr(job, name)(*args)
        await job.flush()
        seq = (await job_store.get("bad-1")).seq if before else 0
        name, args, kwargs = bad
        with pytest.raises(ValueError, match=re.escape(says)):
            await getattr(job, name)(*args, **kwargs)
        await job.flush()

    if before:
        assert (await job_store.get("bad-1")).seq == seq, "a refused call publishes nothing"
    else:
        with pytest.raises(JobNotFound):
            await job_store.get("bad-1")


@pytest.mark.parametrize(("pipeline", "before", "bad", "says"), INVALID_CALLS, ids=IDS)
def test_sync_tracker_invalid_call_raises_at_the_call_site(
    redis_url: str, pipeline: str, before: list[Any], bad: Any, says: str
) -> None:
    with SyncTracker(redis_url, "bad-2", pipeline=pipeline) as job:
        for name, args in before:
            getattr(job, name)(*args)
        name, args, kwargs = bad
        with pytest.raises(ValueError, match=re.escape(says)):
            getattr(job, name)(*args, **kwargs)


@pytest.mark.parametrize(("pipeline", "before", "bad", "says"), INVALID_CALLS, ids=IDS)
def test_untracked_sync_tracker_still_checks_calls(
    pipeline: str, before: list[Any], bad: Any, says: str
) -> None:
    job = SyncTracker("redis://127.0.0.1:1/0", None, pipeline=pipeline)
    for name, args in before:
        getattr(job, name)(*args)
    name, args, kwargs = bad
    with pytest.raises(ValueError, match=re.escape(says)):
        getattr(job, name)(*args, **kwargs)


def test_tracker_refuses_a_bad_job_id_or_an_unknown_pipeline(store: JobStore) -> None:
    with pytest.raises(ValueError, match="job id 'no spaces!' must be"):
        Tracker(store, "no spaces!")
    with pytest.raises(ValueError, match="unknown pipeline 'podcast'"):
        Tracker(store, "job-1", pipeline="podcast")
    with pytest.raises(ValueError, match="unknown pipeline 'podcast'"):
        SyncTracker("redis://127.0.0.1:1/0", "job-1", pipeline="podcast")


async def test_untracked_tracker_accepts_every_call_and_publishes_nothing(
    redis_url: str, store: JobStore
) -> None:
    # Port 1: nothing listens there. An untracked tracker never connects anyway.
    async with Tracker.connect("redis://127.0.0.1:1/0", None, pipeline="ocr") as job:
        await job.start()
        await job.stage("split")
        await job.chunks(3)
        await job.chunk_done(0)
        await job.chunk_failed(1, 1, 10, "bad scan")
        await job.merge()
        await job.retrying(2, 3)
        await job.heartbeat()
        await job.meta(user="ada")
        await job.complete("text")
        await job.flush()
        snapshot = job.snapshot

    with SyncTracker("redis://127.0.0.1:1/0", None, pipeline="video") as sync_job:
        sync_job.start()
        sync_job.stage("downloading")
        sync_job.advance(0.5)
        sync_job.fail("nope")
        sync_job.flush()

    assert snapshot is None
    assert await store.list_jobs() == []
