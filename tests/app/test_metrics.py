"""`GET /metrics` of a hub process of its own (metrics are per process)."""

from __future__ import annotations

import asyncio

import httpx

from tests.conditions import eventually
from tests.hub import spawn_hub
from tests.probes import metric, settled
from tests.streams import RawStream

EXPECTED = [
    "progress_streams_open",
    "progress_subscriptions",
    "progress_events_published_total",
    "progress_events_delivered_total",
    "progress_frames_conflated_total",
    "progress_slow_client_disconnects_total",
    "progress_broker_reconnects_total",
    "progress_messages_ignored_total",
    "progress_streams_refused_total",
    "progress_publish_seconds_count",
    "progress_publish_seconds_sum",
    "progress_feed_resubscriptions_total",
]


async def test_metrics_count_streams_subscriptions_and_events(redis_url: str) -> None:
    with spawn_hub({"PROGRESS_BROKER_URL": redis_url}) as hub:
        async with httpx.AsyncClient(base_url=hub.url) as http:
            text = (await http.get("/metrics")).text
            for name in EXPECTED:
                assert await metric(http, name) == 0, name
            assert 'progress_publish_seconds_bucket{le="0.005"}' in text
            assert 'progress_feed_shard_up{node="server"} 1.0' in text  # one Redis: one shard

            for job_id in ("a", "a", "b"):
                response = await http.post(f"/api/jobs/{job_id}/events", json={"progress": 1})
                assert response.status_code == 202
            assert await metric(http, "progress_events_published_total") == 3
            assert await metric(http, "progress_publish_seconds_count") == 3

            paths = [*["/api/jobs/a/events"] * 2, "/api/jobs/b/events", "/api/events"]
            streams = [await RawStream.open(hub.url, path) for path in paths]
            try:
                for stream in streams:
                    assert (await stream.next_event()) is not None
                assert await metric(http, "progress_streams_open") == 4
                assert await metric(http, "progress_subscriptions") == 3  # a, b, every job

                await http.post("/api/jobs/a/events", json={"progress": 2})
                for stream in (streams[0], streams[1], streams[3]):
                    assert (await stream.next_event()) is not None
                assert await metric(http, "progress_events_delivered_total") == 3
            finally:
                await asyncio.gather(*(s.aclose() for s in streams))

            await eventually(lambda: settled(http), bool, 5, "streams closed", interval=0.02)
