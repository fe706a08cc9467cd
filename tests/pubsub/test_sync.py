"""SyncTracker: the same calls from plain threads and processes, with no event loop of theirs."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from multiprocessing.synchronize import Event

import anyio
import pytest

from pubsub.broker import open_broker
from pubsub.events import JobStatus, Snapshot
from pubsub.store import JobStore
from pubsub.sync import SyncTracker
from tests.threads import run_in_thread

WORKERS = 4
CHUNKS = 100


def _tracker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "progress-tracker"]


def _video_job(url: str, job_id: str) -> None:
    with SyncTracker(url, job_id, pipeline="video") as job:
        job.start()
        job.stage("transcribing", "Transcribing 12 minutes of audio")
        job.advance(0.5)
        job.complete({"clips": 2})


async def test_sync_tracker_publishes_from_a_plain_thread(redis_url: str, store: JobStore) -> None:
    await anyio.to_thread.run_sync(
        lambda: run_in_thread(_video_job, redis_url, "sync-1", timeout=30, what="the worker")
    )

    snapshot = await store.get("sync-1")
    assert (snapshot.status, snapshot.stage, snapshot.progress) == (
        JobStatus.COMPLETED,
        "transcribing",
        100,
    )
    assert await store.result("sync-1") == (b'{"clips":2}', "application/json")


def test_sync_tracker_context_manager_fails_the_job_and_reraises(redis_url: str) -> None:
    with pytest.raises(KeyError, match="page_count"):
        with SyncTracker(redis_url, "sync-2", pipeline="pdf") as job:
            job.stage("parse")
            raise KeyError("page_count")

    snapshot = _get(redis_url, "sync-2")
    assert (snapshot.status, snapshot.error, snapshot.stage) == (
        JobStatus.FAILED,
        "'page_count'",
        "parse",
    )


def test_sync_tracker_leaves_no_thread_behind(redis_url: str) -> None:
    assert _tracker_threads() == []
    first = SyncTracker(redis_url, "sync-3a")
    second = SyncTracker(redis_url, "sync-3b")
    assert len(_tracker_threads()) == 1, "one loop thread per process, however many trackers"
    first.start()
    second.start()
    first.close()
    assert len(_tracker_threads()) == 1, "still in use by the second tracker"
    second.complete()
    second.close()
    assert _tracker_threads() == [], "the last tracker to close stops the thread"
    assert _get(redis_url, "sync-3b").status is JobStatus.COMPLETED


def test_sync_tracker_serves_many_threads_at_once(redis_url: str) -> None:
    threads = [threading.Thread(target=_video_job, args=(redis_url, f"many-{n}")) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    statuses = {_get(redis_url, f"many-{n}").status for n in range(8)}
    assert statuses == {JobStatus.COMPLETED}
    assert _tracker_threads() == []


async def test_sync_tracker_works_inside_a_running_event_loop(redis_url: str) -> None:
    # Sync code called from async code (a Celery task run by an async worker, say).
    with SyncTracker(redis_url, "sync-4", pipeline="pdf") as job:
        job.stage("finalize")
        job.complete()
    assert _get(redis_url, "sync-4").status is JobStatus.COMPLETED


def test_sync_tracker_coalesces_10000_advances(redis_url: str) -> None:
    with SyncTracker(redis_url, "sync-5", pipeline="pdf") as job:
        job.stage("process")
        job.flush()
        before = _get(redis_url, "sync-5").seq
        started = time.perf_counter()
        for i in range(1, 10_001):
            job.advance(i / 10_000)
        elapsed = time.perf_counter() - started
        job.flush()

    after = _get(redis_url, "sync-5")
    publishes = after.seq - before
    assert publishes <= elapsed / 0.05 + 2, f"{publishes} publishes in {elapsed:.2f} s"
    assert publishes < 200
    assert after.progress == 75, "the final state is exact"


def _report_chunks(url: str, job_id: str, worker: int, ready: Event) -> None:
    """One worker process: every WORKERS-th chunk, every seventh of them failing."""
    ready.wait(30)
    with SyncTracker(url, job_id, pipeline="ocr") as job:
        for index in range(worker, CHUNKS, WORKERS):
            if index % 7 == 0:
                job.chunk_failed(index, index * 4 + 1, index * 4 + 4, "unreadable")
            else:
                job.chunk_done(index, index * 4 + 1, index * 4 + 4)


def test_sync_tracker_chunk_counts_stay_exact_from_four_processes(redis_url: str) -> None:
    with SyncTracker(redis_url, "ocr-mp", pipeline="ocr") as job:
        job.chunks(CHUNKS)
        job.flush()
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        workers = [
            context.Process(target=_report_chunks, args=(redis_url, "ocr-mp", n, ready))
            for n in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        ready.set()  # all at once, to make their commits race
        for worker in workers:
            worker.join(60)
        assert [worker.exitcode for worker in workers] == [0] * WORKERS
        job.merge()
        job.complete("merged text")

    snapshot = _get(redis_url, "ocr-mp")
    failed = len(range(0, CHUNKS, 7))
    assert snapshot.chunks is not None
    assert (snapshot.chunks.total, snapshot.chunks.completed, snapshot.chunks.failed) == (
        CHUNKS,
        CHUNKS - failed,
        failed,
    )
    assert snapshot.status is JobStatus.COMPLETED


async def _read(url: str, job_id: str) -> Snapshot:
    broker = open_broker(url)
    try:
        return await JobStore(broker).get(job_id)
    finally:
        await broker.aclose()


def _get(url: str, job_id: str) -> Snapshot:
    """Read a job as a separate reader would: with its own loop, in its own thread."""
    found: list[Snapshot] = []
    run_in_thread(lambda: found.append(anyio.run(_read, url, job_id)), timeout=30, what="the read")
    return found[0]


def test_sync_tracker_used_after_a_fork_raises_instead_of_hanging(redis_url: str) -> None:
    """A prefork child inherits its parent's trackers, whose loop thread stayed behind."""
    with SyncTracker(redis_url, "forked-1") as job:
        job.start()
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            try:
                job.message("from the child")
            except RuntimeError:
                os._exit(0)
            os._exit(1)
        # The child's end, waited for on its pidfd (readable once it exits), under a deadline.
        exited = os.pidfd_open(pid)
        try:
            if not select.select([exited], [], [], 10)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the child's tracker call hung")
        finally:
            os.close(exited)
        reaped = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(reaped[1]) == 0, "the child's call did not raise"
        job.message("the parent's tracker still works")
