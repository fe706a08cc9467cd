"""Celery in-process (eager apps): a Redis outage never fails a task; green pools run untracked."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest
from celery import Celery, signals

from progress_hub.embedded import free_port
from pubsub.celery import current_tracker, track
from pubsub.store import JobStore


@pytest.fixture
def app() -> Iterator[Celery]:
    """An eager app (tasks run in `.delay()`) tracked on a port nothing listens on."""
    app = Celery("outage", broker="memory://")
    app.conf.task_always_eager = True
    tracking = track(app, f"redis://127.0.0.1:{free_port()}/0", close_timeout=0.5)
    yield app
    tracking.untrack()
    app.close()


def test_celery_task_succeeds_while_the_hub_redis_is_down(app: Celery) -> None:
    @app.task(progress_pipeline="pdf")
    def render(pages: int) -> int:
        job = current_tracker()
        job.stage("parse")
        job.advance(0.5, "Half the pages")
        return pages

    started = time.monotonic()

    assert render.delay(12).get() == 12
    # The end of the task waits for Redis at most close_timeout (0.5 s), not forever.
    assert time.monotonic() - started < 5


class StartingWorker:
    """The two attributes of Celery's WorkController that `track()` reads at start."""

    def __init__(self, app: Celery, pool_cls: str) -> None:
        self.app, self.pool_cls = app, pool_cls


@pytest.mark.parametrize(("pool", "tracked"), [("prefork", True), ("gevent", False)])
async def test_celery_green_pools_run_tasks_untracked(
    redis_url: str, store: JobStore, pool: str, tracked: bool
) -> None:
    app = Celery("pools", broker="memory://")
    app.conf.task_always_eager = True
    tracking = track(app, redis_url)
    # What `celery worker --pool <pool>` announces when it starts (its WorkController).
    signals.worker_init.send(sender=StartingWorker(app, f"celery.concurrency.{pool}"))
    try:

        @app.task
        def add(a: int, b: int) -> int:
            return a + b

        result = await anyio.to_thread.run_sync(lambda: add.delay(2, 3))
        assert result.get() == 5
        jobs = [snapshot.job_id for snapshot in await store.list_jobs()]
        assert (result.id in jobs) is tracked
    finally:
        tracking.untrack()
        app.close()
