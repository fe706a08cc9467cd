"""`pubsub.celery.track`: a real Celery worker (prefork, 2 children) on the private Redis.

Every task below is plain Celery code; the jobs appear through the signals alone.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.integrations.conftest import (
    CELERY_TASKS,
    Redis,
    celery_workers,
    history,
    job,
    wait_for_status,
)

TASKS_MODULE = CELERY_TASKS


@pytest.fixture(scope="module")
def celery_env(private_redis: Redis, progress_url: str) -> dict[str, str]:
    """What the producer (this process) and the worker share: where everything lives."""
    return {
        "TEST_CELERY_BROKER": private_redis.url(1),
        "TEST_CELERY_BACKEND": private_redis.url(2),
        "TEST_PROGRESS_URL": progress_url,
        }


@pytest.fixture(scope="module")
def tasks(celery_env: dict[str, str]) -> Iterator[ModuleType]:
    """The task module as a producer imports it (so `track()` runs here too)."""
    saved = {name: os.environ.get(name) for name in celery_env}
    os.environ.update(celery_env)
    try:
        module = importlib.import_module(TASKS_MODULE)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield module
    module.tracking.untrack()  # its Redis stops with the module
    module.app.close()


@pytest.fixture(scope="module")
def worker(
    celery_env: dict[str, str], tasks: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Two workers for the module: prefork with 2 children on the default queue, and
    `--pool threads` on the `threads` queue."""
    folder = tmp_path_factory.mktemp("celery-workers")
    with celery_workers(celery_env, folder, [("prefork", "celery"), ("threads", "threads")]):
        yield


def statuses(events: list[dict[str, Any]]) -> list[str]:
    """The job's statuses in order, repeats folded."""
    folded: list[str] = []
    for event in events:
        if not folded or folded[-1] != event["status"]:
            folded.append(event["status"])
    return folded


def test_celery_task_is_a_job_from_delay_to_result(
    tasks: ModuleType, worker: None, http: httpx.Client
) -> None:
    result = tasks.ocr.delay(5)

    created = job(http, result.id)
    assert created is not None, "the job must exist when .delay() returns"
    first = history(http, result.id)[0]
    assert first["status"] == "queued"
    assert first["pipeline"] == "ocr"
    assert first["meta"] == {"task": f"{TASKS_MODULE}.ocr", "queue": "celery"}

    done = wait_for_status(http, result.id, ["completed", "failed", "cancelled"])
    assert done["status"] == "completed", done
    assert done["chunks"]["completed"] == 5 and done["progress"] == 100
    assert http.get(f"/api/jobs/{result.id}/result").json() == {"chunks": 5}
    seen = history(http, result.id)
    assert statuses(seen) == ["queued", "running", "completed"]
    assert {"split", "chunks", "merge"} <= {event["stage"] for event in seen}


def test_celery_failing_task_fails_the_job_with_its_error(
    tasks: ModuleType, worker: None, http: httpx.Client
) -> None:
    result = tasks.broken.delay(7)

    done = wait_for_status(http, result.id, ["completed", "failed", "cancelled"])
    assert done["status"] == "failed"
    assert done["error"] == "ValueError: page 7 is unreadable"


def test_celery_retry_reads_retrying_then_completes(
    tasks: ModuleType, worker: None, http: httpx.Client, progress_url: str
) -> None:
    result = tasks.flaky.delay(progress_url)

    done = wait_for_status(http, result.id, ["completed", "failed", "cancelled"])
    assert done["status"] == "completed", done
    assert done["error"] is None
    seen = history(http, result.id)
    retries = [
        (e["attempt"], e["max_attempts"], e["error"]) for e in seen if e["status"] == "retrying"
    ]
    assert (2, 3, "ConnectionError: upstream timed out") in retries
    # The second retry leaves a `with SyncTracker(...)` block: still a retry, not a failure.
    assert (3, 3, "ConnectionError: upstream timed out again") in retries
    assert "failed" not in statuses(seen)
    assert statuses(seen) == ["queued", "running", "retrying", "running", "retrying", "running",
                              "completed"]
    assert any(e["message"] == "Attempt 3" for e in seen), "the last attempt's updates count"


