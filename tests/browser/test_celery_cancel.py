"""A person cancels a running Celery task from the dashboard, and the task stops."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from celery import Celery
from playwright.sync_api import Page, expect

from progress_hub.embedded import EmbeddedServer
from tests.conditions import wait_until
from tests.conftest import HubFactory
from tests.integrations.conftest import CELERY_TASKS, Worker, celery_workers

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def celery_worker(
    redis_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], Worker]]:
    """A prefork worker whose queues are on a server of its own and whose jobs go to the
    session's Redis, the one the page's hub reads (its per-test flush leaves queues alone)."""
    with EmbeddedServer() as queues:
        env = {
            "TEST_CELERY_BROKER": f"redis://127.0.0.1:{queues.port}/1",
            "TEST_CELERY_BACKEND": f"redis://127.0.0.1:{queues.port}/2",
            "TEST_PROGRESS_URL": redis_server.url,
        }
        folder = tmp_path_factory.mktemp("celery-browser")
        with celery_workers(env, folder, [("prefork", "celery")]) as (worker,):
            yield env, worker


def send(env: dict[str, str], task: str) -> str:
    """Start a task by name from a plain producer app (the worker's app makes the job)."""
    producer = Celery("producer", broker=env["TEST_CELERY_BROKER"])
    try:
        task_id: str = producer.send_task(f"{CELERY_TASKS}.{task}").id
        return task_id
    finally:
        producer.close()


def running(hub_url: str, job_id: str) -> bool:
    response = httpx.get(f"{hub_url}/api/jobs/{job_id}", timeout=5)
    return response.status_code == 200 and response.json()["status"] == "running"


def test_cancel_from_the_dashboard_stops_a_running_celery_task(
    page: Page, start_hub: HubFactory, celery_worker: tuple[dict[str, str], Worker]
) -> None:
    env, worker = celery_worker
    hub = start_hub()
    task_id = send(env, "wait_forever")
    # A job sent by name from an untracked producer appears when the worker starts it.
    wait_until(lambda: running(hub.url, task_id), 15, "the worker never started the task")

    page.goto(f"{hub.url}/#/jobs/{task_id}")
    job = page.locator("#job-detail .job")
    expect(job.locator(".badge")).to_have_text("running")
    job.get_by_role("button", name=f"Cancel job {task_id}").click()
    job.get_by_role("button", name="Yes, cancel it").click()

    expect(job.locator(".badge")).to_have_text("cancelled")
    expect(job.locator(".message")).to_have_text("Cancelled on request")
    # The task stopped at its next tracker call (it would beat for 20 s otherwise).
    wait_until(
        lambda: f"wait_forever[{task_id}] raised unexpected: JobCancelled" in worker.output(),
        10,
        "the task did not stop with JobCancelled",
    )
