"""A hub and its workers on a Redis Cluster that speaks TLS only (docs/api.md §8).

The cluster (`tls_cluster`, tests/conftest.py) has no plain port at all (`port 0`), so a
connection that works is a TLS connection. Each URL names one node and trusts the test
CA (`?ssl_ca_certs=`): `rediss://` at one master (cluster mode detected), and
`rediss+cluster://` at another (forced). Jobs land on every master; they are created,
published over HTTP and through the library (`Tracker.connect`, `SyncTracker.connect`)
with the same URL, and read back as streams, the every-job stream, the job list and polls.
The feed's connection to each master is checked to be at the TLS port the node announces.
A URL that trusts another CA is refused at start, on `/readyz` and on a publish, in a
sentence naming the node (tests/tls.py makes both CAs); a node that announces a plain-text
port is named by the feed; the whole cluster down and back, the feed reconnects.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from progress_hub.embedded import EmbeddedServer
from progress_hub.settings import Settings
from pubsub import SyncTracker, Tracker
from pubsub.brokers.redis import RedisBroker
from pubsub.errors import BrokerUnavailable
from pubsub.events import Update
from pubsub.store import JobStore
from tests.cluster import ClusterNode, RedisCluster
from tests.cluster_load import job_ids_by_master
from tests.conditions import eventually, wait_until
from tests.feeds import listening
from tests.hub import run_hub, spawn_hub
from tests.streams import RawStream
from tests.tls import make_certificates

# (scheme, which master the URL names): any node names the whole cluster.
URLS = [("rediss", 0), ("rediss+cluster", -1)]
URL_IDS = ["detected", "forced"]


@pytest.fixture
def tls_cluster_emptied(tls_cluster: RedisCluster) -> RedisCluster:
    """The module's TLS cluster, every master emptied first."""
    tls_cluster.flushall()
    return tls_cluster


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed none of the cluster's certificates."""
    return make_certificates(tmp_path_factory.mktemp("other-ca")).ca


def _url(cluster: RedisCluster, scheme: str, master: int, ca: Path | None = None) -> str:
    assert cluster.tls is not None
    node = cluster.master_nodes()[master]
    return f"{scheme}://127.0.0.1:{node.port}/0?ssl_ca_certs={quote(str(ca or cluster.tls.ca))}"


def _shard_ports(node: ClusterNode) -> Iterator[tuple[int, dict[bytes, object]]]:
    """`CLUSTER SHARDS` as `node` answers it: each master's slot count and entry."""
    shards = node.command("CLUSTER", "SHARDS")
    assert isinstance(shards, list)
    for shard in shards:
        slots = shard[b"slots"]
        count = sum(high - low + 1 for low, high in zip(slots[::2], slots[1::2], strict=True))
        yield count, next(n for n in shard[b"nodes"] if n[b"role"] == b"master")


def _announce(cluster: RedisCluster, node: ClusterNode, port: int) -> None:
    """Make `node` announce `port` as its TLS port (its own port: as it was), and wait
    until every node's `CLUSTER SLOTS` says so (the node applies it on its next cron
    tick, the others hear it by gossip)."""
    node.command("CONFIG", "SET", "cluster-announce-tls-port", 0 if port == node.port else port)
    node_id = node.node_id().encode()

    def announced() -> bool:
        for other in cluster.nodes:
            slots = other.command("CLUSTER", "SLOTS")
            assert isinstance(slots, list)
            if not any(entry[2][1] == port for entry in slots if entry[2][2] == node_id):
                return False
        return True

    wait_until(announced, 10, f"{node.address} did not announce port {port}", 0.05)


def _subscribers(node: ClusterNode) -> list[dict[str, str]]:
    """The connections in subscribed mode at `node` (`CLIENT LIST TYPE pubsub`)."""
    raw = node.command("CLIENT", "LIST", "TYPE", "pubsub")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in text.splitlines()]


async def _events_until(stream: RawStream, seq: int) -> list[tuple[str, int, int]]:
    """(event, seq, progress) of each event of a job's stream, up to `seq`."""
    got: list[tuple[str, int, int]] = []
    while not got or got[-1][1] < seq:
        frame = await stream.next_event(timeout=5)
        assert frame is not None, f"the stream ended after {got}"
        got.append((frame.event or "", frame.seq, json.loads(frame.data)["progress"]))
    return got


