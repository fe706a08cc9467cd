"""`progress-hub watch` against a real hub: exit codes, printed lines, stream and polling."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from rich.console import Console

from progress_hub import watch
from progress_hub.embedded import free_port
from tests.conditions import wait_until
from tests.conftest import HubFactory
from tests.hub import ThreadHub

DEADLINE = 20.0
POLL_ARGS = {"stream": [], "poll": ["--poll", "--interval", "0.05"]}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    watch.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["watch", *argv])


class Run:
    """One `watch` run in a thread, printing into a buffer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.buffer = io.StringIO()
        self.exit_code: int | None = None
        console = Console(file=self.buffer, force_terminal=False, width=200)
        self.thread = threading.Thread(target=self._run, args=(args, console), daemon=True)

    def _run(self, args: argparse.Namespace, console: Console) -> None:
        self.exit_code = watch.run(args, console=console)

    @property
    def output(self) -> str:
        return self.buffer.getvalue()

    def wait(self) -> int:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"watch still running; printed:\n{self.output}"
        assert self.exit_code is not None
        return self.exit_code


@contextmanager
def watching(*argv: str) -> Iterator[Run]:
    run = Run(parse(*argv))
    run.thread.start()
    yield run


def publisher(hub: ThreadHub, job_id: str) -> Callable[..., None]:
    def publish(**update: Any) -> None:
        response = httpx.post(f"{hub.url}/api/jobs/{job_id}/events", json=update, timeout=5)
        assert response.status_code == 202, response.text

    return publish


@pytest.mark.parametrize(
    ("ending", "exit_code", "printed"),
    [
        ({"status": "completed"}, 0, "✓ job-1 completed"),
        (
            {"status": "failed", "error": "Chunk 5 (pages 101-125) failed: timeout"},
            1,
            "✗ job-1 failed: Chunk 5 (pages 101-125) failed: timeout",
        ),
        ({"status": "cancelled"}, 1, "✗ job-1 cancelled"),
    ],
)
@pytest.mark.parametrize("mode", ["stream", "poll"])
def test_watch_exits_with_the_job_outcome(
    hub: ThreadHub, ending: dict[str, Any], exit_code: int, printed: str, mode: str
) -> None:
    publish = publisher(hub, "job-1")
    publish(status="running", stage="extract", progress=10, message="Reading")
    with watching("job-1", "--url", hub.url, *POLL_ARGS[mode]) as run:
        wait_until(lambda: "job-1  running  10%" in run.output, DEADLINE, run.output)
        publish(progress=60, message="Halfway", stage="process")
        wait_until(lambda: "60%" in run.output, DEADLINE, run.output)
        publish(**ending)
        assert run.wait() == exit_code
    assert printed in run.output


def test_watch_unknown_job_exits_2(hub: ThreadHub) -> None:
    with watching("no-such-job", "--url", hub.url) as run:
        assert run.wait() == 2
    assert "job no-such-job is unknown or has expired" in run.output


@pytest.mark.parametrize(
    ("token_args", "says"),
    [
        (["--token", "forged"], "the token given may not read job job-1 (HTTP 403)"),
        ([], "the hub needs a subscriber token to read job job-1 (HTTP 403): pass --token"),
    ],
    ids=["wrong-token", "no-token"],
)
def test_watch_refused_token_exits_2_saying_whether_a_token_was_given(
    start_hub: HubFactory, token_args: list[str], says: str
) -> None:
    hub = start_hub(subscriber_secret="s3cret")
    with watching("job-1", "--url", hub.url, *token_args) as run:
        assert run.wait() == 2
    assert says in run.output


def test_watch_against_a_closed_port_exits_3_with_one_line_in_the_given_time() -> None:
    # As a user runs it (the command, its stderr): nothing listens on the port.
    port = free_port()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "progress_hub.cli", "watch", "job-1"]
        + ["--url", f"http://127.0.0.1:{port}", "--give-up-after", "1.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    took = time.monotonic() - started
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot reach the hub at http://127.0.0.1:{port} for 1.5 s" in lines[0]
    assert "Connection refused" in lines[0]
    # The documented bound (docs/dashboard.md): --give-up-after, plus one connect attempt
    # (refused at once here) and the interpreter's start.
    assert 1.5 <= took < 1.5 + 8, took


def test_watch_chunk_counters_and_stage_lines(hub: ThreadHub) -> None:
    publish = publisher(hub, "ocr-1")
    publish(status="running", message="Splitting")
    with watching("ocr-1", "--url", hub.url) as run:
        wait_until(lambda: "ocr-1  running" in run.output, DEADLINE, run.output)
        publish(stage="chunks", chunks={"total": 17, "completed": 10, "failed": 1})
        wait_until(lambda: "10/17, 1 failed" in run.output, DEADLINE, run.output)
        publish(status="completed")
        assert run.wait() == 0


@pytest.mark.parametrize("mode", ["stream", "poll"])
def test_watch_all_until_idle_shows_every_job(hub: ThreadHub, mode: str) -> None:
    first, second = publisher(hub, "a-1"), publisher(hub, "b-2")
    first(status="running", progress=5)
    second(status="running", progress=50)
    argv = ["--all", "--until-idle", "--url", hub.url, *POLL_ARGS[mode]]
    with watching(*argv) as run:
        first(status="completed")
        second(status="failed", error="boom")
        assert run.wait() == 0
    assert "a-1" in run.output and "b-2" in run.output
    assert "boom" in run.output


def test_watch_needs_a_job_or_all() -> None:
    assert watch.run(parse(), console=Console(file=io.StringIO())) == 2
