"""A hub whose broker URL is `rediss://` serves streams: commands and feed both over TLS."""

from __future__ import annotations

import httpx

from progress_hub.settings import Settings
from pubsub.broker import open_broker
from pubsub.events import Update
from pubsub.store import JobStore
from tests.hub import run_hub
from tests.sse import data, open_stream
from tests.tls import TlsServer


async def test_hub_on_a_rediss_url_streams_a_job_published_over_tls(
    tls_server: TlsServer,
) -> None:
    store = JobStore(open_broker(tls_server.url))
    try:
        await store.publish("tls-stream", Update(progress=10, message="started"))
        with run_hub(Settings(broker_url=tls_server.url)) as hub:
            async with httpx.AsyncClient(base_url=hub.url, timeout=10) as client:
                async with open_stream(client, "/api/jobs/tls-stream/events") as stream:
                    first = await stream.next()
                    assert (first.event, data(first)["progress"]) == ("snapshot", 10)
                    await store.publish("tls-stream", Update(progress=60, message="live"))
                    live = await stream.next()
        assert (live.event, data(live)["progress"], data(live)["message"]) == (
            "progress", 60, "live"
        )  # fmt: skip
    finally:
        await store.broker.aclose()
