"""A Celery task whose hub Redis is unreachable still runs and returns (eager, in-process)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery

from progress_hub.embedded import free_port
from pubsub.celery import current_tracker, track


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
