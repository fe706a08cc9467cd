"""The milestone gate (docs/api.md §3) over HTTP on real Redis, including a property test."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hub import ThreadHub

MILESTONES = (25, 50, 75, 100)
_job_numbers = itertools.count()


def _publish(http: httpx.Client, job_id: str, **body: Any) -> None:
    response = http.post(f"/api/jobs/{job_id}/events", json=body)
    assert response.status_code == 202, response.text


def _gate(http: httpx.Client, job_id: str, client: str = "web") -> httpx.Response:
    return http.get(f"/api/jobs/{job_id}/milestone", params={"client": client})


def _answer(response: httpx.Response) -> Any:
    """What a polling client makes of one gate answer."""
    if response.status_code == 204:
        return 204
    if response.headers["content-type"].startswith("text/plain"):
        return (response.status_code, response.text)
    return (response.status_code, response.json())


def _processing(progress: float, milestone: int, calls: int) -> tuple[int, dict[str, Any]]:
    return (
        200,
        {
            "status": "processing",
            "progress": progress,
            "percentage": round(progress),
            "milestone": milestone,
            "api_call_count": calls,
        },
    )


def test_milestone_gate_follows_the_issue_sequence(hub: ThreadHub) -> None:
    answers = []
    with httpx.Client(base_url=hub.url) as http:
        for progress in (0, 15, 30, 45, 55, 80):
            _publish(http, "gate-1", status="running", progress=progress)
            answers.append(_answer(_gate(http, "gate-1")))
        _publish(http, "gate-1", status="completed", result="The summary text.")
        answers.append(_answer(_gate(http, "gate-1")))

    assert answers == [
        204,
        204,
        _processing(30, 25, 3),
        204,
        _processing(55, 50, 5),
        _processing(80, 75, 6),
        (200, "The summary text."),
    ]


def test_milestone_gate_gives_one_milestone_per_call_after_a_jump(hub: ThreadHub) -> None:
    with httpx.Client(base_url=hub.url) as http:
        _publish(http, "gate-2", status="running", progress=20)
        first = _answer(_gate(http, "gate-2"))
        _publish(http, "gate-2", progress=60)
        answers = [_answer(_gate(http, "gate-2")) for _ in range(3)]
        other = _answer(_gate(http, "gate-2", client="mobile"))

    assert first == 204
    assert answers == [_processing(60, 25, 2), _processing(60, 50, 3), 204]
    assert other == _processing(60, 25, 1), "each client has its own cursor"


def test_milestone_gate_reports_failure_and_unknown_jobs(hub: ThreadHub) -> None:
    with httpx.Client(base_url=hub.url) as http:
        _publish(http, "gate-3", status="running", progress=42)
        _publish(http, "gate-3", status="failed", error="Chunk 5 (pages 101-125) failed: timeout")
        failed = _answer(_gate(http, "gate-3"))
        unknown = _gate(http, "no-such-job")

    assert failed == (
        400,
        {
            "status": "failed",
            "error": "Chunk 5 (pages 101-125) failed: timeout",
            "progress": 42,
            "percentage": 42,
        },
    )
    assert unknown.status_code == 404


progress_sequences = st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=8).map(
    sorted
)
polls_per_update = st.lists(st.integers(1, 3), min_size=8, max_size=8)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sequence=progress_sequences, polls=polls_per_update)
def test_milestone_gate_returns_each_reached_milestone_once_in_order(
    hub: ThreadHub, sequence: list[float], polls: list[int]
) -> None:
    job_id = f"prop-{next(_job_numbers)}"
    returned: dict[str, list[int]] = {"a": [], "b": []}
    with httpx.Client(base_url=hub.url) as http:

        def poll(client: str) -> bool:
            answer = _answer(_gate(http, job_id, client))
            if answer == 204:
                return False
            assert answer[0] == 200 and answer[1]["status"] == "processing", answer
            returned[client].append(answer[1]["milestone"])
            return True

        for progress, times in zip(sequence, polls, strict=False):
            _publish(http, job_id, status="running", progress=progress)
            for _ in range(times):
                poll("a")
            poll("b")
        # Afterwards each client keeps polling until told to wait: it catches up.
        for client in returned:
            while poll(client):
                pass
        final = http.get(f"/api/jobs/{job_id}").json()["progress"]  # as stored, rounded

    reached = [m for m in MILESTONES if m <= final]
    assert returned == {"a": reached, "b": reached}
