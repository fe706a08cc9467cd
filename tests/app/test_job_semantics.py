"""Server-side job semantics over HTTP on real Redis: ETA, stalls, retention, bounded keys."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest
import redis.asyncio as redis

from pubsub.brokers.keys import index_key, live_key, partition
from pubsub.publisher import Tracker
from pubsub.store import ACTIVE_TTL
from tests.conditions import eventually
from tests.conftest import HubFactory
from tests.sse import data, open_stream


async def _post(http: httpx.AsyncClient, job_id: str, **body: Any) -> dict[str, Any]:
    response = await http.post(f"/api/jobs/{job_id}/events", json=body)
    assert response.status_code == 202, response.text
    snapshot: dict[str, Any] = (await http.get(f"/api/jobs/{job_id}")).json()
    return snapshot


async def test_eta_is_null_until_meaningful_then_follows_the_rate_then_zero(
    client: httpx.AsyncClient,
) -> None:
    first = await _post(client, "eta-1", status="running", progress=10)
    assert first["eta_seconds"] is None, "no rate is known yet"

    progress = 10.0

    async def step() -> dict[str, Any]:
        nonlocal progress
        progress += 0.5
        return await _post(client, "eta-1", progress=progress)

    estimated = await eventually(
        step, lambda s: s["eta_seconds"] is not None, 10, "an ETA once a rate is observed"
    )

    # The average rate since the run started: (100 - p) * elapsed / gained.
    elapsed = estimated["updated_at"] - first["updated_at"]
    gained = estimated["progress"] - 10
    assert elapsed >= 1.0, "not before a second of history"
    assert estimated["eta_seconds"] == pytest.approx(
        (100 - estimated["progress"]) * elapsed / gained, abs=0.1
    )

    retrying = await _post(client, "eta-1", status="retrying", attempt=2, max_attempts=3)
    assert retrying["eta_seconds"] is None, "no estimate while waiting to retry"
    done = await _post(client, "eta-1", status="completed")
    assert (done["eta_seconds"], done["progress"]) == (0, 100)


@pytest.mark.parametrize("eta", [-1, "soon", 10_000_001])
async def test_eta_from_the_worker_is_checked_like_any_field(
    client: httpx.AsyncClient, eta: object
) -> None:
    response = await client.post("/api/jobs/eta-bad/events", json={"eta_seconds": eta})

    assert response.status_code == 400
    assert "eta_seconds" in response.json()["error"]


async def test_eta_from_the_worker_is_shown_while_it_runs(client: httpx.AsyncClient) -> None:
    running = await _post(client, "eta-own", status="running", progress=40, eta_seconds=12.5)
    assert running["eta_seconds"] == 12.5, "the worker's own estimate, at once"

    beat = await _post(client, "eta-own", heartbeat=True)
    assert beat["eta_seconds"] is None, "without one the hub's own rule applies again"

    done = await _post(client, "eta-own", status="completed", eta_seconds=99)
    assert done["eta_seconds"] == 0


async def test_stall_flag_reaches_open_streams_and_polls(start_hub: HubFactory) -> None:
    hub = start_hub(stall_after=0.3)
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
        await _post(http, "stall-1", status="running", stage="work", progress=40)
        events: list[tuple[str | None, dict[str, Any]]] = []
        async with open_stream(http, "/api/jobs/stall-1/events") as stream:
            while len(events) < 3:
                event = await stream.next(timeout=10)
                events.append((event.event, data(event)))
                if events[-1][1]["stalled"]:
                    polled = (await http.get("/api/jobs/stall-1")).json()
                    await http.post("/api/jobs/stall-1/events", json={"heartbeat": True})

    (first_kind, first), (stalled_kind, stalled), (_, revived) = events
    assert (first_kind, first["stalled"]) == ("snapshot", False)
    assert stalled_kind == "progress", "subscribers are told, not only the next poll"
    assert (stalled["seq"], stalled["status"], stalled["progress"]) == (
        first["seq"] + 1,
        "running",
        40,
    )
    assert stalled["eta_seconds"] is None
    assert polled["stalled"] is True
    assert (revived["stalled"], revived["seq"]) == (False, stalled["seq"] + 1), (
        "a heartbeat revives it"
    )


async def test_stall_flag_never_marks_finished_nor_retrying_jobs(start_hub: HubFactory) -> None:
    hub = start_hub(stall_after=0.2)
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
        await _post(http, "done-1", status="completed")
        await _post(http, "waiting-1", status="retrying", attempt=2, max_attempts=3)
        await _post(http, "quiet-1", status="running")

        async def quiet() -> dict[str, Any]:
            snapshot: dict[str, Any] = (await http.get("/api/jobs/quiet-1")).json()
            return snapshot

        await eventually(quiet, lambda s: s["stalled"], 5, "the running job stalls")
        finished = (await http.get("/api/jobs/done-1")).json()
        # A job waiting to retry is silent on purpose (docs/api.md §1: running or queued only).
        waiting = (await http.get("/api/jobs/waiting-1")).json()

    assert (finished["stalled"], finished["seq"]) == (False, 1)
    assert (waiting["stalled"], waiting["seq"]) == (False, 1)


async def test_retention_expires_finished_jobs_from_reads_and_the_list(
    start_hub: HubFactory, redis_url: str
) -> None:
    hub = start_hub(retention=1)
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
        await _post(http, "short-1", status="completed", result="the summary")
        await _post(http, "long-1", status="running")
        # A worker's tracker sets the same retention as the hub when it ends the job.
        async with Tracker.connect(redis_url, "short-2", retention=1) as job:
            await job.complete({"ok": True})
        listed = [j["job_id"] for j in (await http.get("/api/jobs")).json()["jobs"]]
        assert {"short-1", "short-2", "long-1"} <= set(listed)

        async def read() -> list[int]:
            return [
                (await http.get(path)).status_code
                for path in ("/api/jobs/short-1", "/api/jobs/short-2", "/api/jobs/short-1/result")
            ]

        await eventually(read, lambda codes: codes == [404, 404, 404], 5, "finished jobs expire")
        listed = [j["job_id"] for j in (await http.get("/api/jobs")).json()["jobs"]]
        running = await http.get("/api/jobs/long-1")

    assert listed == ["long-1"], "expired jobs leave the list"
    assert running.status_code == 200, "an active job outlives the retention"


async def test_every_job_key_expires_and_the_index_is_pruned(
    start_hub: HubFactory, redis_url: str
) -> None:
    hub = start_hub(retention=2, stall_after=0.2)  # the sweep runs every 0.1 s
    client = redis.Redis.from_url(redis_url)
    try:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            await _post(http, "keys-1", status="running")
            await http.get("/api/jobs/keys-1/milestone", params={"client": "ui"})
            await _post(http, "keys-2", status="completed", result={"n": 1})
            await http.get("/api/jobs/keys-2/milestone", params={"client": "ui"})

        keys = cast(list[bytes], await client.keys("*"))
        ttls = {key.decode(): await client.ttl(key) for key in keys}
        for name in {index_key(partition(job)) for job in ("keys-1", "keys-2")}:
            assert ttls.pop(name) == -1, "the index is pruned instead"
        # The stall sweep's live index (running jobs only; gone once keys-1 is flagged)
        # is kept up by commits, not by a TTL.
        assert ttls.pop(live_key(partition("keys-1")), -1) == -1
        for key, ttl in ttls.items():
            limit = 2 if "keys-2" in key else ACTIVE_TTL
            assert 0 < ttl <= limit, f"{key} expires in {ttl} s"
        # Record, history, result and milestone cursors: all four expire with the job.
        assert len([key for key in ttls if "keys-2" in key]) == 4

        async def indexed() -> list[bytes]:
            ids: list[bytes] = []
            for name in {index_key(partition(job)) for job in ("keys-1", "keys-2")}:
                ids += cast(list[bytes], await client.zrange(name, 0, -1))
            return ids

        # Nobody lists jobs here: the hub's sweeper alone drops the expired id.
        await eventually(indexed, lambda ids: ids == [b"keys-1"], 10, "index pruned")
    finally:
        await client.aclose()


async def test_http_stage_says_its_label_as_the_trackers_stage_does(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    # docs/api.md §2: a stage without a message replaces the previous stage's last line.
    created = await client.post("/api/jobs", json={"job_id": "stage-http", "pipeline": "video"})
    assert created.status_code == 201
    await _post(client, "stage-http", stage="downloading")
    await _post(client, "stage-http", stage_progress=0.5, message="12 of 24 MB")
    over_http = await _post(client, "stage-http", stage="transcribing")
    async with Tracker.connect(redis_url, "stage-lib", pipeline="video") as job:
        await job.stage("downloading")
        await job.advance(0.5, "12 of 24 MB")
        await job.stage("transcribing")
        await job.flush()
        from_library = job.snapshot
    assert from_library is not None
    assert over_http["message"] == from_library.message == over_http["stage_label"]
    explicit = await _post(client, "stage-http", stage="analyzing", message="Scene 1 of 9")
    assert explicit["message"] == "Scene 1 of 9"


async def test_progress_is_always_a_float_on_the_wire(client: httpx.AsyncClient) -> None:
    await client.post("/api/jobs/float-1/events", json={"progress": 25})
    raw = (await client.get("/api/jobs/float-1")).text
    assert '"progress":25.0' in raw


async def test_result_of_a_job_without_one_says_so_not_that_it_does_not_exist(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/api/jobs/noresult-1/events", json={"status": "running"})
    answer = await client.get("/api/jobs/noresult-1/result")
    assert answer.status_code == 404
    assert "has no result (it is running)" in answer.json()["error"]
    missing = await client.get("/api/jobs/never-made/result")
    assert "does not exist" in missing.json()["error"]


async def test_publish_repeated_under_its_idempotency_key_is_applied_once(
    client: httpx.AsyncClient,
) -> None:
    url = "/api/jobs/keyed-chunks/events"
    await _post(client, "keyed-chunks", chunks={"total": 3})
    chunk = {"chunks": {"add_completed": 1}}
    # The draft's quoted form and the bare one name the same key.
    first = await client.post(url, json=chunk, headers={"Idempotency-Key": '"chunk-1"'})
    again = await client.post(url, json=chunk, headers={"Idempotency-Key": "chunk-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() == {"job_id": "keyed-chunks", "seq": 2}
    reused = await client.post(
        url, json={"chunks": {"add_completed": 2}}, headers={"Idempotency-Key": "chunk-1"}
    )
    assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["error"]
    bad = await client.post(url, json=chunk, headers={"Idempotency-Key": "two words"})
    assert bad.status_code == 400 and bad.json()["field"] == "Idempotency-Key"
    stored = (await client.get("/api/jobs/keyed-chunks")).json()
    assert (stored["seq"], stored["chunks"]["completed"]) == (2, 1)
    # A new key is a new update.
    second = await client.post(url, json=chunk, headers={"Idempotency-Key": "chunk-2"})
    assert second.json()["seq"] == 3


async def test_create_repeated_under_its_idempotency_key_answers_201_again(
    client: httpx.AsyncClient,
) -> None:
    body = {"job_id": "keyed-create", "meta": {"file": "a.pdf"}}
    key = {"Idempotency-Key": "create-1"}
    first = await client.post("/api/jobs", json=body, headers=key)
    again = await client.post("/api/jobs", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    # Without the key, or with it for another body, the job's existence is the answer.
    assert (await client.post("/api/jobs", json=body)).status_code == 409
    other = await client.post("/api/jobs", json={"job_id": "keyed-create"}, headers=key)
    assert other.status_code == 422


async def test_create_naming_no_job_repeated_under_its_key_makes_one_job(
    client: httpx.AsyncClient,
) -> None:
    body = {"meta": {"file": "b.pdf"}}
    key = {"Idempotency-Key": "create-unnamed-1"}
    first = await client.post("/api/jobs", json=body, headers=key)
    again = await client.post("/api/jobs", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["created_at"] == first.json()["created_at"]
    other = await client.post("/api/jobs", json={"meta": {"file": "c.pdf"}}, headers=key)
    assert other.status_code == 422
    # Without a key, each request makes a job of its own.
    unkeyed = [(await client.post("/api/jobs", json=body)).json()["job_id"] for _ in range(2)]
    assert len({first.json()["job_id"], *unkeyed}) == 3
