"""The thread-side tracker: the calls of `Tracker`, for code without an event loop.

    with SyncTracker.connect("redis://127.0.0.1:6379/0", job_id, pipeline="ocr") as job:
        job.chunks(17)
        job.chunk_done(0, 1, 25)
        job.merge()
        job.complete("text")

Design: one private event loop per process, in a background thread, hosts the async
`Tracker` of every open `SyncTracker`. Each call hands its coroutine to that loop and
waits for it, so a `ValueError` raises in the calling thread; calls only queue work
(see `pubsub.publisher`), so they return quickly even while the broker is down. The loop
thread starts when the first tracker of the process opens and stops when the last one
closes, so nothing is left running once jobs end, and a forked child (Celery's prefork
pool) starts from a clean slate.

Why not redis-py's blocking client: the commit loop, the merge rules, coalescing, outage
retries and auto-advance would each need a second, blocking implementation to keep in
step with the async one. Reusing the async tracker costs one thread hop per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypedDict, TypeVar, Unpack

import anyio

from pubsub.errors import JobCancelled
from pubsub.events import Snapshot
from pubsub.exits import fails_job
from pubsub.pipelines import PipelineRegistry
from pubsub.publisher import Tracker


class TrackerOptions(TypedDict, total=False):
    """The keyword options of `Tracker.connect`, passed through unchanged."""

    pipelines: PipelineRegistry | None
    history: int
    retention: int
    coalesce: float
    raise_on_outage: bool
    close_timeout: float
    raise_on_cancel: bool
    cancel_poll_interval: float | None
    replicas: int


T = TypeVar("T")


class _LoopThread:
    """This process's private event loop, run by one thread while any tracker is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._fork_safe = False

    def acquire(self) -> asyncio.AbstractEventLoop:
        """The running loop, started if this is its first user."""
        with self._lock:
            if not self._fork_safe:
                os.register_at_fork(after_in_child=self.forget_after_fork)
                self._fork_safe = True
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(
                    target=_run_loop, args=(loop, started), name="progress-tracker", daemon=True
                )
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            self._users += 1
            return self._loop

    def release(self) -> None:
        """One user fewer; the last one stops the loop and joins its thread."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._loop is None:
                return
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()

    def forget_after_fork(self) -> None:
        """In a forked child the parent's loop thread does not exist: start afresh."""
        self._lock = threading.Lock()
        self._users, self._loop, self._thread = 0, None, None
        self._fork_safe = True  # the registration is inherited by the child


