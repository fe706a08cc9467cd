"""`POST /api/jobs/{job_id}/cancel` (docs/api.md §9): the request, its stream, who may ask."""

from __future__ import annotations

import httpx
import pytest

from progress_hub.cli import main as cli_main
from pubsub.tokens import issue_token, verify_token
from tests.conftest import HubFactory
from tests.hub import ThreadHub
from tests.sse import data, open_stream

KEY = "publish-key-0123456789"
SECRET = "subscriber-secret-0123456789"


def _token(jobs: list[str], *, can_cancel: bool, secret: str = SECRET) -> str:
    return issue_token(secret, jobs, 60, can_cancel=can_cancel)


async def test_cancel_is_streamed_to_every_subscriber_and_the_job_keeps_running(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/api/jobs/k1/events", json={"status": "running", "progress": 40})
    async with (
        open_stream(client, "/api/jobs/k1/events") as first,
        open_stream(client, "/api/events?job=k1") as second,
    ):
        assert data(await first.next())["cancel_requested"] is False
        assert data(await second.next())["cancel_requested"] is False
        answer = await client.post("/api/jobs/k1/cancel")
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"job_id": "k1", "seq": 2}
        for stream in (first, second):
            event = await stream.next()
            snapshot = data(event)
            assert (event.event, snapshot["seq"]) == ("progress", 2)
            assert (snapshot["cancel_requested"], snapshot["status"]) == (True, "running")
        assert first.events[-1].id == "2"
    polled = (await client.get("/api/jobs/k1")).json()
    assert (polled["seq"], polled["cancel_requested"], polled["progress"]) == (2, True, 40)


async def test_cancel_of_an_unknown_or_ended_job_or_a_bad_id_is_refused(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/api/jobs/k2/events", json={"status": "completed"})
    unknown = await client.post("/api/jobs/nobody/cancel")
    ended = await client.post("/api/jobs/k2/cancel")
    bad = await client.post("/api/jobs/-bad/cancel")
    assert [unknown.status_code, ended.status_code, bad.status_code] == [404, 409, 400]
    assert ended.json()["status"] == "completed"
    assert (await client.get("/api/jobs/k2")).json()["cancel_requested"] is False


def configured_matrix() -> list[tuple[str, dict[str, str], dict[str, str], int]]:
    """Who asks, and the answer each gets. Built when the test runs: a token issued at
    collection would expire (60 s) before a test that runs late in a long session."""
    return [
        ("no credentials", {}, {}, 401),
        ("wrong publish key", {"Authorization": f"Bearer {KEY}x"}, {}, 403),
        ("token without the right", {}, {"token": _token(["k3"], can_cancel=False)}, 403),
        ("token for another job", {}, {"token": _token(["other"], can_cancel=True)}, 403),
        ("forged token", {}, {"token": _token(["k3"], can_cancel=True, secret="nope")}, 403),
        ("publish key", {"Authorization": f"Bearer {KEY}"}, {}, 202),
        ("token with the right", {}, {"token": _token(["k3"], can_cancel=True)}, 202),
        (
            "bearer token with the right",
            {"Authorization": f"Bearer {_token(['*'], can_cancel=True)}"},
            {},
            202,
        ),
    ]


async def test_cancel_needs_the_publish_key_or_a_token_with_the_cancel_right(
    start_hub: HubFactory,
) -> None:
    hub = start_hub(publish_key=KEY, subscriber_secret=SECRET)
    writer = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=hub.url) as http:
        for name, headers, params, status in configured_matrix():
            # A fresh job each time: an allowed request must be what set the flag.
            job = "k3"
            await http.delete(f"/api/jobs/{job}", headers=writer)
            created = await http.post("/api/jobs", json={"job_id": job}, headers=writer)
            assert created.status_code == 201
            answer = await http.post(f"/api/jobs/{job}/cancel", headers=headers, params=params)
            assert answer.status_code == status, f"{name}: {answer.text}"
            reader = {"token": _token(["*"], can_cancel=False)}
            flagged = (await http.get(f"/api/jobs/{job}", params=reader)).json()
            assert flagged["cancel_requested"] is (status == 202), name
            access = await http.get("/api/access", params={"job": job, **params}, headers=headers)
            assert access.json() == {"can_cancel": status == 202}, name


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 202), ({"X-Forwarded-For": "203.0.113.9"}, 403)],
    ids=["loopback", "relayed by a proxy"],
)
async def test_cancel_without_key_or_secret_is_for_loopback_clients_only(
    hub: ThreadHub, client: httpx.AsyncClient, headers: dict[str, str], status: int
) -> None:
    await client.post("/api/jobs/k4/events", json={"status": "running"})
    answer = await client.post("/api/jobs/k4/cancel", headers=headers)
    assert answer.status_code == status, answer.text
    access = await client.get("/api/access", headers=headers)
    assert access.json() == {"can_cancel": status == 202}


def test_cli_token_with_can_cancel_carries_the_right(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["token", "--secret", SECRET, "--job", "k5", "--can-cancel"]) == 0
    plain = issue_token(SECRET, ["k5"], 60)
    claims = verify_token(SECRET, capsys.readouterr().out.strip())
    assert (claims.jobs, claims.cancel, verify_token(SECRET, plain).cancel) == (["k5"], True, False)
