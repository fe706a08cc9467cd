"""The command connection on its own, and its router, against real servers."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as redis
from redis.crc import key_slot

from progress_hub.embedded import EmbeddedServer
from pubsub.brokers.command_connection import CommandConnection
from pubsub.brokers.connect import Connector, translated_outage
from pubsub.brokers.endpoint import ErrorReply
from pubsub.brokers.routing import CommandRouter
from pubsub.errors import BrokerUnavailable
from tests.cluster import RedisCluster
from tests.conditions import eventually
from tests.tls import ACL_PASSWORD, ACL_USER, PASSWORD, TlsServer, password_url


@pytest.fixture
async def connection(redis_url: str) -> AsyncIterator[CommandConnection]:
    opened = await CommandConnection.open(redis_url)
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_command_connection_pipelined_replies_come_in_order(
    connection: CommandConnection,
) -> None:
    first = connection.send([(b"SET", b"test:a", b"1"), (b"INCR", b"test:a")])
    second = connection.send([(b"INCRBY", b"test:a", 10), (b"GET", b"test:a")])
    third = connection.send([(b"HGET", b"test:none", b"field")])
    assert await third == [None]
    assert await first == [b"OK", 2]
    assert await second == [12, b"12"]


async def test_command_connection_error_reply_stays_in_its_place(
    connection: CommandConnection,
) -> None:
    replies = await connection.execute(
        [(b"SET", b"test:s", b"x"), (b"INCR", b"test:s"), (b"GET", b"test:s")]
    )
    assert replies[0] == b"OK" and replies[2] == b"x"
    assert isinstance(replies[1], ErrorReply) and "not an integer" in str(replies[1])
    assert await connection.execute([(b"PING",)]) == [b"PONG"], "the connection stays"


async def test_command_connection_selects_the_database_of_the_url(redis_url: str) -> None:
    connection = await CommandConnection.open(redis_url.removesuffix("/0") + "/3")
    admin = redis.Redis.from_url(redis_url.removesuffix("/0") + "/3")
    try:
        assert await connection.execute([(b"SET", b"test:db", b"three")]) == [b"OK"]
        assert await admin.get("test:db") == b"three"
        zero = redis.Redis.from_url(redis_url)
        try:
            assert await zero.get("test:db") is None
        finally:
            await zero.aclose()
    finally:
        await admin.aclose()
        await connection.aclose()


@pytest.mark.parametrize(
    ("user", "password"), [("", PASSWORD), (ACL_USER, ACL_PASSWORD)], ids=["default", "acl"]
)
async def test_command_connection_authenticates_with_the_url_credentials(
    password_server: EmbeddedServer, user: str, password: str
) -> None:
    url = password_url(password_server, user, password)
    connection = await CommandConnection.open(f"{url}?client_name=commands-test")
    try:
        assert await connection.execute([(b"CLIENT", b"GETNAME")]) == [b"commands-test"]
    finally:
        await connection.aclose()
    wrong = password_url(password_server, user, "not-the-password")
    with pytest.raises(BrokerUnavailable) as refused:
        await CommandConnection.open(wrong)
    assert f"127.0.0.1:{password_server.port} refused" in str(refused.value)
    assert "not-the-password" not in str(refused.value)


async def test_command_connection_over_tls_checks_the_certificate(tls_server: TlsServer) -> None:
    connection = await CommandConnection.open(tls_server.url)
    try:
        replies = await connection.execute([(b"SET", b"test:tls", b"1"), (b"GET", b"test:tls")])
        assert replies == [b"OK", b"1"]
    finally:
        await connection.aclose()
    with pytest.raises(ssl.SSLCertVerificationError):
        await CommandConnection.open(f"rediss://127.0.0.1:{tls_server.tls_port}/0")


async def test_command_connection_dead_server_fails_what_is_in_flight_and_the_next_call_reconnects(
) -> None:
    with EmbeddedServer() as server:
        connector = Connector(server.url)
        router = CommandRouter(connector)
        admin = redis.Redis.from_url(server.url)
        failures: list[BrokerUnavailable] = []

        async def pop() -> None:  # in flight until the server dies: it waits for a push
            with pytest.raises(BrokerUnavailable) as failed:
                async with translated_outage():
                    await router.execute([("test:k", (b"BLPOP", b"test:list", b"0"))])
            failures.append(failed.value)

        async def popping() -> bool:
            return any(c.get("cmd") == "blpop" for c in await admin.client_list())

        try:
            assert (await router.execute([("test:k", (b"PING",))]))[0] == [b"PONG"]
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pop)
                    await eventually(popping, bool, 5, "the pop reached the server")
                    await admin.aclose()
                    server.kill()
            assert f"127.0.0.1:{server.port}" in str(failures[0])
            server.start()  # same port
            assert (await router.execute([("test:k", (b"PING",))]))[0] == [b"PONG"]
        finally:
            await router.aclose()
            await connector.aclose()


async def test_command_connection_silent_server_fails_after_the_deadline_and_is_replaced(
    redis_url: str,
) -> None:
    connector = Connector(redis_url)
    router = CommandRouter(connector, timeout=0.5)
    admin = redis.Redis.from_url(redis_url)
    try:
        assert (await router.execute([("test:k", (b"PING",))]))[0] == [b"PONG"]
        await admin.client_pause(2000)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer within 0.5 s"):
            async with translated_outage():
                await router.execute([("test:k", (b"PING",))])
        # Not before its deadline; how long after it depends on the machine's load (the
        # message says which deadline ran out), so no upper bound is asserted.
        assert time.monotonic() - started >= 0.45
        await admin.client_unpause()
        assert (await router.execute([("test:k", (b"PING",))]))[0] == [b"PONG"]
    finally:
        await admin.aclose()
        await router.aclose()
        await connector.aclose()


async def test_command_router_sends_each_command_to_its_keys_master(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    connector = Connector(cluster_url)
    router = CommandRouter(connector)
    try:
        names = [f"test:route:{i}" for i in range(30)]
        sets = [(name, (b"SET", name, name)) for name in names]
        assert (await router.execute(sets))[0] == [b"OK"] * 30
        gets = [(name, (b"GET", name)) for name in names]
        assert (await router.execute(gets))[0] == [name.encode() for name in names]
        waits, behind = await router.execute(gets, tail=(b"WAIT", b"0", b"100"))
        assert waits == [name.encode() for name in names] and len(behind) == 30
    finally:
        await router.aclose()
        await connector.aclose()


async def test_command_router_follows_ask_while_a_slot_moves_and_moved_after(
    breakable_cluster: RedisCluster,
) -> None:
    cluster = breakable_cluster
    connector = Connector(cluster.url)
    router = CommandRouter(connector)
    names = ["{test:moving}a", "{test:moving}b"]  # one slot
    gets = [(name, (b"GET", name)) for name in names]
    values = [name.encode() for name in names]
    split: list[list[object]] = []

    def between_keys() -> None:  # one key moved, the other not yet: one of them is ASKed
        if not split:
            split.append(anyio.from_thread.run(router.execute, gets)[0])

    try:
        assert (await router.execute([(n, (b"SET", n, n)) for n in names]))[0] == [b"OK"] * 2
        slot = key_slot(names[0].encode())
        source = cluster.master_of_slot(slot)
        target = next(node for node in cluster.master_nodes() if node is not source)
        await anyio.to_thread.run_sync(cluster.move_slot, slot, target, between_keys)
        assert split == [values], "ASK followed while the slot was split"
        # The router's slot map still says `source`: MOVED, read again, sent to `target`.
        assert (await router.execute(gets))[0] == values
        node = connector.cluster.get_node_from_key(names[0]) if connector.cluster else None
        assert node is not None and node.port == target.port
    finally:
        await router.aclose()
        await connector.aclose()
