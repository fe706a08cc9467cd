"""The subscription connection on its own, against real servers (plain, TLS, passwords)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as redis
from redis.crc import key_slot

from progress_hub.embedded import EmbeddedServer
from pubsub.brokers.endpoint import ErrorReply
from pubsub.brokers.subscription import SubscriptionConnection
from pubsub.errors import BrokerUnavailable
from tests.cluster import RedisCluster
from tests.conditions import eventually
from tests.tls import ACL_PASSWORD, ACL_USER, PASSWORD, TlsServer, password_url

CONTROL = b"test:control"


@dataclass
class Heard:
    """Everything one connection told its callbacks."""

    pushes: list[list[Any]] = field(default_factory=list)
    errors: list[ErrorReply] = field(default_factory=list)
    lost: list[Exception] = field(default_factory=list)

    async def open(self, url: str, **options: Any) -> SubscriptionConnection:
        return await SubscriptionConnection.open(
            url,
            on_push=self.pushes.append,
            on_error=self.errors.append,
            on_lost=self.lost.append,
            subscribe=[CONTROL],
            **options,
        )

    async def until(self, accept: Callable[[Heard], bool], message: str) -> None:
        async def probe() -> Heard:
            return self

        await eventually(probe, accept, 5, message)

    def of(self, kind: bytes) -> list[list[Any]]:
        return [push for push in self.pushes if push[0] == kind]


@pytest.fixture
async def heard() -> AsyncIterator[Heard]:
    yield Heard()


async def _spublish(url: str, channel: bytes, data: bytes) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(await client.spublish(channel, data))
    finally:
        await client.aclose()


async def test_subscription_subscribes_many_channels_in_one_command_and_receives(
    redis_url: str, heard: Heard
) -> None:
    connection = await heard.open(redis_url)
    try:
        channels = [f"test:many:{i}".encode() for i in range(100)]
        connection.ssubscribe(channels)
        await heard.until(lambda h: len(h.of(b"ssubscribe")) == 100, "100 confirmations")
        assert [push[1] for push in heard.of(b"ssubscribe")] == channels
        assert await _spublish(redis_url, channels[7], b"hello") == 1
        await heard.until(lambda h: bool(h.of(b"smessage")), "the message")
        assert heard.of(b"smessage") == [[b"smessage", channels[7], b"hello"]]
    finally:
        await connection.aclose()
    assert heard.lost == [], "a close of ours is not a loss"


async def test_subscription_unsubscribe_is_confirmed_and_the_server_forgets(
    redis_url: str, heard: Heard
) -> None:
    connection = await heard.open(redis_url)
    admin = redis.Redis.from_url(redis_url)
    try:
        channels = [b"test:leave:a", b"test:leave:b", b"test:leave:c"]
        connection.ssubscribe(channels)
        await heard.until(lambda h: len(h.of(b"ssubscribe")) == 3, "subscribed")
        assert sorted(await admin.pubsub_shardchannels()) == channels
        connection.sunsubscribe(channels)
        await heard.until(lambda h: len(h.of(b"sunsubscribe")) == 3, "three confirmations")
        assert [p[1:] for p in heard.of(b"sunsubscribe")] == [[b"test:leave:a", 2],
                                                               [b"test:leave:b", 1],
                                                               [b"test:leave:c", 0]]  # fmt: skip
        assert await admin.pubsub_shardchannels() == []
    finally:
        await admin.aclose()
        await connection.aclose()


async def test_subscription_ping_is_answered_in_subscribed_mode(
    redis_url: str, heard: Heard
) -> None:
    connection = await heard.open(redis_url)
    try:
        connection.ping()
        await heard.until(lambda h: bool(h.of(b"pong")), "the pong")
        assert heard.of(b"pong") == [[b"pong", b""]]
    finally:
        await connection.aclose()


async def test_subscription_error_reply_is_told_and_the_connection_stays(
    redis_url: str, heard: Heard
) -> None:
    connection = await heard.open(redis_url)
    try:
        connection.ssubscribe([])  # no channel: a wrong number of arguments
        await heard.until(lambda h: bool(h.errors), "the error reply")
        assert "wrong number of arguments" in str(heard.errors[0])
        assert heard.errors[0].slot is None
        connection.ping()
        await heard.until(lambda h: bool(h.of(b"pong")), "still answering")
    finally:
        await connection.aclose()


async def test_subscription_moved_reply_names_the_slot(
    redis_cluster: RedisCluster, heard: Heard
) -> None:
    node = redis_cluster.master_nodes()[0]
    channel = next(
        name
        for name in (f"test:moved:{i}".encode() for i in range(1000))
        if redis_cluster.master_of_slot(key_slot(name)) is not node
    )
    connection = await heard.open(node.url)
    try:
        connection.ssubscribe([channel])
        await heard.until(lambda h: bool(h.errors), "the redirection")
        assert heard.errors[0].slot == key_slot(channel)
    finally:
        await connection.aclose()


async def test_subscription_killed_server_is_reported_once(heard: Heard) -> None:
    with EmbeddedServer() as server:
        connection = await heard.open(server.url)
        server.kill()
        await heard.until(lambda h: bool(h.lost), "the loss")
    assert connection.closed
    with pytest.raises(ConnectionError, match="127.0.0.1"):
        connection.ping()
    await connection.aclose()
    assert len(heard.lost) == 1


async def test_subscription_over_tls_checks_the_certificate(
    tls_server: TlsServer, heard: Heard
) -> None:
    connection = await heard.open(tls_server.url)
    try:
        connection.ssubscribe([b"test:tls"])
        await heard.until(lambda h: bool(h.of(b"ssubscribe")), "subscribed over TLS")
        assert await _spublish(tls_server.url, b"test:tls", b"secret") == 1
        await heard.until(lambda h: bool(h.of(b"smessage")), "the message over TLS")
    finally:
        await connection.aclose()
    untrusted = f"rediss://127.0.0.1:{tls_server.tls_port}/0"
    with pytest.raises(ssl.SSLCertVerificationError):
        await Heard().open(untrusted)
    unchecked = f"{untrusted}?ssl_cert_reqs=none"
    await (await Heard().open(unchecked)).aclose()


@pytest.mark.parametrize(
    ("user", "password"), [("", PASSWORD), (ACL_USER, ACL_PASSWORD)], ids=["default", "acl"]
)
async def test_subscription_authenticates_with_the_url_credentials(
    password_server: EmbeddedServer, heard: Heard, user: str, password: str
) -> None:
    url = password_url(password_server, user, password)
    connection = await heard.open(f"{url}?client_name=feed-test")
    try:
        connection.ssubscribe([b"test:auth"])
        await heard.until(lambda h: bool(h.of(b"ssubscribe")), "subscribed")
        admin = redis.Redis.from_url(password_url(password_server))
        try:
            clients = await admin.client_list()
        finally:
            await admin.aclose()
        assert "feed-test" in {c["name"] for c in clients}
    finally:
        await connection.aclose()


@pytest.mark.parametrize("user", ["", ACL_USER])
async def test_subscription_wrong_password_names_the_address_not_the_password(
    password_server: EmbeddedServer, user: str
) -> None:
    url = password_url(password_server, user, "not-the-password")
    with pytest.raises(BrokerUnavailable) as refused:
        await Heard().open(url)
    message = str(refused.value)
    assert f"127.0.0.1:{password_server.port} refused" in message
    assert "not-the-password" not in message


async def test_subscription_over_a_unix_socket(tmp_path: Path, heard: Heard) -> None:
    path = tmp_path / "redis.sock"
    with EmbeddedServer(extra_args=["--unixsocket", str(path)]) as server:
        connection = await heard.open(f"unix://{path}")
        try:
            connection.ssubscribe([b"test:unix"])
            await heard.until(lambda h: bool(h.of(b"ssubscribe")), "subscribed")
            assert await _spublish(server.url, b"test:unix", b"local") == 1
            await heard.until(lambda h: bool(h.of(b"smessage")), "the message")
        finally:
            await connection.aclose()


async def test_subscription_unreachable_server_raises_within_the_timeout() -> None:
    with anyio.fail_after(5):
        with pytest.raises(OSError):
            await Heard().open("redis://127.0.0.1:1/0", timeout=1)
