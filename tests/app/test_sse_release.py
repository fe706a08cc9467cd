"""A job stream subscribes before it answers (docs/api.md §3): every way out releases it.

The endpoint subscribes, then reads once; that read decides 404 and 204 and is the
stream's opening. What is checked is what outside observers see: the hub's
`progress_subscriptions` and `progress_streams_open` back where they were, and Redis
holding no subscriber of the job's channel.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from progress_hub.settings import Settings
from pubsub.brokers.keys import job_channel
from pubsub.events import JobStatus, Update
from pubsub.store import JobStore
from tests.conditions import eventually
from tests.hub import ThreadHub, run_hub
from tests.probes import metric
from tests.sse import open_stream

Wrap = Callable[[ASGIApp], ASGIApp]


async def _held(http: httpx.AsyncClient) -> tuple[float, float]:
    """What the hub holds: open streams and broker subscriptions."""
    streams = await metric(http, "progress_streams_open")
    return streams, await metric(http, "progress_subscriptions")


async def _channel_subscribers(redis_url: str, job_id: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        counts = dict(await client.pubsub_shardnumsub(job_channel(job_id)))
    finally:
        await client.aclose()
    return int(counts[job_channel(job_id).encode()])


async def _released(
    http: httpx.AsyncClient, redis_url: str, job_id: str, before: tuple[float, float]
) -> None:
    """Wait until the hub holds what it held `before` and Redis has no subscriber."""
    await eventually(lambda: _held(http), lambda held: held == before, 5, "hub back as before")
    await eventually(
        lambda: _channel_subscribers(redis_url, job_id), lambda n: n == 0, 5, "Redis unsubscribed"
    )


@pytest.fixture
async def http(hub: ThreadHub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as client:
        yield client


@pytest.mark.parametrize(
    ("job_id", "headers", "status"),
    [
        ("release-unknown", {}, 404),
        ("release-final", {"Last-Event-ID": "2"}, 204),
    ],
)
async def test_sse_job_stream_answer_without_a_stream_releases_its_subscription(
    http: httpx.AsyncClient,
    store: JobStore,
    redis_url: str,
    job_id: str,
    headers: dict[str, str],
    status: int,
) -> None:
    if status == 204:
        await store.publish(job_id, Update(progress=50))
        await store.publish(job_id, Update(status=JobStatus.COMPLETED))
    before = await _held(http)
    response = await http.get(f"/api/jobs/{job_id}/events", headers=headers)
    assert response.status_code == status
    if status == 404:
        assert job_id in response.json()["error"]
    else:
        assert response.content == b""
    await _released(http, redis_url, job_id, before)


async def test_sse_job_stream_replay_of_a_new_job_then_close_releases_its_subscription(
    http: httpx.AsyncClient, store: JobStore, redis_url: str
) -> None:
    for percent in (10, 20, 30, 40):
        await store.publish("release-replay", Update(progress=percent))  # seqs 1..4
    before = await _held(http)
    headers = {"Last-Event-ID": "1"}
    async with open_stream(http, "/api/jobs/release-replay/events", headers) as stream:
        replayed = await stream.take(3)
        await store.publish("release-replay", Update(progress=50))
        live = await stream.next()
        assert await _channel_subscribers(redis_url, "release-replay") == 1
    assert [(e.event, e.id) for e in replayed] == [("progress", str(s)) for s in (2, 3, 4)]
    assert (live.event, live.id) == ("progress", "5")
    await _released(http, redis_url, "release-replay", before)


def _after_the_client_left(statuses: list[int]) -> Wrap:
    """Middleware that hands a stream request to the hub only once its client is gone,
    noting the status the hub answered with."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def gone_first(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not scope["path"].endswith("/events"):
                await app(scope, receive, send)
                return
            while (await receive())["type"] != "http.disconnect":
                pass

            async def noted(message: Message) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])
                await send(message)

            await app(scope, receive, noted)

        return gone_first

    return wrap


def _cancelled_after(delay: float) -> Wrap:
    """Middleware that cancels each stream request `delay` s in, wherever it got to."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def cancelled(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or not scope["path"].endswith("/events"):
                await app(scope, receive, send)
                return
            with anyio.move_on_after(delay):
                await app(scope, receive, send)

        return cancelled

    return wrap


async def _send_and_close(url: str, path: str) -> None:
    """A client that sends its request and leaves before reading a byte."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    await writer.drain()
    writer.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
    writer.close()
    del reader


async def test_sse_job_stream_whose_client_left_before_the_first_byte_releases_it(
    redis_url: str, store: JobStore
) -> None:
    await store.publish("release-gone", Update(progress=10))
    statuses: list[int] = []
    settings = Settings(broker_url=redis_url)
    with run_hub(settings, wrap=_after_the_client_left(statuses)) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            before = await _held(http)
            await _send_and_close(hub.url, "/api/jobs/release-gone/events")
            await eventually(lambda: statuses, lambda s: s == [200], 5, "the stream ran")
            await _released(http, redis_url, "release-gone", before)


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.02, 0.2])
async def test_sse_job_stream_cancelled_anywhere_releases_its_subscription(
    redis_url: str, store: JobStore, delay: float
) -> None:
    job_id = f"release-cancel-{delay}"
    await store.publish(job_id, Update(progress=10))
    settings = Settings(broker_url=redis_url)
    with run_hub(settings, wrap=_cancelled_after(delay)) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            before = await _held(http)
            for _ in range(5):
                try:
                    async with http.stream("GET", f"/api/jobs/{job_id}/events") as response:
                        async for _chunk in response.aiter_bytes():
                            pass
                except httpx.HTTPError:
                    pass  # cut mid-response: what the client sees does not matter here
            await _released(http, redis_url, job_id, before)