def test_celery_revoke_cancels_the_job(
    tasks: ModuleType, worker: None, http: httpx.Client
) -> None:
    result = tasks.wait_forever.delay()
    wait_for_status(http, result.id, ["running"])

    tasks.app.control.revoke(result.id, terminate=True)

    done = wait_for_status(http, result.id, ["completed", "failed", "cancelled"])
    assert done["status"] == "cancelled"
    assert done["message"] == "Revoked (terminated)"


def test_celery_cancel_from_http_stops_the_task(
    tasks: ModuleType, worker: None, http: httpx.Client
) -> None:
    result = tasks.wait_forever.delay()
    wait_for_status(http, result.id, ["running"])

    asked = time.monotonic()
    response = http.post(f"/api/jobs/{result.id}/cancel")
    assert response.status_code == 202, response.text

    done = wait_for_status(http, result.id, ["completed", "failed", "cancelled"])
    assert done["status"] == "cancelled"
    # The task itself stopped (it would beat for 20 s): Celery saw JobCancelled raised.
    result.get(timeout=10, propagate=False)
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == "JobCancelled"
    assert time.monotonic() - asked < 10


def test_celery_twenty_tasks_at_once_all_end_right(
    tasks: ModuleType, worker: None, http: httpx.Client
) -> None:
    expected: dict[str, str] = {}
    for index in range(20):
        if index % 5 == 4:
            expected[tasks.broken.delay(index).id] = "failed"
        else:
            expected[tasks.ocr.delay(3 + index % 3).id] = "completed"

    ended = {
        job_id: wait_for_status(http, job_id, ["completed", "failed", "cancelled"], timeout=30)
        for job_id in expected
    }
    assert {job_id: snap["status"] for job_id, snap in ended.items()} == expected
    for snap in ended.values():
        if snap["status"] == "completed":
            assert snap["chunks"]["completed"] == snap["chunks"]["total"]
        else:
            assert snap["error"].startswith("ValueError: page ")


def test_celery_redelivered_task_resumes_its_job_or_leaves_an_ended_one(
    tasks: ModuleType, worker: None, http: httpx.Client
) -> None:
    # Both at once: the prefork parent can take seconds to notice a child killed by
    # SIGKILL, and the two waits then overlap.
    resumed = tasks.lost_once.delay(False)  # lost while running: the job is active
    finished = tasks.lost_once.delay(True)  # lost after ending its job, before the ack

    assert resumed.get(timeout=20) == "second run"
    assert finished.get(timeout=20) == "second run"

    for sent, result in ((resumed, "second run"), (finished, "first run")):
        done = wait_for_status(http, sent.id, ["completed", "failed", "cancelled"])
        assert done["status"] == "completed"
        assert http.get(f"/api/jobs/{sent.id}/result").text == result
        assert "failed" not in statuses(history(http, sent.id))
    # The duplicate run of the ended job published nothing: its job still reads run one.
    assert job(http, finished.id)["message"] == "First run"  # type: ignore[index]


def test_celery_threads_pool_tracks_every_task(
    tasks: ModuleType, worker: None, http: httpx.Client
) -> None:
    sent = [tasks.ocr.apply_async((4,), queue="threads") for _ in range(4)]
    failing = tasks.broken.apply_async((3,), queue="threads")

    for result in sent:
        done = wait_for_status(http, result.id, ["completed", "failed", "cancelled"])
        assert (done["status"], done["chunks"]["completed"]) == ("completed", 4)
        assert done["meta"]["queue"] == "threads"
    done = wait_for_status(http, failing.id, ["completed", "failed", "cancelled"])
    assert (done["status"], done["error"]) == ("failed", "ValueError: page 3 is unreadable")
