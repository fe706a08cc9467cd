"""The async Tracker through the public library, on the memory broker and on real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import cast

import anyio
import pytest
import redis

from pubsub.autoadvance import fraction_at
from pubsub.broker import open_broker
from pubsub.brokers import keys
from pubsub.errors import JobNotFound
from pubsub.events import ChunkRef, Chunks, ChunksPatch, JobStatus, Snapshot, Update
from pubsub.exits import register_not_failure
from pubsub.publisher import Tracker
from pubsub.store import JobStore
from tests.conditions import eventually


async def _published(
    store: JobStore, job_id: str, accept: Callable[[Snapshot], bool], message: str
) -> Snapshot:
    async def probe() -> Snapshot | None:
        try:
            return await store.get(job_id)
        except JobNotFound:  # until the first publish lands
            return None

    snapshot = await eventually(probe, lambda s: s is not None and accept(s), 5, message)
    assert snapshot is not None
    return snapshot


async def test_tracker_stage_jumps_to_stage_start_and_advance_maps_onto_its_range(
    job_store: JobStore,
) -> None:
    async with Tracker(job_store, "pdf-1", pipeline="pdf") as job:
        await job.start()
        await job.stage("extract")
        await job.flush()
        entered = await job_store.get("pdf-1")
        await job.advance(0.5, "Page 10 of 20")
        await job.flush()
        halfway = await job_store.get("pdf-1")
        await job.set(60)
        await job.flush()
        explicit = await job_store.get("pdf-1")

    assert (entered.status, entered.stage, entered.stage_label) == (
        JobStatus.RUNNING,
        "extract",
        "Extracting text",
    )
    assert (entered.progress, entered.message) == (25, "Extracting text")
    # extract owns [25, 50): half of it is 37.5
    assert (halfway.progress, halfway.message) == (37.5, "Page 10 of 20")
    assert explicit.progress == 60


async def test_tracker_chunks_count_progress_message_and_failure_text(job_store: JobStore) -> None:
    async with Tracker(job_store, "ocr-1", pipeline="ocr") as job:
        await job.start()
        await job.chunks(17)
        await job.flush()
        started = await job_store.get("ocr-1")
        for index in range(4):
            await job.chunk_done(index, index * 25 + 1, index * 25 + 25)
        await job.chunk_failed(4, 101, 125, "Document AI timeout")
        await job.flush()
        failed = await job_store.get("ocr-1")
        await job.chunk_done(5, 126, 150)
        await job.flush()
        after = await job_store.get("ocr-1")
        await job.merge()
        await job.flush()
        merging = await job_store.get("ocr-1")

    assert (started.stage, started.progress, started.message) == (
        "chunks",
        5,
        "Processing chunk 0/17",
    )
    assert started.chunks == Chunks(total=17)
    text = "Chunk 5 (pages 101-125) failed: Document AI timeout"
    assert (failed.error, failed.message) == (text, text)
    assert failed.chunks == Chunks(
        total=17, completed=4, failed=1, current=ChunkRef(index=4, page_start=101, page_end=125)
    )
    # chunks owns [5, 90): 6 of 17 done
    assert after.progress == pytest.approx(5 + 85 * 6 / 17, abs=0.001)
    assert after.message == "Processing chunk 6/17"
    assert after.error == text, "a failed chunk stays reported while the job goes on"
    assert (merging.stage, merging.stage_label, merging.progress) == (
        "merge",
        "Merging OCR results",
        90,
    )


async def test_tracker_retrying_keeps_progress_then_the_next_stage_runs_again(
    job_store: JobStore,
) -> None:
    async with Tracker(job_store, "sum-1", pipeline="summary") as job:
        await job.start()
        await job.stage("transcript")
        await job.retrying(2, 3, "Transcript service timed out")
        await job.flush()
        retrying = await job_store.get("sum-1")
        await job.stage("connecting")
        await job.flush()
        again = await job_store.get("sum-1")
        await job.complete()

    assert retrying.status is JobStatus.RETRYING
    assert (retrying.progress, retrying.message) == (40, "Retrying... (2/3)")
    assert (retrying.attempt, retrying.max_attempts) == (2, 3)
    assert retrying.error == "Transcript service timed out"
    assert again.status is JobStatus.RUNNING
    assert (again.progress, again.message) == (5, "Connecting"), "a restarted stage may go back"
    assert again.error is None, "the retry's cause is not the job's error once it runs again"
    final = await job_store.get("sum-1")
    assert (final.status, final.progress, final.eta_seconds) == (JobStatus.COMPLETED, 100, 0)


@pytest.mark.parametrize(
    ("result", "body", "content_type"),
    [
        ("Summary: all good.", b"Summary: all good.", "text/plain; charset=utf-8"),
        ({"clips": 3, "ok": True}, b'{"clips":3,"ok":true}', "application/json"),
    ],
)
async def test_tracker_complete_stores_text_and_json_results(
    job_store: JobStore, result: object, body: bytes, content_type: str
) -> None:
    async with Tracker(job_store, "res-1") as job:
        await job.start()
        await job.complete(result)

    snapshot = await job_store.get("res-1")
    assert (snapshot.status, snapshot.has_result) == (JobStatus.COMPLETED, True)
    assert await job_store.result("res-1") == (body, content_type)


async def test_tracker_context_manager_fails_the_job_and_reraises(job_store: JobStore) -> None:
    with pytest.raises(RuntimeError, match="GPU fell off the bus"):
        async with Tracker(job_store, "boom-1", pipeline="video") as job:
            await job.start()
            await job.stage("transcribing")
            raise RuntimeError("GPU fell off the bus")

    snapshot = await job_store.get("boom-1")
    assert (snapshot.status, snapshot.error) == (JobStatus.FAILED, "GPU fell off the bus")
    assert snapshot.progress == 25, "failing keeps the progress reached"


async def test_tracker_context_manager_leaves_an_ended_job_alone(job_store: JobStore) -> None:
    with pytest.raises(ValueError, match="cleanup"):
        async with Tracker(job_store, "done-1") as job:
            await job.complete("fine")
            raise ValueError("cleanup went wrong after the job was done")

    snapshot = await job_store.get("done-1")
    assert (snapshot.status, snapshot.error) == (JobStatus.COMPLETED, None)


class TryAgainLater(Exception):
    """A task framework's "this attempt stops, the task goes on" (like Celery's Retry)."""


async def test_tracker_context_manager_leaves_a_registered_retry_exception_alone(
    job_store: JobStore,
) -> None:
    register_not_failure(TryAgainLater)

    with pytest.raises(TryAgainLater):
        async with Tracker(job_store, "retry-1") as job:
            await job.set(40)
            raise TryAgainLater()

    snapshot = await job_store.get("retry-1")
    assert (snapshot.status, snapshot.error, snapshot.progress) == (JobStatus.RUNNING, None, 40)


async def test_tracker_coalesces_10000_advances_into_few_publishes(job_store: JobStore) -> None:
    async with Tracker(job_store, "fast-1", pipeline="pdf") as job:
        await job.stage("extract")
        await job.flush()
        before = (await job_store.get("fast-1")).seq
        started = anyio.current_time()
        for i in range(1, 10_001):
            await job.advance(i / 10_000)
            await anyio.sleep(0)  # let the sender run, as any real I/O would
        elapsed = anyio.current_time() - started
        await job.flush()

    after = await job_store.get("fast-1")
    publishes = after.seq - before
    # One publish per 50 ms window at most, plus the first (it goes out at once).
    assert 1 <= publishes <= elapsed / 0.05 + 2, f"{publishes} publishes in {elapsed:.2f} s"
    assert publishes < 100
    assert after.progress == 50, "the final state is exact"


async def test_tracker_coalesced_chunk_increments_add_up(job_store: JobStore) -> None:
    async with Tracker(job_store, "sum-chunks", pipeline="ocr", coalesce=10) as job:
        await job.chunks(40)
        await job.flush()
        before = (await job_store.get("sum-chunks")).seq
        for index in range(40):
            if index % 10 == 3:
                await job.chunk_failed(index, None, None, "unreadable")
            else:
                await job.chunk_done(index)
        await job.flush()

    snapshot = await job_store.get("sum-chunks")
    assert snapshot.seq - before == 1, "40 chunk reports within one window are one publish"
    assert snapshot.chunks is not None
    assert (snapshot.chunks.completed, snapshot.chunks.failed) == (36, 4)
    assert snapshot.message == "Processing chunk 40/40"
    assert snapshot.progress == 90


async def test_tracker_stage_changes_and_end_states_skip_the_window(job_store: JobStore) -> None:
    async with Tracker(job_store, "urgent-1", pipeline="pdf", coalesce=30) as job:
        await job.stage("extract")
        entered = await _published(
            job_store, "urgent-1", lambda s: s.stage == "extract", "stage change published"
        )
        await job.advance(0.5)
        await job.stage("process")
        moved = await _published(
            job_store, "urgent-1", lambda s: s.stage == "process", "second stage published"
        )
        await job.complete()
        ended = await _published(
            job_store, "urgent-1", lambda s: s.is_terminal, "end state published"
        )

    # Each urgent update carried what was queued before it: no separate publish waited
    # out the 30 s window.
    assert (entered.seq, moved.seq, ended.seq) == (1, 3, 4)


async def test_tracker_auto_advance_moves_toward_but_never_reaches_the_stage_end(
    job_store: JobStore,
) -> None:
    async with Tracker(job_store, "auto-1", pipeline="pdf") as job:
        await job.stage("extract", expected_seconds=0.5)
        await _published(job_store, "auto-1", lambda s: s.seq >= 5, "auto-advance moved 4 times")
        await job.stage("process")
        await job.flush()
        entered = await job_store.get("auto-1")
        # Absence can only be seen over a window: five auto-advance ticks' worth.
        with anyio.move_on_after(0.5):
            await _published(
                job_store, "auto-1", lambda s: s.seq > entered.seq, "auto-advance went on"
            )
            pytest.fail("auto-advance kept publishing after the next stage")

    history = [json.loads(raw) for raw in await job_store.history("auto-1")]
    in_extract = [event["progress"] for event in history if event["stage"] == "extract"]
    assert len(in_extract) >= 5, "progress moved in several steps"
    assert in_extract == sorted(in_extract) and len(set(in_extract)) == len(in_extract)
    assert all(25 <= value < 50 for value in in_extract), in_extract
    assert entered.progress == 50


async def test_tracker_real_progress_stops_auto_advance(job_store: JobStore) -> None:
    async with Tracker(job_store, "auto-2", pipeline="video") as job:
        await job.stage("transcribing", expected_seconds=5)  # a tick every 0.1 s
        await _published(job_store, "auto-2", lambda s: s.progress > 25, "auto-advance moved")
        await job.advance(0.8, "Transcribed 48 of 60 minutes")
        await job.flush()
        advanced = await job_store.get("auto-2")
        with anyio.move_on_after(0.5):
            await _published(
                job_store, "auto-2", lambda s: s.seq > advanced.seq, "auto-advance went on"
            )
            pytest.fail("auto-advance kept publishing after a real update")

    assert (advanced.progress, advanced.message) == (45, "Transcribed 48 of 60 minutes")


async def test_tracker_leaves_no_task_behind(job_store: JobStore) -> None:
    before = set(asyncio.all_tasks())
    async with Tracker(job_store, "tidy-1", pipeline="video") as job:
        await job.stage("downloading")  # auto-advances: the pipeline expects 30 s
        await job.advance(0.1)
        assert len(asyncio.all_tasks()) > len(before), "the sender runs while the tracker is open"
    assert set(asyncio.all_tasks()) == before


async def test_tracker_calls_after_the_end_are_ignored(job_store: JobStore) -> None:
    async with Tracker(job_store, "late-1") as job:
        await job.complete("done")
        await job.message("too late")
        await job.fail("too late too")
        assert job.ended

    snapshot = await job_store.get("late-1")
    assert (snapshot.status, snapshot.message, snapshot.error) == (
        JobStatus.COMPLETED,
        "",
        None,
    )


async def test_tracker_stops_quietly_when_the_job_is_ended_elsewhere(job_store: JobStore) -> None:
    async with Tracker(job_store, "ext-1") as job:
        await job.start()
        await job.flush()
        # A user pressed "cancel" in the UI.
        await job_store.publish("ext-1", Update(status=JobStatus.CANCELLED))
        await job.advance(0.5)
        await job.flush()
        assert job.ended

    assert (await job_store.get("ext-1")).status is JobStatus.CANCELLED


async def test_tracker_must_be_entered_before_publishing(job_store: JobStore) -> None:
    job = Tracker(job_store, "closed-1")
    with pytest.raises(RuntimeError, match="async with"):
        await job.start()


def test_auto_advance_is_90_percent_there_at_the_expected_time_and_never_arrives() -> None:
    values = [fraction_at(second, 10) for second in range(0, 1000)]

    assert values[0] == 0
    assert values[10] == pytest.approx(0.9 * 0.99)
    assert values == sorted(values) and values[-1] < 1


async def test_tracker_closed_leaves_nothing_of_its_updates_in_the_job(redis_url: str) -> None:
    # Each tracker names its updates in the job's hash while it may retry one; a job
    # published to by a tracker per task (one per chunk) must not keep one entry each.
    store = JobStore(open_broker(redis_url))
    raw = redis.Redis.from_url(redis_url)

    def fields() -> list[bytes]:
        return sorted(cast(list[bytes], raw.hkeys(keys.job_key("many-writers"))))

    try:
        await store.publish("many-writers", Update(chunks=ChunksPatch(total=3)))
        for index in range(3):
            async with Tracker(store, "many-writers") as job:
                await job.chunk_done(index)
                await job.flush()
                assert len(fields()) == 3, "seq, record and this tracker's number"
        assert fields() == [b"record", b"seq"]
        snapshot = await store.get("many-writers")
        assert snapshot.chunks is not None and snapshot.chunks.completed == 3
    finally:
        raw.close()
        await store.broker.aclose()
