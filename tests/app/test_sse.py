"""SSE streams over a real uvicorn hub on a private Redis, read with the hub's own parser."""

from __future__ import annotations

import anyio
import httpx
import pytest

from tests.conftest import HubFactory
from tests.hub import ThreadHub
from tests.sse import data, open_stream


async def _publish(client: httpx.AsyncClient, job_id: str, **body: object) -> int:
    response = await client.post(f"/api/jobs/{job_id}/events", json=body)
    assert response.status_code == 202, response.text
    seq: int = response.json()["seq"]
    return seq


async def test_sse_stream_sends_snapshot_then_updates_in_order_then_end(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/api/jobs", json={"job_id": "v1", "pipeline": "video"})
    async with open_stream(client, "/api/jobs/v1/events") as stream:
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert stream.response.headers["cache-control"] == "no-cache"
        assert stream.response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in stream.response.headers
        first = await stream.next()
        assert (first.event, first.id, data(first)["status"]) == ("snapshot", "1", "queued")
        assert first.retry is None or first.retry > 0
        for stage in ("downloading", "transcribing", "analyzing"):
            await _publish(client, "v1", stage=stage)
        await _publish(client, "v1", status="completed", result="3 clips")
        events = await stream.until_end()
    assert [(e.event, e.id) for e in events] == [
        ("progress", "2"),
        ("progress", "3"),
        ("progress", "4"),
        ("progress", "5"),
        ("end", "5"),
    ]
    assert [data(e).get("stage") for e in events[:3]] == [
        "downloading",
        "transcribing",
        "analyzing",
    ]
    assert data(events[3])["progress"] == 100
    assert data(events[4]) == {"job_id": "v1", "seq": 5, "status": "completed"}


async def test_sse_stream_starts_with_retry_hint_and_pings_while_idle(
    start_hub: HubFactory,
) -> None:
    hub = start_hub(heartbeat=0.2, retry_ms=1500)
    async with httpx.AsyncClient(base_url=hub.url, timeout=5) as client:
        await client.post("/api/jobs", json={"job_id": "idle"})
        lines: list[str] = []
        async with client.stream("GET", "/api/jobs/idle/events") as response:
            with anyio.fail_after(5):
                async for line in response.aiter_lines():
                    lines.append(line)
                    if sum(line.startswith(": ping") for line in lines) >= 2:
                        break
    assert lines[0] == "retry: 1500"
    assert "event: snapshot" in lines
    assert sum(line.startswith(": ping") for line in lines) == 2


async def test_sse_last_event_id_replays_missed_events_without_gap_or_duplicate(
    client: httpx.AsyncClient,
) -> None:
    for percent in range(10, 60, 10):
        await _publish(client, "resumed", progress=percent)  # seqs 1..5
    async with open_stream(client, "/api/jobs/resumed/events", {"Last-Event-ID": "2"}) as stream:
        replayed = await stream.take(3)
        await _publish(client, "resumed", progress=70)
        live = await stream.next()
    assert [(e.event, e.id) for e in replayed] == [
        ("progress", "3"),
        ("progress", "4"),
        ("progress", "5"),
    ]
    assert (live.event, live.id, data(live)["progress"]) == ("progress", "6", 70)


async def test_sse_last_event_id_query_parameter_works_like_the_header(
    client: httpx.AsyncClient,
) -> None:
    for percent in (10, 20, 30):
        await _publish(client, "q", progress=percent)
    async with open_stream(client, "/api/jobs/q/events?last_event_id=2") as stream:
        event = await stream.next()
    assert (event.event, event.id) == ("progress", "3")


@pytest.mark.parametrize("last_event_id", ["0", "999"])
async def test_sse_last_event_id_out_of_history_starts_with_snapshot(
    start_hub: HubFactory, last_event_id: str
) -> None:
    hub = start_hub(history=3)
    async with httpx.AsyncClient(base_url=hub.url, timeout=5) as client:
        for percent in range(10, 70, 10):
            await _publish(client, "short", progress=percent)  # seqs 1..6, history keeps 4..6
        headers = {"Last-Event-ID": last_event_id}
        async with open_stream(client, "/api/jobs/short/events", headers) as stream:
            event = await stream.next()
    assert (event.event, event.id) == ("snapshot", "6")


async def test_sse_finished_job_with_final_seq_answers_204(client: httpx.AsyncClient) -> None:
    await _publish(client, "fin", progress=50)
    await _publish(client, "fin", status="completed")
    response = await client.get("/api/jobs/fin/events", headers={"Last-Event-ID": "2"})
    assert response.status_code == 204


async def test_sse_finished_job_without_last_event_id_sends_snapshot_and_end(
    client: httpx.AsyncClient,
) -> None:
    await _publish(client, "fin2", status="failed", error="boom")
    async with open_stream(client, "/api/jobs/fin2/events") as stream:
        events = await stream.until_end()
    assert [(e.event, e.id) for e in events] == [("snapshot", "1"), ("end", "1")]
    assert data(events[0])["error"] == "boom"


async def test_sse_unknown_job_answers_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/jobs/missing/events")
    assert response.status_code == 404
    assert "missing" in response.json()["error"]


@pytest.mark.parametrize("last_event_id", ["abc", "-1", "1.5", "9" * 40])
async def test_sse_last_event_id_the_hub_never_sent_starts_with_snapshot(
    client: httpx.AsyncClient, last_event_id: str
) -> None:
    # Only 404, 403 and 204 end a stream for good (docs/api.md §3): never a 400.
    seq = await _publish(client, "odd-id", progress=30)
    headers = {"Last-Event-ID": last_event_id}
    async with open_stream(client, "/api/jobs/odd-id/events", headers) as stream:
        event = await stream.next()
    assert (event.event, event.id) == ("snapshot", str(seq))


async def test_sse_stream_joining_a_followed_job_starts_from_its_latest_write(
    client: httpx.AsyncClient,
) -> None:
    # The second stream is answered from what the hub's first stream already follows
    # (no Redis read): it must still start exactly at the latest acknowledged write.
    await _publish(client, "shared", progress=10)
    async with open_stream(client, "/api/jobs/shared/events") as first:
        await first.next()
        for percent in (20, 30, 40):
            seq = await _publish(client, "shared", progress=percent)
            async with open_stream(client, "/api/jobs/shared/events") as joining:
                snapshot = await joining.next()
            assert (snapshot.event, snapshot.id, data(snapshot)["progress"]) == (
                "snapshot",
                str(seq),
                percent,
            )
        # One resuming from an earlier event gets exactly what it missed, and once the
        # job is deleted here the hub no longer answers from what it knew.
        async with open_stream(client, "/api/jobs/shared/events", {"Last-Event-ID": "2"}) as late:
            missed = await late.take(2)
        assert [(e.event, e.id) for e in missed] == [("progress", "3"), ("progress", "4")]
        assert (await client.delete("/api/jobs/shared")).status_code == 204
        gone = await client.get("/api/jobs/shared/events")
        assert gone.status_code == 404


async def test_sse_deleted_job_stream_gets_deleted_and_closes(client: httpx.AsyncClient) -> None:
    await _publish(client, "doomed", progress=5)
    async with open_stream(client, "/api/jobs/doomed/events") as stream:
        await stream.next()
        assert (await client.delete("/api/jobs/doomed")).status_code == 204
        events = await stream.until_end()
    assert [e.event for e in events] == ["deleted"]
    assert data(events[0])["job_id"] == "doomed"
    assert (await client.get("/api/jobs/doomed")).status_code == 404


async def test_sse_every_job_stream_sends_snapshots_then_progress_of_all_jobs(
    client: httpx.AsyncClient,
) -> None:
    await _publish(client, "one", progress=1)
    async with open_stream(client, "/api/events") as stream:
        first = await stream.next()
        assert (first.event, data(first)["job_id"]) == ("snapshot", "one")
        await _publish(client, "two", progress=2)
        await _publish(client, "one", progress=3)
        events = await stream.take(2)
    assert [(e.event, data(e)["job_id"], data(e)["seq"]) for e in events] == [
        ("progress", "two", 1),
        ("progress", "one", 2),
    ]


async def test_sse_every_job_stream_narrows_to_named_jobs(client: httpx.AsyncClient) -> None:
    # An id no job can have ("bad id") matches nothing; it does not end the stream with
    # a 400, which a browser would never retry (docs/api.md §3).
    async with open_stream(client, "/api/events?job=b&job=bad%20id&job=c") as stream:
        # No named job exists yet, so the opening is the hint alone: publish after it, or b's
        # update may come both in the opening snapshots and as progress.
        await stream.opened()
        for job_id in ("a", "b", "a", "c"):
            await _publish(client, job_id, message="hello")
        events = await stream.take(2)
    assert [data(e)["job_id"] for e in events] == ["b", "c"]


async def test_sse_two_hubs_on_one_redis_share_events(
    hub: ThreadHub, start_hub: HubFactory
) -> None:
    other = start_hub()
    async with (
        httpx.AsyncClient(base_url=hub.url, timeout=5) as a,
        httpx.AsyncClient(base_url=other.url, timeout=5) as b,
    ):
        await _publish(a, "shared", progress=10)
        async with open_stream(b, "/api/jobs/shared/events") as stream:
            await stream.next()
            await _publish(a, "shared", progress=20, message="from hub A")
            event = await stream.next()
    assert (event.event, data(event)["message"]) == ("progress", "from hub A")


async def test_sse_many_subscribers_of_one_job_each_get_every_event(
    client: httpx.AsyncClient,
) -> None:
    await _publish(client, "fan", progress=1)
    async with (
        open_stream(client, "/api/jobs/fan/events") as s1,
        open_stream(client, "/api/jobs/fan/events") as s2,
        open_stream(client, "/api/jobs/fan/events") as s3,
    ):
        for stream in (s1, s2, s3):
            await stream.next()
        for percent in range(2, 12):
            await _publish(client, "fan", progress=percent)
        received = [[e.id for e in await s.take(10)] for s in (s1, s2, s3)]
    assert received == [[str(seq) for seq in range(2, 12)]] * 3
