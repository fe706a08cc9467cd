"""app/follow.py against a real hub: falling back from streaming to polling."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from progress_hub import follow
from tests.conditions import wait_until
from tests.conftest import HubFactory

DEADLINE = 20.0


def test_job_watch_falls_back_to_polling_when_streams_are_turned_away(
    start_hub: HubFactory,
) -> None:
    # One connection allowed and held by us: every stream gets 200, a long jittered
    # retry: and a close (docs/api.md §3, over the connection limit), every poll a 503.
    hub = start_hub(max_connections=1)

    def publish(**update: Any) -> None:
        response = httpx.post(f"{hub.url}/api/jobs/job-1/events", json=update, timeout=5)
        assert response.status_code == 202, response.text

    publish(status="running", progress=30)
    modes: list[str] = []
    asked: list[float] = []

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        time.sleep(0.01)  # honour the order of events, not the length of the waits

    with (
        httpx.Client(base_url=hub.url, timeout=5) as client,
        client.stream("GET", "/api/events") as held,
    ):
        assert held.status_code == 200
        # The hub counts a stream once it has subscribed, which is when it sends
        # its opening snapshots: wait for one so the limit is surely reached.
        # (Keep the iterator referenced: a collected one closes the connection.)
        lines = held.iter_lines()
        while not next(lines).startswith("event: snapshot"):
            pass
        follower = follow.JobWatch(
            client, "job-1", lambda snapshot: None, modes.append, poll_interval=0.05, sleep=sleep
        )
        finished = threading.Thread(target=follower.follow, daemon=True)
        finished.start()
        # Three streams turned away, then polls, which the full hub answers with 503
        # (docs/api.md §7, PROGRESS_MAX_CONNECTIONS) until our stream leaves.
        failures = follow.STREAM_FAILURES_BEFORE_POLLING
        wait_until(lambda: len(modes) > failures, DEADLINE, f"modes: {modes}")
        held.close()
        wait_until(lambda: "polling" in modes, DEADLINE, f"modes: {modes}")
        # The follower's own polls take the one slot now and then: retry a refused publish.
        wait_until(
            lambda: (
                httpx.post(
                    f"{hub.url}/api/jobs/job-1/events", json={"status": "completed"}, timeout=5
                ).status_code
                == 202
            ),
            DEADLINE,
            "the final publish was never admitted",
        )
        finished.join(DEADLINE)
    assert not finished.is_alive(), f"still following; modes: {modes}"
    assert follower.snapshot is not None and follower.snapshot.status == "completed"
    assert modes[: follow.STREAM_FAILURES_BEFORE_POLLING] == ["reconnecting"] * 3
    assert "live" not in modes
    assert all(wait >= 5 for wait in asked[:3]), f"the hub's retry: hint is honoured: {asked}"