def _publish_sync(url: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        with SyncTracker.connect(url, job_id, coalesce=0) as tracker:
            tracker.set(25, "sync 1")
            tracker.flush()
            tracker.set(75, "sync 2")


@pytest.mark.parametrize(("scheme", "master"), URLS, ids=URL_IDS)
async def test_tls_cluster_hub_and_library_carry_jobs_of_every_master(
    tls_cluster_emptied: RedisCluster, scheme: str, master: int
) -> None:
    cluster = tls_cluster_emptied
    url = _url(cluster, scheme, master)
    by_master = job_ids_by_master(cluster, f"tls-{scheme.replace('+', '-')}", 3)
    assert len(by_master) == 3
    http_jobs, async_jobs, sync_jobs = ([ids[i] for ids in by_master.values()] for i in range(3))
    every_job = http_jobs + async_jobs + sync_jobs
    expected = {
        **{job: [40, 80] for job in http_jobs},
        **{job: [30, 70] for job in async_jobs},
        **{job: [25, 75] for job in sync_jobs},
    }
    with run_hub(Settings(broker_url=url, heartbeat=1.0)) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            for job_id in every_job:
                created = await http.post("/api/jobs", json={"job_id": job_id})
                assert created.status_code == 201, created.text
            streams = [await RawStream.open(hub.url, f"/api/jobs/{j}/events") for j in every_job]
            firehose = await RawStream.open(hub.url, "/api/events")
            try:
                for stream in streams:
                    first = await stream.next_event(timeout=5)
                    assert first is not None and (first.event, first.seq) == ("snapshot", 1)
                # Its opening snapshots, each job at seq 1: nothing is published before.
                opening = [await firehose.next_event(timeout=5) for _ in every_job]
                assert sorted(
                    (f.event, json.loads(f.data)["job_id"], json.loads(f.data)["seq"])
                    for f in opening if f is not None
                ) == sorted(("snapshot", job_id, 1) for job_id in every_job)  # fmt: skip
                for job_id in http_jobs:
                    for seq, progress in enumerate(expected[job_id], start=2):
                        published = await http.post(
                            f"/api/jobs/{job_id}/events", json={"progress": progress}
                        )
                        assert published.status_code == 202, published.text
                        assert published.json()["seq"] == seq
                for job_id in async_jobs:
                    async with Tracker.connect(url, job_id, coalesce=0) as tracker:
                        await tracker.set(30, "async 1")
                        await tracker.flush()
                        await tracker.set(70, "async 2")
                await anyio.to_thread.run_sync(_publish_sync, url, sync_jobs)
                for job_id, stream in zip(every_job, streams, strict=True):
                    got = await _events_until(stream, 3)
                    assert got == [("progress", 2, expected[job_id][0]),
                                   ("progress", 3, expected[job_id][1])], job_id  # fmt: skip
                # Then every job's events, in order (a slow reader's may be conflated).
                latest: dict[str, int] = {}
                while any(latest.get(job_id) != 3 for job_id in every_job):
                    frame = await firehose.next_event(timeout=5)
                    assert frame is not None and frame.event == "progress", latest
                    snapshot = json.loads(frame.data)
                    assert snapshot["seq"] > latest.get(snapshot["job_id"], 1), snapshot
                    latest[snapshot["job_id"]] = snapshot["seq"]
            finally:
                await asyncio.gather(*(s.aclose() for s in [*streams, firehose]))
            listed = (await http.get("/api/jobs", params={"limit": 50})).json()["jobs"]
            assert [job["job_id"] for job in listed] == every_job[::-1]
            for job_id in every_job:
                polled = await http.get(f"/api/jobs/{job_id}")
                assert (polled.status_code, polled.headers["etag"]) == (200, '"3"')
                assert polled.json()["progress"] == expected[job_id][1]
                again = await http.get(f"/api/jobs/{job_id}", headers={"If-None-Match": '"3"'})
                assert again.status_code == 304
            metrics = (await http.get("/metrics")).text
    # The hub's feed: one connection per master, at the port each node announces.
    announced = {f"127.0.0.1:{entry[b'tls-port']}" for _, entry in _shard_ports(cluster.nodes[0])}
    shard_lines = [
        line for line in metrics.splitlines() if line.startswith("progress_feed_shard_up{")
    ]
    assert sorted(shard_lines) == sorted(
        f'progress_feed_shard_up{{node="{node}"}} 1.0' for node in announced
    )


async def test_tls_cluster_feed_subscribes_at_each_masters_announced_tls_port(
    tls_cluster_emptied: RedisCluster,
) -> None:
    cluster = tls_cluster_emptied
    url = _url(cluster, "rediss", 1)
    masters = cluster.master_nodes()
    # What every node announces: a TLS port for each master, and no plain port.
    for node in masters:
        shards = list(_shard_ports(node))
        assert sorted(count for count, _ in shards) == [5461, 5461, 5462]
        assert {entry[b"tls-port"] for _, entry in shards} == {n.port for n in masters}
        assert not any(b"port" in entry for _, entry in shards), shards
    jobs = [ids[0] for ids in job_ids_by_master(cluster, "tls-feed", 1).values()]
    broker = RedisBroker(url)
    store = JobStore(RedisBroker(url))
    try:
        async with listening(broker) as delivered:
            feed_nodes = broker.feed_shards()
            subscribers = {node.port: _subscribers(node) for node in masters}
            for job_id in jobs:
                await broker.subscribe(job_id)
            for job_id in jobs:
                await store.publish(job_id, Update(progress=50, message=f"to {job_id}"))
            await eventually(
                lambda: delivered, lambda d: len(d) == len(jobs), 5, "one update per master"
            )
    finally:
        await broker.aclose()
        await store.broker.aclose()
    assert feed_nodes == {node.address: True for node in masters}
    # Each master holds exactly one subscribed connection, the feed's, on its TLS port
    # (`laddr`: the node's end of it); there is no other port to be on.
    for port, clients in subscribers.items():
        assert [client["laddr"] for client in clients] == [f"127.0.0.1:{port}"], clients
    for job_id in jobs:
        assert sum(f"to {job_id}".encode() in raw for raw in delivered) == 1, job_id


def _refused_by_hub(url: str, log: Path) -> tuple[list[str], httpx.Response, httpx.Response]:
    """`progress-hub serve` on `url`: its log lines, its `/readyz` and a create's answer."""
    with spawn_hub({"PROGRESS_BROKER_URL": url}, log=log) as hub:
        ready = httpx.get(hub.url + "/readyz")
        publish = httpx.post(hub.url + "/api/jobs", json={"job_id": "never"})
    return log.read_text().splitlines(), ready, publish


def test_tls_cluster_hub_trusting_another_ca_names_the_node_without_a_traceback(
    tls_cluster: RedisCluster, other_ca: Path, tmp_path: Path
) -> None:
    urls = [
        _url(tls_cluster, scheme, master, other_ca).replace("://", "://worker:hunter2@")
        for scheme, master in URLS
    ]
    # Side by side: each hub waits FEED_STARTUP_WAIT (app/main.py) for a feed that fails.
    with ThreadPoolExecutor(len(urls)) as pool:
        logs = [tmp_path / f"hub-{i}.log" for i in range(len(urls))]
        answers = list(pool.map(_refused_by_hub, urls, logs))
    for (scheme, master), (lines, ready, publish) in zip(URLS, answers, strict=True):
        node = tls_cluster.master_nodes()[master]
        refused = f"the TLS certificate of 127.0.0.1:{node.port} was refused"
        warning = next(i for i, line in enumerate(lines) if "broker does not answer" in line)
        serving = next(i for i, line in enumerate(lines) if "serving on" in line)
        assert warning < serving, f"{scheme}: the warning comes before 'serving on'"
        assert refused in lines[warning] and "ssl_ca_certs" in lines[warning], lines[warning]
        assert (ready.status_code, publish.status_code) == (503, 503), scheme
        assert refused in ready.json()["error"], ready.text
        assert refused in publish.json()["error"], publish.text
        everything = "\n".join(lines) + ready.text + publish.text
        assert "Traceback" not in everything, everything
        assert "hunter2" not in everything and "ssl_ca_certs=" not in everything


async def test_tls_cluster_node_announcing_a_plain_port_is_named_by_feed_and_commands(
    tls_cluster: RedisCluster, redis_server: EmbeddedServer
) -> None:
    cluster = tls_cluster
    node = cluster.master_nodes()[2]
    job_id = job_ids_by_master(cluster, "tls-plain", 1)[node.port][0]
    # What every node without `tls-cluster yes` does: tell TLS clients a plain-text port.
    _announce(cluster, node, redis_server.port)
    broker = RedisBroker(node.url)
    store = JobStore(broker)

    async def on_gap(jobs: Collection[str | None]) -> None:
        return None

    async def repair_failures() -> list[str]:
        return [e["detail"] for e in logs if e["event"] == "broker_feed_repair_failed"]

    try:
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(broker.listen, lambda raw, _: None, on_gap)
                failures = await eventually(repair_failures, bool, 15, "the failure told")
                assert not broker.feed_up
                with pytest.raises(BrokerUnavailable) as refused:
                    await store.publish(job_id, Update(progress=1))
                tg.cancel_scope.cancel()
    finally:
        await broker.aclose()
        _announce(cluster, node, node.port)
        await anyio.to_thread.run_sync(cluster.wait_settled)
    plain = f"127.0.0.1:{redis_server.port} answers in plain text, not TLS"
    for told in (failures[0], str(refused.value)):
        assert plain in told and "tls-cluster yes" in told, told


async def test_tls_cluster_down_whole_and_back_the_feed_reconnects_over_tls(
    tls_cluster: RedisCluster,
) -> None:
    cluster = tls_cluster
    broker = RedisBroker(cluster.url)
    store = JobStore(RedisBroker(cluster.url))
    job_id = "after-the-outage"

    async def up() -> bool:
        return broker.feed_up

    async def repair_failed() -> list[str]:
        return [entry["event"] for entry in logs if entry["event"] == "broker_feed_repair_failed"]

    try:
        with capture_logs() as logs:
            async with listening(broker) as delivered:
                for node in cluster.nodes:
                    cluster.kill(node)
                # No node answers: the slot map cannot be read. The feed says so and retries
                # (it used to end with redis-py's RedisClusterException).
                await eventually(repair_failed, bool, 10, "the failed repair told")
                for node in cluster.nodes:
                    cluster.restart(node)
                await anyio.to_thread.run_sync(cluster.wait_settled)
                await eventually(up, bool, 15, "the feed is up again")
                await broker.subscribe(job_id)
                await store.publish(job_id, Update(progress=5, message="back"))
                await eventually(lambda: delivered, bool, 5, "an update after the outage delivered")
    finally:
        await broker.aclose()
        await store.broker.aclose()
        for node in cluster.nodes:
            if not node.alive:
                cluster.restart(node)
    assert b"back" in delivered[0]
