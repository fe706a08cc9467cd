"""`pubsub.rq`: a real `rq worker` (ProgressWorker, a work horse per job) on the private Redis."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import redis
from rq import Retry
from rq.command import send_stop_job_command
from rq.job import Job
from rq.worker import Worker as RQWorker

from pubsub.rq import cancel
from tests.conditions import wait_until
from tests.integrations import rq_tasks
from tests.integrations.conftest import (
    Redis,
    history,
    job,
    start_worker,
    stop_worker,
    wait_for_status,
)

ENDED = ["completed", "failed", "cancelled"]


@pytest.fixture(scope="module")
def rq_redis(private_redis: Redis) -> Iterator[redis.Redis]:
    """RQ's connection: the module's Redis, database 1."""
    client = redis.Redis.from_url(private_redis.url(1))
    yield client
    client.close()


@pytest.fixture(scope="module")
def queue(rq_redis: redis.Redis, progress_url: str) -> rq_tasks.Queue:
    """The producers' queue; its class reads TEST_PROGRESS_URL at import, so set it here."""
    rq_tasks.Queue.progress_url = progress_url
    return rq_tasks.Queue("default", connection=rq_redis)


@pytest.fixture(scope="module")
def worker(
    private_redis: Redis,
    progress_url: str,
    rq_redis: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """`rq worker` for the whole module, its log kept for failure messages."""
    log = tmp_path_factory.mktemp("rq") / "worker.log"
    started = start_worker(
        ["rq.cli", "worker", "-u", private_redis.url(1), "-w", f"{rq_tasks.__name__}.Worker",
         "default"],
        {"TEST_PROGRESS_URL": progress_url},
        log,
    )
    try:
        wait_until(lambda: RQWorker.count(connection=rq_redis) > 0, 30, started.output())
        yield
    finally:
        stop_worker(started, signal.SIGKILL)  # its queues die with the module's Redis


def test_rq_job_is_a_job_from_enqueue_to_result(
    queue: rq_tasks.Queue, worker: None, http: httpx.Client
) -> None:
    sent = queue.enqueue(rq_tasks.ocr, 4, meta={"progress_pipeline": "ocr"})

    first = history(http, sent.id)[0]
    assert (first["status"], first["pipeline"]) == ("queued", "ocr")
    assert first["meta"] == {"function": f"{rq_tasks.__name__}.ocr", "queue": "default"}

    done = wait_for_status(http, sent.id, ENDED)
    assert (done["status"], done["chunks"]["completed"], done["stage"]) == ("completed", 4, "merge")
    assert http.get(f"/api/jobs/{sent.id}/result").json() == {"chunks": 4}
    assert [e["status"] for e in history(http, sent.id)][:2] == ["queued", "running"]


def test_rq_failing_job_fails_with_its_error(
    queue: rq_tasks.Queue, worker: None, http: httpx.Client
) -> None:
    sent = queue.enqueue(rq_tasks.broken, 7)

    done = wait_for_status(http, sent.id, ENDED)
    assert (done["status"], done["error"]) == ("failed", "ValueError: page 7 is unreadable")


def test_rq_retry_reads_retrying_then_completes(
    queue: rq_tasks.Queue, worker: None, http: httpx.Client
) -> None:
    sent = queue.enqueue(rq_tasks.flaky, retry=Retry(max=2))

    done = wait_for_status(http, sent.id, ENDED)
    assert done["status"] == "completed", done
    assert http.get(f"/api/jobs/{sent.id}/result").text == "fetched"
    retries = [(e["attempt"], e["max_attempts"], e["error"]) for e in history(http, sent.id)
               if e["status"] == "retrying"]
    assert retries == [
        (2, 3, "ConnectionError: upstream timed out (2 retries left)"),
        (3, 3, "ConnectionError: upstream timed out (1 retries left)"),
    ]


def test_rq_stopped_job_is_cancelled(
    queue: rq_tasks.Queue, worker: None, http: httpx.Client, rq_redis: redis.Redis
) -> None:
    sent = queue.enqueue(rq_tasks.wait_forever)
    wait_for_status(http, sent.id, ["running"])
    # The job reads `running` once the work horse opens its tracker, a moment before RQ
    # records the worker that runs it; RQ refuses to stop a job with no worker recorded.
    wait_until(
        lambda: Job.fetch(sent.id, connection=rq_redis).worker_name,
        10,
        "RQ did not record the job's worker",
    )

    send_stop_job_command(rq_redis, sent.id)

    done = wait_for_status(http, sent.id, ENDED)
    assert (done["status"], done["message"]) == ("cancelled", "Stopped")


def test_rq_cancel_from_http_stops_the_job(
    queue: rq_tasks.Queue, worker: None, http: httpx.Client, rq_redis: redis.Redis
) -> None:
    sent = queue.enqueue(rq_tasks.wait_forever)
    wait_for_status(http, sent.id, ["running"])

    asked = time.monotonic()
    assert http.post(f"/api/jobs/{sent.id}/cancel").status_code == 202

    done = wait_for_status(http, sent.id, ENDED)
    assert done["status"] == "cancelled"
    # The job function itself stopped, with JobCancelled, long before its 20 s.
    wait_until(lambda: Job.fetch(sent.id, connection=rq_redis).is_failed, 10, "not stopped")
    outcome = Job.fetch(sent.id, connection=rq_redis).latest_result()
    assert outcome is not None and "JobCancelled" in (outcome.exc_string or "")
    assert time.monotonic() - asked < 10


def test_rq_job_returning_retry_reads_retrying_then_completes(
    queue: rq_tasks.Queue, worker: None, http: httpx.Client
) -> None:
    sent = queue.enqueue(rq_tasks.retry_by_return)

    done = wait_for_status(http, sent.id, ENDED)
    assert done["status"] == "completed", done
    assert http.get(f"/api/jobs/{sent.id}/result").text == "second attempt"
    retrying = [e for e in history(http, sent.id) if e["status"] == "retrying"]
    assert [(e["attempt"], e["max_attempts"]) for e in retrying] == [(2, 2)]


def test_rq_many_jobs_at_once_all_end_right(
    queue: rq_tasks.Queue, worker: None, http: httpx.Client
) -> None:
    expected = {}
    for index in range(10):
        if index % 5 == 4:
            expected[queue.enqueue(rq_tasks.broken, index).id] = "failed"
        else:
            expected[queue.enqueue(rq_tasks.ocr, 2 + index % 3).id] = "completed"

    ended = {job_id: wait_for_status(http, job_id, ENDED)["status"] for job_id in expected}
    assert ended == expected


def test_rq_cancel_before_it_runs_cancels_both(
    queue: rq_tasks.Queue, http: httpx.Client, rq_redis: redis.Redis, progress_url: str
) -> None:
    later = queue.enqueue_in(timedelta(hours=1), rq_tasks.broken, 1)
    assert job(http, later.id)["status"] == "queued"  # type: ignore[index]

    cancel(later, progress_url)

    assert job(http, later.id)["status"] == "cancelled"  # type: ignore[index]
    assert Job.fetch(later.id, connection=rq_redis).is_canceled
