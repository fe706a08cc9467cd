"""Fixtures for the worker integrations: one private Redis and one hub per test module.

Each module gets its own server (never the Redis at 127.0.0.1:6379), because its workers
live as long as the module does and keep their queues in it: the per-test `flushall` of
`tests/conftest.py` would pull the queues from under them. Database 0 holds the jobs,
database 1 the framework's queues, database 2 Celery's results.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from progress_hub.embedded import EmbeddedServer, stop_process
from progress_hub.settings import Settings
from tests.conditions import wait_until
from tests.hub import REPO, ThreadHub, run_hub

WORKER_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Redis:
    """The module's private server, by database."""

    server: EmbeddedServer

    def url(self, db: int) -> str:
        """The URL of database `db`."""
        return f"redis://127.0.0.1:{self.server.port}/{db}"


@pytest.fixture(scope="module")
def private_redis() -> Iterator[Redis]:
    """A Redis-compatible server for this module only."""
    with EmbeddedServer() as server:
        yield Redis(server)


@pytest.fixture(scope="module")
def progress_url(private_redis: Redis) -> str:
    """Where the jobs live (the hub's broker)."""
    return private_redis.url(0)


@pytest.fixture(scope="module")
def module_hub(progress_url: str) -> Iterator[ThreadHub]:
    """A hub on the module's Redis, loopback-open (no keys), as a developer runs it."""
    with run_hub(Settings(broker_url=progress_url)) as hub:
        yield hub


@pytest.fixture(scope="module")
def http(module_hub: ThreadHub) -> Iterator[httpx.Client]:
    """An HTTP client of the module's hub."""
    with httpx.Client(base_url=module_hub.url, timeout=10) as client:
        yield client


def job(http: httpx.Client, job_id: str) -> dict[str, Any] | None:
    """The job's snapshot as the hub serves it, or None while it does not exist."""
    response = http.get(f"/api/jobs/{job_id}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def history(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every retained snapshot of the job, oldest first."""
    response = http.get(f"/api/jobs/{job_id}/history")
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def wait_for_status(
    http: httpx.Client, job_id: str, statuses: Sequence[str], timeout: float = 15.0
) -> dict[str, Any]:
    """Wait until the job reads one of `statuses`; its snapshot then."""
    seen: list[dict[str, Any] | None] = [None]

    def reached() -> bool:
        seen[0] = job(http, job_id)
        return seen[0] is not None and seen[0]["status"] in statuses

    try:
        wait_until(reached, timeout, "")
    except AssertionError:
        raise AssertionError(
            f"job {job_id} never read {list(statuses)} within {timeout} s; last: {seen[0]}"
        ) from None
    snapshot = seen[0]
    assert snapshot is not None
    return snapshot


@dataclass
class Worker:
    """A worker process of a task framework, with its log for failure messages."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """What the worker printed so far."""
        return self.log.read_text(errors="replace")


def start_worker(args: Sequence[str], env: Mapping[str, str], log: Path) -> Worker:
    """Start `python -m <args>` from the repository, its output into `log`."""
    output = open(log, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        env={**os.environ, **env},
        cwd=REPO,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output.close()
    return Worker(process, log)


def wait_ready(worker: Worker, ready: Path) -> None:
    """Wait for the worker to create `ready`; stop it and show its output if it never does."""

    def started() -> bool:
        if worker.process.poll() is not None:
            raise RuntimeError(f"the worker exited early:\n{worker.output()}")
        return ready.exists()

    try:
        wait_until(started, WORKER_START_TIMEOUT, "")
    except AssertionError:
        stop_worker(worker)
        raise RuntimeError(f"the worker did not start:\n{worker.output()}") from None


def stop_worker(worker: Worker, sig: int = signal.SIGTERM) -> None:
    """Stop with `sig`, then kill what is left of its process group."""
    stop_process(worker.process, sig, 10)
    try:
        os.killpg(worker.process.pid, signal.SIGKILL)  # children it may have left
    except ProcessLookupError:
        pass


CELERY_TASKS = "tests.integrations.celery_tasks"


@contextmanager
def celery_workers(
    env: Mapping[str, str], folder: Path, pools: Sequence[tuple[str, str]]
) -> Iterator[list[Worker]]:
    """`celery worker` processes of the test app, one per (pool, queue), started side by
    side (2 children each); killed at the end, their queues dying with their Redis."""
    common = ["--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "INFO"]
    started: dict[Path, Worker] = {}
    try:
        for pool, queue in pools:
            ready = folder / f"{pool}-{queue}.ready"
            args = ["celery", "-A", CELERY_TASKS, "worker", "--pool", pool, "--concurrency", "2"]
            args += ["-Q", queue, "-n", f"{pool}-{queue}@%h", *common]
            started[ready] = start_worker(
                args, {**env, "TEST_CELERY_READY_FILE": str(ready)}, folder / f"{pool}.log"
            )
        for ready, worker in started.items():
            wait_ready(worker, ready)
        yield list(started.values())
    finally:
        for worker in started.values():
            stop_worker(worker, signal.SIGKILL)
