"""Nothing in a hub grows with the number of jobs ever seen (docs/production.md, metrics).

Through the hub's own `GET /metrics` (`progress_held{structure=...}`): a thousand
distinct jobs are created, followed once each by one stream until their `end`, and every
structure that holds something per stream or per job is back to its size before, or
within its fixed bound. No RSS here (allocator noise); `bench/growth.py` measures that.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from progress_hub.clock import STALE_DEADLINES, Clock
from progress_hub.mailbox import Mailbox
from pubsub.brokers.commands import SLOT_KEYS
from pubsub.brokers.memory import MemoryBroker
from pubsub.brokers.slotkeys import SlotKeys, build
from pubsub.errors import JobTerminal
from pubsub.events import JobStatus, Update
from pubsub.store import KNOWN_RECORDS, JobStore
from tests.conditions import eventually
from tests.conftest import store_on
from tests.hub import spawn_hub
from tests.probes import settled
from tests.streams import RawStream

JOBS = 1_000
CONCURRENCY = 32


async def held(http: httpx.AsyncClient) -> dict[str, int]:
    """Every `progress_held` sample of the hub, by structure."""
    response = await http.get("/metrics")
    response.raise_for_status()
    return {
        sample.labels["structure"]: int(sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "progress_held"
    }


class Writer:
    """One keep-alive connection for the test's POSTs: thousands of them cost the test
    less this way than through an HTTP library (the hub is what is measured)."""

    def __init__(self, url: str) -> None:
        self.address = urlsplit(url)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, object]) -> tuple[int, bytes]:
        """POST `body` as JSON; the status and the body of the answer."""
        if self.reader is None or self.writer is None:
            host, port = self.address.hostname, self.address.port
            self.reader, self.writer = await asyncio.open_connection(host, port)
        data = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.address.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        return status, await self.reader.readexactly(length)

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def follow_once(http: Writer, url: str, job_id: str) -> None:
    """Create a job, follow it with one stream, complete it, read the stream to `end`."""
    status, body = await http.post("/api/jobs", {"job_id": job_id})
    assert status == 201, body
    async with await RawStream.open(url, f"/api/jobs/{job_id}/events") as stream:
        assert stream.status == 200
        first = await stream.next_event()
        assert first is not None and first.event == "snapshot", first
        status, body = await http.post(f"/api/jobs/{job_id}/events", {"status": "completed"})
        assert status == 202, body
        events = [block.event for block in await stream.blocks_until_close() if block.event]
    assert events == ["progress", "end"], (job_id, events)


async def test_hub_following_1000_jobs_once_keeps_nothing_of_them(redis_url: str) -> None:
    with spawn_hub({"PROGRESS_BROKER_URL": redis_url}) as hub:
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            first = Writer(hub.url)
            # The first job connects what a hub connects once (the feed's shard, pools).
            await follow_once(first, hub.url, "growth-warm-up")
            assert (await http.post("/api/jobs", json={"job_id": "growth-held"})).is_success
            async with await RawStream.open(hub.url, "/api/jobs/growth-held/events") as open_:
                assert (await open_.next_event()) is not None
                during = await held(http)
            await eventually(lambda: settled(http), bool, 5, "the first streams left")
            before = await held(http)

            ids = iter(f"growth-{n}" for n in range(JOBS))

            async def worker() -> None:
                writer = Writer(hub.url)
                try:
                    for job_id in ids:
                        await follow_once(writer, hub.url, job_id)
                finally:
                    await writer.aclose()

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            took = time.monotonic() - started
            await first.aclose()
            await eventually(lambda: settled(http), bool, 10, "every stream left")
            after = await eventually(
                lambda: held(http),
                lambda now: now == before,
                10,
                "every structure back to its size before",
            )
    # The gauges see what a followed job holds: a stream, a channel, a subscription.
    assert during["fanout.open_streams"] == during["channels.followed"] == 1, during
    assert during["clock.heartbeat_slots"] == 1, during
    assert during["feed.channels"] == before["feed.channels"] + 1, during
    # The record cache too: each job's record was dropped with its completion.
    assert after == before
    print(f"\n{JOBS} jobs followed once in {took:.1f} s; held after: {after}")


async def test_store_record_cache_keeps_at_most_its_bound() -> None:
    store = JobStore(MemoryBroker())
    jobs = KNOWN_RECORDS + 100
    for n in range(jobs):
        await store.publish(f"cached-{n}", Update(progress=50))
    assert store.footprint() == {"store.known_records": KNOWN_RECORDS}
    # The least recently published went first: the newest are still known.
    await store.publish(f"cached-{jobs - 1}", Update(progress=60))
    assert store.footprint() == {"store.known_records": KNOWN_RECORDS}


async def test_store_keeps_nothing_of_a_finished_job(broker_url: str) -> None:
    async with store_on(broker_url) as store:
        keys_before = len(SLOT_KEYS)
        for n in range(100):
            await store.create(f"ends-{n}")
            await store.publish(f"ends-{n}", Update(progress=50))
            assert store.footprint() == {"store.known_records": n % 10 + 1}
            if n % 10 == 9:  # ten running jobs at a time, then all ten end
                for m in range(n - 9, n + 1):
                    await store.publish(f"ends-{m}", Update(status=JobStatus.COMPLETED))
                assert store.footprint() == {"store.known_records": 0}
                assert len(SLOT_KEYS) == keys_before
        # A finished job answers as before: terminal, from the stored record.
        with pytest.raises(JobTerminal):
            await store.publish("ends-0", Update(progress=60))
        assert (await store.get("ends-0")).status is JobStatus.COMPLETED
        await store.create("ends-deleted")
        await store.publish("ends-deleted", Update(progress=10))
        await store.delete("ends-deleted")
        assert store.footprint() == {"store.known_records": 0}
        assert len(SLOT_KEYS) == keys_before


def test_slot_keys_keep_running_jobs_up_to_their_bound() -> None:
    slot_keys = SlotKeys(bound=3)
    for n in range(5):
        assert slot_keys.get(f"job-{n}") == build(f"job-{n}")
    assert len(slot_keys) == 3
    assert slot_keys.take("job-4") == build("job-4")
    assert slot_keys.take("job-0") == build("job-0")  # long gone: built again
    assert len(slot_keys) == 2


def test_clock_streams_of_one_expiry_second_leave_no_deadline_behind() -> None:
    clock = Clock(heartbeat=15.0)
    expires_at = time.time() + 3600  # one long-lived token, used by stream after stream
    for _ in range(10_000):
        mailbox = Mailbox(job_id="job", expires_at=expires_at)
        clock.add(mailbox)
        clock.remove(mailbox)
    footprint = clock.footprint()
    assert footprint["clock.heartbeat_slots"] == footprint["clock.expiry_buckets"] == 0
    assert footprint["clock.expiry_deadlines"] <= STALE_DEADLINES + 1, footprint
