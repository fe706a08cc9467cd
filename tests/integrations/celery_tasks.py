"""The Celery app the integration tests run in a real worker (`celery -A ... worker`).

Test-only configuration comes from the environment the test sets for the worker:
TEST_CELERY_BROKER and TEST_CELERY_BACKEND (databases of the private Redis) and
TEST_PROGRESS_URL (the jobs' database).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import Celery, Task, signals

from pubsub import SyncTracker
from pubsub.celery import current_tracker, track

BROKER = os.environ.get("TEST_CELERY_BROKER", "memory://")
BACKEND = os.environ.get("TEST_CELERY_BACKEND")
PROGRESS_URL = os.environ.get("TEST_PROGRESS_URL", "memory://")
READY_FILE = os.environ.get("TEST_CELERY_READY_FILE")
# Bounds every loop below: a task the test fails to stop still ends on its own.
MAX_SECONDS = 20.0

app = Celery("progress_tests", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
tracking = track(app, PROGRESS_URL, cancel_poll_interval=0.2)


@signals.worker_ready.connect
def _say_ready(**_: Any) -> None:
    if READY_FILE:
        Path(READY_FILE).write_text(str(os.getpid()))


@app.task(progress_pipeline="ocr")
def ocr(chunks: int) -> dict[str, int]:
    """Stages and chunks, then a JSON result."""
    job = current_tracker()
    job.stage("split")
    job.chunks(chunks)
    for index in range(chunks):
        job.chunk_done(index, index * 10 + 1, index * 10 + 10)
    job.merge()
    return {"chunks": chunks}


@app.task
def broken(pages: int) -> None:
    """Fails with a sentence."""
    current_tracker().set(10, "Opening the file")
    raise ValueError(f"page {pages} is unreadable")


@app.task(bind=True, max_retries=2)
def flaky(self: Task, url: str) -> str:
    """Retries twice (once from inside a `with SyncTracker` block), then succeeds."""
    job = current_tracker()
    job.set(30 + 10 * self.request.retries, f"Attempt {self.request.retries + 1}")
    if self.request.retries == 0:
        raise self.retry(countdown=0.2, exc=ConnectionError("upstream timed out"))
    if self.request.retries == 1:
        with SyncTracker(url, self.request.id):
            raise self.retry(countdown=0.2, exc=ConnectionError("upstream timed out again"))
    return "fetched"


@app.task
def wait_forever() -> None:
    """Beats until revoked or cancelled (each beat is a tracker call that may raise)."""
    job = current_tracker()
    job.start("Waiting")
    deadline = time.monotonic() + MAX_SECONDS
    step = 0
    while time.monotonic() < deadline:
        step += 1
        job.message(f"Beat {step}")
        time.sleep(0.05)


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
def lost_once(self: Task, finish_first: bool) -> str:
    """Its first run dies with its process (SIGKILL) and Celery redelivers the message.

    With `finish_first`, the first run ends the job itself before dying, as a worker lost
    between its last update and the ack would.
    """
    job = current_tracker()
    if self.request.delivery_info.get("redelivered"):
        job.set(80, "Second run")
        return "second run"
    job.set(40, "First run")
    if finish_first:
        job.complete("first run")
    job.flush(timeout=5)
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"