def _run_loop(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


# One per process by design: a process needs one loop however many jobs it reports.
# Inert until a tracker opens; it starts nothing at import.
_LOOP_THREAD = _LoopThread()


class SyncTracker:
    """Publishes the progress of one job from plain threads, Celery or RQ tasks."""

    def __init__(
        self,
        broker_url: str,
        job_id: str | None,
        *,
        pipeline: str | None = None,
        **options: Unpack[TrackerOptions],
    ) -> None:
        """Open a tracker for `job_id` on `broker_url` (None: check calls, publish nothing).

        The options are those of `Tracker.connect`.
        """
        connect = functools.partial(
            Tracker.connect, broker_url, job_id, pipeline=pipeline, **options
        )
        self.job_id = job_id
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host: concurrent.futures.Future[None] | None = None
        self._closing: anyio.Event | None = None
        if job_id is None:
            self._tracker = connect()
            return
        opened: concurrent.futures.Future[Tracker] = concurrent.futures.Future()
        self._loop = _LOOP_THREAD.acquire()
        try:
            self._host = asyncio.run_coroutine_threadsafe(self._serve(opened, connect), self._loop)
            self._tracker = opened.result()
        except BaseException:
            self._loop = None
            _LOOP_THREAD.release()
            raise

    @classmethod
    def connect(
        cls,
        broker_url: str,
        job_id: str | None,
        *,
        pipeline: str | None = None,
        **options: Unpack[TrackerOptions],
    ) -> SyncTracker:
        """The same as the constructor, named like `Tracker.connect`."""
        return cls(broker_url, job_id, pipeline=pipeline, **options)

    async def _serve(
        self, opened: concurrent.futures.Future[Tracker], connect: Callable[[], Tracker]
    ) -> None:
        """Host the async tracker in one task: a task group is entered and left by one task."""
        try:
            tracker = connect()
            self._closing = anyio.Event()
            async with tracker:
                opened.set_result(tracker)
                await self._closing.wait()
        except Exception as exc:
            if not opened.done():
                opened.set_exception(exc)
                return
            raise

    @property
    def snapshot(self) -> Snapshot | None:
        """The job as the hub last acknowledged it (None before the first publish)."""
        return self._tracker.snapshot

    @property
    def outage(self) -> bool:
        """True while the broker is unreachable and updates wait to be flushed."""
        return self._tracker.outage

    @property
    def cancel_requested(self) -> bool:
        """True once the tracker learnt that someone asked to cancel the job."""
        return self._tracker.cancel_requested

    @property
    def ended(self) -> bool:
        """True once the job reached an end state; later calls are ignored."""
        return self._tracker.ended

    def start(self, message: str | None = None) -> None:
        """Mark the job running."""
        self._call(lambda t: t.start(message))

    def stage(
        self, key: str, message: str | None = None, *, expected_seconds: float | None = None
    ) -> None:
        """Enter a stage; with an expected duration progress auto-advances inside it."""
        self._call(lambda t: t.stage(key, message, expected_seconds=expected_seconds))

    def advance(self, fraction: float, message: str | None = None) -> None:
        """Progress within the current stage, from 0 to 1."""
        self._call(lambda t: t.advance(fraction, message))

    def set(
        self, percent: float, message: str | None = None, *, eta_seconds: float | None = None
    ) -> None:
        """Set the overall percent explicitly (0-100), with the caller's own ETA if it has one."""
        self._call(lambda t: t.set(percent, message, eta_seconds=eta_seconds))

    def message(self, text: str) -> None:
        """Say what is happening, without moving progress."""
        self._call(lambda t: t.message(text))

    def heartbeat(self) -> None:
        """Tell watchers the job is alive (it is not stalled)."""
        self._call(lambda t: t.heartbeat())

    def meta(self, **values: Any) -> None:
        """Merge small metadata into the job's `meta` (8 KiB encoded at most)."""
        self._call(lambda t: t.meta(**values))

    def chunks(self, total: int) -> None:
        """Start `total` chunks of work (entering the pipeline's chunk stage if needed)."""
        self._call(lambda t: t.chunks(total))

    def chunk_done(
        self, index: int, page_start: int | None = None, page_end: int | None = None
    ) -> None:
        """Chunk `index` (from 0) is done; counts stay exact across worker processes."""
        self._call(lambda t: t.chunk_done(index, page_start, page_end))

    def chunk_failed(
        self, index: int, page_start: int | None, page_end: int | None, error: str
    ) -> None:
        """Chunk `index` failed: `Chunk {index+1} (pages a-b) failed: {error}`."""
        self._call(lambda t: t.chunk_failed(index, page_start, page_end, error))

    def merge(self, message: str | None = None) -> None:
        """Enter the pipeline's merge stage."""
        self._call(lambda t: t.merge(message))

    def retrying(self, attempt: int, max_attempts: int, reason: str | None = None) -> None:
        """About to retry: attempt `attempt` of `max_attempts`; progress is kept."""
        self._call(lambda t: t.retrying(attempt, max_attempts, reason))

    def complete(self, result: Any = None, message: str | None = None) -> None:
        """Finish the job, with an optional text or JSON result (1 MiB at most)."""
        self._call(lambda t: t.complete(result, message))

    def fail(self, error: str) -> None:
        """Fail the job with a human error sentence."""
        self._call(lambda t: t.fail(error))

    def cancel(self, message: str | None = None) -> None:
        """Cancel the job."""
        self._call(lambda t: t.cancel(message))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every call so far is published; `TimeoutError` after `timeout` s."""
        self._call(lambda t: t.flush(), timeout)

    def close(self) -> None:
        """Publish what is queued (within the tracker's `close_timeout`), then stop."""
        loop, host, self._loop = self._loop, self._host, None
        if loop is None or host is None or self._forked():
            return  # after a fork the loop belongs to the parent: nothing of it is here
        try:
            closing = self._closing
            assert closing is not None
            loop.call_soon_threadsafe(closing.set)
            host.result()
        finally:
            _LOOP_THREAD.release()

    def __enter__(self) -> SyncTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Only errors fail the job, and not a framework's retry (`pubsub.exits`).
            if fails_job(exc) and not self.ended and self._loop is not None and not self._forked():
                # Stopping on a cancel request is what was asked (docs/api.md §9).
                if isinstance(exc, JobCancelled):
                    self.cancel()
                else:
                    self.fail(str(exc) or type(exc).__name__)
        finally:
            self.close()

    def _forked(self) -> bool:
        return os.getpid() != self._pid

    def _call(
        self, call: Callable[[Tracker], Coroutine[Any, Any, T]], timeout: float | None = None
    ) -> T:
        coroutine = call(self._tracker)
        if self.job_id is None:
            return _run_untracked(coroutine)
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("this SyncTracker is closed")
        if self._forked():
            coroutine.close()
            # Its loop thread did not survive the fork: waiting on it would hang forever.
            raise RuntimeError("this SyncTracker was opened before a fork; open one per process")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"not flushed within {timeout} s") from None


def _run_untracked(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a call of an untracked tracker here: it checks its arguments and never suspends."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("an untracked tracker call suspended")
