"""The RQ classes and job functions the integration tests run in a real `rq worker`.

The worker and the test share TEST_PROGRESS_URL (the jobs' database) from the
environment the test sets.
"""

from __future__ import annotations

import os
import time

from rq import Retry, get_current_job

from pubsub.rq import ProgressQueue, ProgressWorker, current_tracker

PROGRESS_URL = os.environ.get("TEST_PROGRESS_URL", "memory://")
# Bounds every loop below: a job the test fails to stop still ends on its own.
MAX_SECONDS = 20.0


class Queue(ProgressQueue):
    """The producers' queue class."""

    progress_url = PROGRESS_URL


class Worker(ProgressWorker):
    """`rq worker -w tests.integrations.rq_tasks.Worker`."""

    progress_url = PROGRESS_URL
    progress_options = {"cancel_poll_interval": 0.2}


def ocr(chunks: int) -> dict[str, int]:
    """Stages and chunks, then a JSON result (enqueued with the ocr pipeline)."""
    job = current_tracker()
    job.stage("split")
    job.chunks(chunks)
    for index in range(chunks):
        job.chunk_done(index, index * 10 + 1, index * 10 + 10)
    job.merge()
    return {"chunks": chunks}


def broken(pages: int) -> None:
    """Fails with a sentence."""
    current_tracker().set(10, "Opening the file")
    raise ValueError(f"page {pages} is unreadable")


def flaky() -> str:
    """Fails while RQ has retries left for it (enqueued with `Retry(max=2)`)."""
    rq_job = get_current_job()
    assert rq_job is not None
    left = rq_job.retries_left or 0
    current_tracker().set(30, f"Attempt with {left} retries left")
    if left:
        raise ConnectionError(f"upstream timed out ({left} retries left)")
    return "fetched"


def wait_forever() -> None:
    """Beats until stopped or cancelled (each beat is a tracker call that may raise)."""
    job = current_tracker()
    deadline = time.monotonic() + MAX_SECONDS
    step = 0
    while time.monotonic() < deadline:
        step += 1
        job.message(f"Beat {step}")
        time.sleep(0.05)


def retry_by_return() -> object:
    """Asks RQ for one more attempt by returning `Retry` (RQ 2+), then succeeds."""
    rq_job = get_current_job()
    assert rq_job is not None
    if not rq_job.number_of_retries:
        return Retry(max=1)
    return "second attempt"
