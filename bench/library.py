"""Publishing through the `pubsub` library: the path pipelines use (docs/api.md §2.1).

`LibraryTarget` feeds the hub the way a worker does: one `JobStore` per publishing
process and a `Tracker` per job, each update a read plus an atomic commit in Redis. The
hub only sees the resulting broker messages, so its CPU figures hold no HTTP parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from bench.procs import Server, flush_redis
from bench.report import Report, Row, attempt
from bench.scenarios import Context
from bench.sse import bench_message
from bench.targets import HubTarget, Target, progress_of

if TYPE_CHECKING:
    from pubsub import JobStore, Tracker


def library_available() -> bool:
    """True once pubsub.publisher is importable."""
    try:
        return importlib.util.find_spec("pubsub.publisher") is not None
    except ModuleNotFoundError:
        return False


class LibraryTarget:
    """The hub, fed by `pubsub.Tracker` straight to Redis.

    Trackers run with `coalesce=0` and every call is flushed before the next one to the
    same job, so each call is exactly one committed event: the bench counts events, and
    the tracker's default 50 ms coalescing would merge them (by design, docs/api.md §2).
    """

    name = "library"

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.hub = HubTarget()
        self.store: JobStore | None = None
        self.stack: contextlib.AsyncExitStack | None = None
        self.trackers: dict[str, Tracker] = {}

    @contextlib.asynccontextmanager
    async def server(self, redis_url: str, log_dir: Path) -> AsyncIterator[Server]:
        """The hub process, plus a job store and trackers of our own on the same Redis."""
        from pubsub import JobStore, open_broker

        async with self.hub.server(redis_url, log_dir) as srv:
            self.store = JobStore(open_broker(redis_url))
            try:
                async with contextlib.AsyncExitStack() as stack:
                    self.stack = stack
                    yield srv
            finally:
                await self.aclose()

    async def _tracker(self, job_id: str) -> Tracker:
        from pubsub import Tracker

        tracker = self.trackers.get(job_id)
        if tracker is None:
            if self.store is None or self.stack is None:
                raise RuntimeError("library target used outside its server() block")
            tracker = Tracker(self.store, job_id, coalesce=0)
            self.trackers[job_id] = await self.stack.enter_async_context(tracker)
        return tracker

    async def create_jobs(self, job_ids: Iterable[str]) -> None:
        """JobStore.create for each id (32 at a time), and a tracker for each."""
        store = self.store
        if store is None:
            raise RuntimeError("library target used outside its server() block")
        gate = asyncio.Semaphore(32)

        async def one(job_id: str) -> None:
            async with gate:
                await store.create(job_id)

        ids = list(job_ids)
        await asyncio.gather(*(one(j) for j in ids))
        # Enter every tracker here, in the scenario's own task: a tracker owns a task
        # group, which must be left by the task that entered it, not by a worker.
        for job_id in ids:
            await self._tracker(job_id)

    async def publish(self, job_id: str, index: int, total: int) -> None:
        """Tracker.set(percent, message), then flush: one call, one event."""
        tracker = await self._tracker(job_id)
        await tracker.set(progress_of(index, total), bench_message(index))
        await tracker.flush()

    async def publish_round(self, job_ids: Sequence[str], index: int, total: int) -> None:
        """Tracker.set on every job, then flush them together (their senders run at once)."""
        trackers = [await self._tracker(job_id) for job_id in job_ids]
        for tracker in trackers:
            await tracker.set(progress_of(index, total), bench_message(index))
        await asyncio.gather(*(tracker.flush() for tracker in trackers))

    async def aclose(self) -> None:
        """Close the job store's broker connections (the trackers closed with the stack)."""
        self.trackers.clear()
        self.stack = None
        if self.store is not None:
            await self.store.broker.aclose()
            self.store = None


def hub_target(redis_url: str) -> Target:
    """The hub fed the way pipelines feed it: the library when present, else HTTP."""
    return LibraryTarget(redis_url) if library_available() else HubTarget()


@dataclass(slots=True)
class PublishRate:
    """Library updates committed per second from one process."""

    events: int
    seconds: float
    workers: int

    @property
    def per_second(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def library_publish(ctx: Context, workers: int = 64, jobs: int = 256) -> PublishRate:
    """Publish `library_events` updates over `jobs` jobs from `workers` concurrent tasks."""
    await flush_redis(ctx.redis_url)
    target = LibraryTarget(ctx.redis_url)
    ids = [f"lib{i}" for i in range(jobs)]
    per_job = max(1, ctx.sizes.library_events // jobs)
    async with target.server(ctx.redis_url, ctx.log_dir):
        await target.create_jobs(ids)

        async def worker(mine: list[str]) -> None:
            for index in range(1, per_job + 1):
                for job in mine:
                    await target.publish(job, index, per_job)

        start = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(worker(ids[w::workers]) for w in range(workers))),
            timeout=60 + ctx.sizes.library_events / 1_000,
        )
        seconds = time.monotonic() - start
    return PublishRate(per_job * jobs, seconds, workers)


async def library_rows(ctx: Context, report: Report, console: Console) -> None:
    """Library publish rate from one process."""
    if not library_available():
        report.add(
            Row(
                "library publish (1 process)",
                "ev/s",
                None,
                20_000,
                True,
                check="pubsub publisher not available",
            )
        )
        return
    rate = await attempt(console, "library publish", lambda: library_publish(ctx), ctx.raw)
    if rate is not None:
        ctx.raw["library_publish"] = {
            "events": rate.events,
            "seconds": rate.seconds,
            "workers": rate.workers,
            "per_second": rate.per_second,
        }
    report.add(
        Row(
            "library publish (1 process)",
            "ev/s",
            rate.per_second if rate else None,
            20_000,
            True,
            check=f"{rate.events} updates committed" if rate else "",
            note=f"{rate.workers} tasks, Tracker.set + flush, coalesce=0" if rate else "",
        )
    )
