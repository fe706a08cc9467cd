"""The hub mounted in a FastAPI app under a prefix, with the host's lifespan running the
hub's (docs/production.md, "Mounting into an existing app"), served by a real uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI, Request

from progress_hub import Settings, create_app, hub_lifespan
from tests.hub import serve_app
from tests.sse import data, open_stream


def _host_app(broker_url: str) -> FastAPI:
    """What a user writes: their own app, their own lifespan state, the hub mounted."""
    hub = create_app(Settings(broker_url=broker_url))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        async with hub_lifespan(hub):
            # The host's own state keeps its key, although the hub has one named alike.
            yield {"settings": "the host's"}

    app = FastAPI(lifespan=lifespan)

    @app.get("/hello")
    async def hello(request: Request) -> dict[str, str]:
        return {"settings": request.state.settings}

    app.mount("/progress", hub)
    return app


@pytest.fixture
def host_url(redis_url: str) -> Iterator[str]:
    with serve_app(_host_app(redis_url)) as (url, _, _):
        yield url


async def test_mounted_hub_creates_publishes_streams_polls_and_serves_its_dashboard(
    host_url: str,
) -> None:
    async with httpx.AsyncClient(base_url=host_url + "/progress", timeout=10) as client:
        created = await client.post("/api/jobs", json={"job_id": "mounted-1", "pipeline": "pdf"})
        assert created.status_code == 201, created.text
        assert created.headers["location"] == "/progress/api/jobs/mounted-1"

        async with open_stream(client, "/api/jobs/mounted-1/events") as stream:
            first = await stream.next()
            assert (first.event, data(first)["status"]) == ("snapshot", "queued")
            published = await client.post(
                "/api/jobs/mounted-1/events", json={"stage": "extract", "message": "Reading"}
            )
            assert published.status_code == 202, published.text
            update = await stream.next()
            assert (update.event, data(update)["stage"]) == ("progress", "extract")
            await client.post("/api/jobs/mounted-1/events", json={"status": "completed"})
            rest = await stream.until_end()
        assert [event.event for event in rest] == ["progress", "end"]

        polled = await client.get("/api/jobs/mounted-1")
        assert polled.status_code == 200
        assert (polled.json()["status"], polled.headers["etag"]) == ("completed", '"3"')
        unchanged = await client.get("/api/jobs/mounted-1", headers={"If-None-Match": '"3"'})
        assert unchanged.status_code == 304

        page = await client.get("/", follow_redirects=True)
        assert page.status_code == 200 and "<title>progress-hub</title>" in page.text
        script = await client.get("/dashboard.js")
        assert script.status_code == 200 and "HUB_BASE" in script.text

    hello = httpx.get(host_url + "/hello")
    assert hello.json() == {"settings": "the host's"}


def test_mounted_hub_without_the_hosts_lifespan_says_what_to_do(
    redis_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    app = FastAPI()
    app.mount("/progress", create_app(Settings(broker_url=redis_url)))
    with serve_app(app) as (url, _, _):
        answer = httpx.get(url + "/progress/api/jobs")
    # Not a KeyError deep in a route: the server's error log says what to do.
    assert answer.status_code == 500
    assert "async with hub_lifespan(hub): yield" in capfd.readouterr().err
