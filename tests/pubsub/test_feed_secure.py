"""The feed and the commands on a server that asks for TLS or a password, end to end."""

from __future__ import annotations

import pytest

from progress_hub.embedded import EmbeddedServer
from pubsub.broker import open_broker
from pubsub.brokers.redis import RedisBroker
from pubsub.events import Update
from pubsub.store import JobStore
from tests.conditions import eventually
from tests.feeds import listening
from tests.tls import ACL_PASSWORD, ACL_USER, PASSWORD, TlsServer, password_url


async def _published_reaches_the_feed(url: str, job_id: str) -> list[bytes]:
    """Publish one update to `job_id` through a store on `url`; what a feed on `url` got."""
    broker = RedisBroker(url)
    store = JobStore(open_broker(url))
    try:
        async with listening(broker) as delivered:
            await broker.subscribe(job_id)
            await store.publish(job_id, Update(progress=42, message="over the wire"))
            await eventually(lambda: delivered, bool, 5, "the update delivered")
    finally:
        await broker.aclose()
        await store.broker.aclose()
    return delivered


async def test_feed_over_tls_receives_a_publish_over_tls(tls_server: TlsServer) -> None:
    delivered = await _published_reaches_the_feed(tls_server.url, "tls-job")
    assert len(delivered) == 1
    assert b"over the wire" in delivered[0]


@pytest.mark.parametrize(
    ("user", "password"), [("", PASSWORD), (ACL_USER, ACL_PASSWORD)], ids=["default", "acl"]
)
async def test_feed_with_the_password_in_the_url_receives(
    password_server: EmbeddedServer, user: str, password: str
) -> None:
    url = password_url(password_server, user, password)
    delivered = await _published_reaches_the_feed(url, f"auth-job-{user or 'default'}")
    assert len(delivered) == 1
    assert b"over the wire" in delivered[0]
