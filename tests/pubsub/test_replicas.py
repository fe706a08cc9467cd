"""`replicas=N`: an update is acknowledged only once N replicas hold it (docs/api.md §8)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis
from redis.crc import key_slot
from structlog.testing import capture_logs

from progress_hub.embedded import EmbeddedServer
from pubsub.broker import open_broker
from pubsub.brokers import keys
from pubsub.errors import BrokerUnavailable
from pubsub.events import Update
from pubsub.publisher import Tracker
from pubsub.store import JobStore
from tests.cluster import RedisCluster
from tests.conditions import eventually
from tests.conftest import HubFactory

# A replica's first sync at once, not after the default 5 s wait for company (as in
# tests/cluster.py).
MASTER_ARGS = ["--repl-diskless-sync-delay", "0"]


async def test_acknowledged_update_is_already_on_the_replica(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    store = JobStore(open_broker(cluster_url, replicas=1))
    try:
        snapshot = await store.publish("replicated-1", Update(progress=30))
    finally:
        await store.broker.aclose()
    slot = key_slot(keys.job_key("replicated-1").encode())
    replica = redis_cluster.replica_of(redis_cluster.master_of_slot(slot))
    # Read the replica itself, right after the acknowledgement, with no wait of ours.
    reader = redis.Redis(port=replica.port, single_connection_client=True)
    try:
        reader.execute_command("READONLY")  # type: ignore[no-untyped-call]
        seq = reader.hget(keys.job_key("replicated-1"), "seq")
    finally:
        reader.close()
    assert seq == str(snapshot.seq).encode()


async def test_update_no_replica_confirms_is_refused_with_503_and_retry_after(
    redis_url: str, start_hub: HubFactory
) -> None:
    # One server, no replica: nothing can confirm.
    store = JobStore(open_broker(redis_url, replicas=1))
    try:
        with pytest.raises(BrokerUnavailable, match="replicas confirmed"):
            await store.publish("lonely", Update(progress=1))
    finally:
        await store.broker.aclose()
    hub = start_hub(broker_replicas=1)
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
        response = await http.post("/api/jobs/lonely-http/events", json={"progress": 5})
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "replicas" in response.json()["error"]


async def test_tracker_retry_of_an_unconfirmed_update_counts_its_chunks_once(
    tmp_path: Path,
) -> None:
    # A master whose replica is not attached yet: the tracker's update is written there,
    # but no WAIT confirms it, so the tracker retries it until one does.
    # Each in its own directory: a replica's first sync writes an RDB file.
    with (
        EmbeddedServer(data_dir=tmp_path / "master", extra_args=MASTER_ARGS) as master,
        EmbeddedServer(data_dir=tmp_path / "replica") as replica,
    ):
        reader = JobStore(open_broker(master.url))
        try:
            with capture_logs() as logs:
                job = Tracker.connect(master.url, "in-doubt", replicas=1)
                async with job:
                    await job.chunks(100)
                    await job.chunk_done(0)
                    await job.chunk_done(1)
                    await eventually(lambda: job.outage, bool, 15, "the tracker retries")
                    written = await reader.get("in-doubt")
                    assert written.chunks is not None and written.chunks.completed == 2
                    replica.client().replicaof("127.0.0.1", master.port)
                    await eventually(lambda: job.outage, lambda down: not down, 15, "acked")
                    assert job.snapshot is not None and job.snapshot.seq == written.seq
            stored = await reader.get("in-doubt")
        finally:
            await reader.broker.aclose()
    assert stored.chunks is not None
    assert (stored.seq, stored.chunks.completed) == (written.seq, 2), "applied once"
    warned = [entry for entry in logs if entry["event"] == "broker_unavailable"]
    assert warned and "INFO replication" in warned[0]["check"], "it names the replicas"


async def test_http_retry_of_an_unconfirmed_update_under_its_key_counts_it_once(
    tmp_path: Path, start_hub: HubFactory
) -> None:
    # What an HTTP worker does on a 503: send the same request again, key included.
    with (
        EmbeddedServer(data_dir=tmp_path / "master", extra_args=MASTER_ARGS) as master,
        EmbeddedServer(data_dir=tmp_path / "replica") as replica,
    ):
        hub = start_hub(broker_url=master.url, broker_replicas=1)
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:

            async def send(key: str, chunks: dict[str, int]) -> int:
                response = await http.post(
                    "/api/jobs/keyed-in-doubt/events",
                    json={"chunks": chunks},
                    headers={"Idempotency-Key": key},
                )
                return response.status_code

            # Written on the master, but no replica confirms them: not acknowledged.
            assert await send("total", {"total": 4}) == 503
            assert await send("chunk-0", {"add_completed": 1}) == 503
            replica.client().replicaof("127.0.0.1", master.port)
            await eventually(
                lambda: send("chunk-0", {"add_completed": 1}), lambda s: s == 202, 15, "acked"
            )
            assert await send("total", {"total": 4}) == 202
            stored = (await http.get("/api/jobs/keyed-in-doubt")).json()
    assert stored["seq"] == 2, "each update applied once"
    assert (stored["chunks"]["total"], stored["chunks"]["completed"]) == (4, 1)
