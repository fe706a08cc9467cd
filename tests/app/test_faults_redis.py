"""Redis faults against real processes: an outage with streams open, a restart, garbage.

Each test runs its own Redis (`EmbeddedServer`) so that it may kill and restart it, and a
`progress-hub serve` child process, so that the hub is exactly what operators run.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import msgspec
import pytest
import redis

from progress_hub.embedded import EmbeddedServer
from pubsub.broker import open_broker
from pubsub.brokers.keys import job_channel, job_key
from pubsub.events import Update
from pubsub.store import JobStore
from tests.conditions import eventually
from tests.hub import spawn_hub
from tests.probes import metric
from tests.proxy import HoldingRelay
from tests.streams import RawStream
from tests.watchers import WATCHES, Shown, watcher

STREAMS = 100
JOBS = 10
# More jobs than the 200 the every-job feed once resynced: a dashboard gets all of them.
DASHBOARD_JOBS = 250
UPDATES_PER_JOB = 5


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A Redis of this test only, persisting to an append-only file so a restart keeps data."""
    server = EmbeddedServer(data_dir=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _publish(http: httpx.AsyncClient, job_id: str, body: dict[str, object]) -> int:
    response = await http.post(f"/api/jobs/{job_id}/events", json=body)
    assert response.status_code == 202, response.text
    seq: int = response.json()["seq"]
    return seq


async def test_redis_outage_keeps_streams_open_and_restart_resyncs_every_stream(
    own_redis: EmbeddedServer,
) -> None:
    env = {"PROGRESS_BROKER_URL": own_redis.url, "PROGRESS_HEARTBEAT": "0.5"}
    with spawn_hub(env) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            acknowledged: dict[str, int] = {}
            for j in range(JOBS):
                job_id = f"outage-{j}"
                for step in range(UPDATES_PER_JOB):
                    acknowledged[job_id] = await _publish(
                        http, job_id, {"status": "running", "progress": step * 10}
                    )
            for j in range(JOBS, DASHBOARD_JOBS):
                await _publish(http, f"outage-{j}", {"status": "running"})
            dashboard = await RawStream.open(hub.url, "/api/events")
            for _ in range(DASHBOARD_JOBS):
                shown = await dashboard.next_event()
                assert shown is not None and shown.event == "snapshot"
            streams = await asyncio.gather(
                *(
                    RawStream.open(hub.url, f"/api/jobs/outage-{i % JOBS}/events")
                    for i in range(STREAMS)
                )
            )
            try:
                for stream in streams:
                    first = await stream.next_event()
                    assert first is not None and first.event == "snapshot"

                own_redis.kill()
                killed_at = time.monotonic()

                # Readiness, writes and polls answer at once with 503, and say when to retry.
                ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert "error" in ready.json()
                publish = await http.post("/api/jobs/outage-0/events", json={"progress": 90})
                assert publish.status_code == 503
                assert int(publish.headers["retry-after"]) >= 1
                assert "broker" in publish.json()["error"].lower()
                poll = await http.get("/api/jobs/outage-0")
                assert poll.status_code == 503
                assert poll.headers["content-type"] == "application/json"
                assert int(poll.headers["retry-after"]) >= 1
                refused_within = time.monotonic() - killed_at

                # A new stream to a job that open streams follow is not answered from the
                # hub's memory, which may be stale once its feed is lost: it is turned away.
                async def late_stream_event() -> str | None:
                    async with await RawStream.open(hub.url, "/api/jobs/outage-1/events") as late:
                        event = await late.next_event(timeout=3)
                        return None if event is None else event.event

                await eventually(late_stream_event, lambda e: e is None, 5, "late stream refused")

                # Every stream stays open and keeps its heartbeat through the outage.
                async def pinged(stream: RawStream) -> bool:
                    block = await stream.next_block(timeout=3)
                    return block is not None and block.comment is not None

                assert all(await asyncio.gather(*(pinged(s) for s in streams)))

                own_redis.start()  # same port, same append-only file
                restarted_at = time.monotonic()

                async def resynced(stream: RawStream) -> tuple[int, float]:
                    event = await stream.next_event(timeout=5)
                    assert event is not None, "stream closed instead of resyncing"
                    assert event.event == "snapshot"
                    assert event.data, "a snapshot event carries the job"
                    return json.loads(event.data)["job_id"], time.monotonic() - restarted_at

                results = await asyncio.gather(*(resynced(s) for s in streams))
                recovery = max(elapsed for _, elapsed in results)
                assert recovery < 5
                resynced_jobs: set[str] = set()
                while len(resynced_jobs) < DASHBOARD_JOBS:
                    event = await dashboard.next_event(timeout=5)
                    assert event is not None, f"dashboard resynced {len(resynced_jobs)} jobs"
                    if event.event == "snapshot" and event.data is not None:
                        resynced_jobs.add(json.loads(event.data)["job_id"])

                # Nothing acknowledged before the outage was lost.
                for job_id, seq in acknowledged.items():
                    response = await http.get(f"/api/jobs/{job_id}")
                    assert response.status_code == 200
                    assert response.json()["seq"] == seq
                # And live events flow again.
                seq = await _publish(http, "outage-3", {"progress": 80})
                live = await streams[3].next_event(timeout=5)
                assert live is not None and live.event == "progress" and live.seq == seq
                assert (await http.get("/readyz")).status_code == 200
                assert await metric(http, "progress_broker_reconnects_total") >= 1
                print(
                    f"\nredis outage: 503s within {refused_within:.3f}s of the kill; "
                    f"{STREAMS} streams resynced within {recovery:.3f}s of the restart"
                )
            finally:
                await asyncio.gather(*(s.aclose() for s in streams))
                await dashboard.aclose()


async def test_garbage_on_a_job_channel_is_logged_and_ignored(
    own_redis: EmbeddedServer, tmp_path: Path
) -> None:
    log = tmp_path / "hub.log"
    env = {"PROGRESS_BROKER_URL": own_redis.url}
    with spawn_hub(env, "--log-json", log=log) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            await _publish(http, "garbage", {"status": "running"})
            async with await RawStream.open(hub.url, "/api/jobs/garbage/events") as stream:
                assert (await stream.next_event()) is not None
                raw = redis.Redis.from_url(own_redis.url)
                try:
                    for payload in (b"garbage", b'{"event":"progress"}', b"\xff\xfe", b"[]"):
                        assert raw.spublish(job_channel("garbage"), payload) == 1
                finally:
                    raw.close()
                seq = await _publish(http, "garbage", {"progress": 40})
                event = await stream.next_event()
                assert event is not None and event.event == "progress" and event.seq == seq
            assert await metric(http, "progress_messages_ignored_total") == 4
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert sum(1 for line in lines if line["event"] == "broker_message_ignored") == 4


async def test_a_job_whose_last_writes_were_lost_goes_on_from_its_stored_seq_on_open_streams(
    own_redis: EmbeddedServer,
) -> None:
    # What a failover before the replica had the last writes leaves (or a Redis restart
    # that lost its last second): the stored job is older than what its streams were shown.
    job = "rewound"
    raw = redis.Redis.from_url(own_redis.url)
    with spawn_hub({"PROGRESS_BROKER_URL": own_redis.url}) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            for progress in (10, 20, 30):
                await _publish(http, job, {"progress": progress})
            kept = cast(dict[bytes, bytes], raw.hgetall(job_key(job)))
            async with await RawStream.open(hub.url, f"/api/jobs/{job}/events") as stream:
                opening = await stream.next_event()
                assert opening is not None and opening.seq == 3
                shown = []
                for progress in (40, 50):
                    await _publish(http, job, {"progress": progress})
                    event = await stream.next_event()
                    assert event is not None
                    shown.append(event.seq)
                assert shown == [4, 5]
                # Seqs 4 and 5 lost: the job's hash back as it was at seq 3.
                raw.hset(job_key(job), items=["seq", kept[b"seq"], "record", kept[b"record"]])
                raw.client_kill_filter(_type="pubsub")  # the feed's gap
                resync = await stream.next_event()
                assert resync is not None and (resync.event, resync.seq) == ("snapshot", 3)
                # The job goes on, reusing the lost seqs, and its streams take them.
                assert await _publish(http, job, {"status": "completed"}) == 4
                ending = [block for block in await stream.blocks_until_close() if block.event]
    raw.close()
    assert [(block.event, block.seq) for block in ending][:2] == [("progress", 4), ("end", 4)]


@pytest.mark.parametrize("through", ["worker", "hub"])
async def test_updates_reusing_lost_seqs_while_the_resync_reads_reach_the_stream_in_order(
    tmp_path: Path, through: str
) -> None:
    # As above, and the job goes on and ends while the hub's resync read is out: their
    # events arrive first, with seqs the stream was already shown, and only the read can
    # tell them from repeats. Published by a worker straight to Redis, or through the hub
    # (which then also knows them from its own commits).
    job, bystander = "rewound-race", "bystander"
    key = job_key(job).encode()
    with EmbeddedServer(data_dir=tmp_path / "redis") as server:
        raw = redis.Redis(port=server.port)
        worker = JobStore(open_broker(server.url))
        with HoldingRelay(server.port) as relay:
            hub_env = {"PROGRESS_BROKER_URL": f"redis://127.0.0.1:{relay.port}/0"}
            with spawn_hub(hub_env) as hub:
                async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:

                    async def publish(job_id: str, body: dict[str, object]) -> int:
                        if through == "hub":
                            return await _publish(http, job_id, body)
                        return (await worker.publish(job_id, msgspec.convert(body, Update))).seq

                    for progress in (10, 20, 30):
                        await publish(job, {"progress": progress})
                    await publish(bystander, {"progress": 1})
                    kept = cast(dict[bytes, bytes], raw.hgetall(job_key(job)))
                    followed = await RawStream.open(hub.url, f"/api/jobs/{job}/events")
                    watcher = await RawStream.open(hub.url, f"/api/jobs/{bystander}/events")
                    try:
                        for stream in (followed, watcher):
                            assert await stream.next_event() is not None
                        for progress in (40, 50):
                            await publish(job, {"progress": progress})
                            assert await followed.next_event() is not None
                        seq_3: list[bytes | str] = ["seq", kept[b"seq"], "record", kept[b"record"]]
                        raw.hset(job_key(job), items=seq_3)  # seqs 4 and 5 lost
                        # Hold the answers to the hub's next read of the job: the resync's.
                        relay.arm(b"HGET\r\n$%d\r\n%s" % (len(key), key))
                        raw.client_kill_filter(_type="pubsub")
                        await eventually(relay.holding.is_set, bool, 10, "the resync reads")
                        assert await publish(job, {"progress": 60}) == 4
                        assert await publish(job, {"status": "completed"}) == 5
                        # The bystander's update travels the feed connection after the
                        # end's event: once it arrived, the hub has had the end's too.
                        await publish(bystander, {"progress": 2})
                        heard = await watcher.next_event()
                        assert heard is not None and heard.seq == 2
                        relay.release()
                        blocks = await followed.blocks_until_close()
                    finally:
                        await followed.aclose()
                        await watcher.aclose()
        raw.close()
        await worker.broker.aclose()
    events = [(block.event, block.seq) for block in blocks if block.event]
    # The stored state, then exactly the updates that reused the lost seqs.
    assert events[-4:] == [("snapshot", 3), ("progress", 4), ("progress", 5), ("end", 5)], events


@pytest.mark.parametrize("watch", WATCHES)
async def test_the_cli_watch_follows_a_job_whose_last_writes_were_lost_to_its_end(
    own_redis: EmbeddedServer, watch: str
) -> None:
    # As above, followed by `progress-hub watch`'s follower instead of a raw stream.
    job = f"rewound-watch-{watch}"
    raw = redis.Redis.from_url(own_redis.url)
    shown = Shown(job)
    with spawn_hub({"PROGRESS_BROKER_URL": own_redis.url}) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            for progress in (10, 20, 30):
                await _publish(http, job, {"progress": progress})
            kept = cast(dict[bytes, bytes], raw.hgetall(job_key(job)))
            with httpx.Client(base_url=hub.url, timeout=10) as client:
                following = threading.Thread(
                    target=watcher(watch, client, shown).follow, daemon=True
                )
                following.start()
                try:
                    # Live: the stream delivered (`--all` shows a list read before it opens).
                    await eventually(
                        lambda: shown.live and shown.seqs == [3], bool, 10, "open at seq 3"
                    )
                    for progress in (40, 50):
                        await _publish(http, job, {"progress": progress})
                    await eventually(lambda: shown.seqs, lambda s: s[-1:] == [5], 10, "seq 5")
                    raw.hset(job_key(job), items=["seq", kept[b"seq"], "record", kept[b"record"]])
                    raw.client_kill_filter(_type="pubsub")  # the feed's gap
                    await eventually(lambda: shown.seqs, lambda s: s[-1:] == [3], 10, "rewound")
                    assert await _publish(http, job, {"status": "completed"}) == 4
                    await eventually(lambda: following.is_alive(), lambda a: not a, 10, "the end")
                finally:
                    following.join(10)
    raw.close()
    assert shown.seqs == [3, 4, 5, 3, 4]
    assert shown.last is not None and (shown.last.seq, shown.last.status) == (4, "completed")
