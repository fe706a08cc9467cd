"""Session fixtures: a private Redis-compatible server, real hubs, and clients of both."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import ExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
import redis

from progress_hub.embedded import EmbeddedServer
from progress_hub.settings import Settings
from pubsub.broker import open_broker
from pubsub.store import JobStore
from tests.cluster import RedisCluster, running_cluster
from tests.hub import ThreadHub, run_hub
from tests.machine import machine_share
from tests.tls import TlsServer, make_certificates, require_passwords, start_tls_server

# CI runs every test: a test that skips there (no Chromium, no node) fails the run, so a
# broken CI image cannot pass by testing less. Locally a skip stays a skip, and
# `make test` says once what will skip and how to get it (Makefile, `test-tools`).
STRICT_SKIPS = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under `CI=true`, turn a skipped test into a failure that gives the skip's reason."""
    report = yield
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CI=true and this test skipped: {reason}"
    return report


# Set in each worker by pytest-xdist (`make test` runs two); unset in a plain `pytest` run.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
EXCLUSIVE_MARKERS = ("stress", "alone")


@pytest.fixture(autouse=True)
def machine_to_share(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under xdist, a `stress` or `alone` test runs while no other worker runs a test
    (tests/machine.py)."""
    if XDIST_WORKER is None:
        yield
        return
    exclusive = any(request.node.get_closest_marker(name) for name in EXCLUSIVE_MARKERS)
    with machine_share(tmp_path_factory.getbasetemp().parent, exclusive=exclusive):
        yield


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedServer]:
    """A private server on a free port, for this test session only."""
    with EmbeddedServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedServer) -> str:
    """The private server's URL, emptied before each test (it is ours to flush)."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """A private server that also listens with TLS, its certificate from a test CA."""
    tls = start_tls_server(tmp_path_factory.mktemp("tls"))
    try:
        yield tls
    finally:
        tls.server.stop()


@pytest.fixture(scope="session")
def password_server() -> Iterator[EmbeddedServer]:
    """A private server that asks for a password (`tests.tls.PASSWORD`), with an ACL user."""
    with EmbeddedServer() as server:
        require_passwords(server)
        yield server


# Small enough that a killed master's replica takes over in about three seconds, large
# enough that a loaded 2-core machine does not fail a master over by itself.
CLUSTER_NODE_TIMEOUT_MS = 1500


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A private Redis Cluster (3 masters, a replica each) for this test session only.

    Tests that break it (kill a node) take `breakable_cluster`, which mends it after them.
    """
    with running_cluster(masters=3, replicas=1, node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A private cluster that speaks TLS only (3 masters, no replicas; tests/cluster.py),
    its certificates from a test CA: started for the module that asks, stopped after it."""
    certificates = make_certificates(tmp_path_factory.mktemp("tls-cluster"))
    with running_cluster(masters=3, replicas=0, tls=certificates) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """The private cluster's URL (one node names it all), every master emptied first."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def breakable_cluster(redis_cluster: RedisCluster) -> Iterator[RedisCluster]:
    """The private cluster, emptied, for a test that may kill its nodes or move its slots.

    Afterwards every killed node is started again (it rejoins as a replica) and the
    cluster is awaited until it is whole, so the next test finds 3 masters + 3 replicas.
    """
    redis_cluster.flushall()
    try:
        yield redis_cluster
    finally:
        for node in redis_cluster.nodes:
            if not node.alive:
                redis_cluster.restart(node)
        redis_cluster.wait_settled()
        redis_cluster.wait_replicated()


@pytest.fixture(params=["memory", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each broker backend in turn: the shared contract runs against both."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


@asynccontextmanager
async def store_on(broker_url: str) -> AsyncIterator[JobStore]:
    """A job store on its own broker connection, closed at the end of the block."""
    broker = open_broker(broker_url)
    try:
        yield JobStore(broker)
    finally:
        await broker.aclose()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[JobStore]:
    """A job store on the private Redis."""
    async with store_on(redis_url) as job_store:
        yield job_store


HubFactory = Callable[..., ThreadHub]


@pytest.fixture
def start_hub(redis_url: str) -> Iterator[HubFactory]:
    """Start real uvicorn hubs on the private Redis: `start_hub(heartbeat=0.2)`."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> ThreadHub:
            settings = Settings(**{"broker_url": redis_url, **overrides})
            return stack.enter_context(run_hub(settings))

        yield start


@pytest.fixture
def hub(start_hub: HubFactory) -> ThreadHub:
    """One hub with default settings, on the private Redis."""
    return start_hub()


@pytest.fixture
async def client(hub: ThreadHub) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of `hub`."""
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
        yield http
