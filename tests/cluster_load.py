"""Load for cluster fault tests: publishers that record what was acknowledged, stream
watchers that record what was delivered, and a readiness probe that records its answers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from redis.crc import key_slot

from pubsub.brokers import keys
from pubsub.publisher import Tracker
from pubsub.store import JobStore
from tests.cluster import RedisCluster
from tests.sse_frames import Frame
from tests.streams import RawStream

# Pacing between retries of a refused publish (what a worker's retry loop does), and
# between readiness probes: not waits for anything.
RETRY_PACING = 0.05
PROBE_PACING = 0.1
FINAL_PUBLISH_TIMEOUT = 15.0


def job_ids_by_master(cluster: RedisCluster, prefix: str, per_master: int) -> dict[int, list[str]]:
    """`per_master` job ids for each master (by port), each stored on that master now."""
    owners = cluster.slot_ports()
    found: dict[int, list[str]] = {node.port: [] for node in cluster.master_nodes()}
    index = 0
    while any(len(ids) < per_master for ids in found.values()):
        job_id = f"{prefix}-{index}"
        ids = found[owners[key_slot(keys.job_key(job_id).encode())]]
        if len(ids) < per_master:
            ids.append(job_id)
        index += 1
    return found


def slot_of(job_id: str) -> int:
    """The cluster slot holding a job's keys and channel."""
    return key_slot(keys.job_key(job_id).encode())


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged update: the seq it got, the message it set, when it returned."""

    seq: int
    message: str
    at: float


@dataclass
class Publisher:
    """Publishes one job until `stop`, then one final update that must go through."""

    job_id: str
    acks: list[Ack] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)  # when HTTP publishes got a 503

    @property
    def last(self) -> Ack:
        """The last acknowledged update."""
        return self.acks[-1]

    def served_again(self) -> float | None:
        """When the first update after the first refusal was acknowledged (None: no refusal)."""
        if not self.refusals:
            return None
        return next((ack.at for ack in self.acks if ack.at > self.refusals[0]), None)


async def publish_http(
    http: httpx.AsyncClient, publisher: Publisher, stop: asyncio.Event, on_ack: Callable[[], None]
) -> None:
    """`POST /api/jobs/{id}/events` in a loop; a 503 is retried, as a worker would."""
    step = 0

    async def once(message: str) -> bool:
        body = {"status": "running", "progress": step % 100, "message": message}
        response = await http.post(f"/api/jobs/{publisher.job_id}/events", json=body)
        if response.status_code == 202:
            publisher.acks.append(Ack(response.json()["seq"], message, time.monotonic()))
            on_ack()
            return True
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        publisher.refusals.append(time.monotonic())
        await asyncio.sleep(RETRY_PACING)
        return False

    while not stop.is_set():
        if await once(f"http {step}"):
            step += 1
    try:
        async with asyncio.timeout(FINAL_PUBLISH_TIMEOUT):
            while not await once(f"http final {step}"):
                pass
    except TimeoutError:
        raise AssertionError(
            f"HTTP publishes to {publisher.job_id} refused for {FINAL_PUBLISH_TIMEOUT} s"
        ) from None


async def publish_library(
    store: JobStore, publisher: Publisher, stop: asyncio.Event, on_ack: Callable[[], None]
) -> None:
    """A tracker's `message()` then `flush()` in a loop: acknowledged when flush returns."""
    async with Tracker(store, publisher.job_id, coalesce=0) as tracker:

        async def once(message: str) -> None:
            await tracker.message(message)
            await tracker.flush()
            assert tracker.snapshot is not None
            publisher.acks.append(Ack(tracker.snapshot.seq, message, time.monotonic()))
            on_ack()

        step = 0
        while not stop.is_set():
            await once(f"lib {step}")
            step += 1
        try:
            async with asyncio.timeout(FINAL_PUBLISH_TIMEOUT):
                await once(f"lib final {step}")
        except TimeoutError:
            raise AssertionError(
                f"the library's publishes to {publisher.job_id} not flushed within "
                f"{FINAL_PUBLISH_TIMEOUT} s (outage: {tracker.outage})"
            ) from None


@dataclass
class Watcher:
    """Reads one open stream to its end, noting each event and when it came."""

    job_id: str
    stream: RawStream
    events: list[tuple[float, Frame]] = field(default_factory=list)
    closed: bool = False

    async def run(self) -> None:
        """Read until the server closes the stream (or the task is cancelled)."""
        while (event := await self.stream.next_event(timeout=3600)) is not None:
            self.events.append((time.monotonic(), event))
        self.closed = True

    def reached(self, seq: int) -> float | None:
        """When the stream first delivered `seq` or later, if it has."""
        return next((at for at, event in self.events if event.seq >= seq), None)

    def latest(self) -> dict[str, object]:
        """The data of the last event delivered."""
        data = self.events[-1][1].data
        assert data is not None
        decoded: dict[str, object] = json.loads(data)
        return decoded

    def gaps(self) -> int:
        """Progress events past the highest seq delivered + 1: events missed with no
        snapshot in their place."""
        high, missed = 0, 0
        for _, event in self.events:
            if event.event == "progress" and event.seq > high + 1:
                missed += 1
            high = max(high, event.seq)
        return missed

    def regressions(self) -> int:
        """Events older than one the stream had already delivered (a stale state shown)."""
        high, stale = 0, 0
        for _, event in self.events:
            if event.seq < high:
                stale += 1
            high = max(high, event.seq)
        return stale


@dataclass
class Readiness:
    """`GET /readyz` answers over time."""

    answers: list[tuple[float, float, int]] = field(default_factory=list)

    async def run(self, http: httpx.AsyncClient) -> None:
        """Probe until cancelled, noting (sent, answered, status)."""
        while True:
            sent = time.monotonic()
            status = (await http.get("/readyz")).status_code
            self.answers.append((sent, time.monotonic(), status))
            await asyncio.sleep(PROBE_PACING)

    def not_ready(self) -> list[tuple[float, float, int]]:
        """Every answer other than 200."""
        return [answer for answer in self.answers if answer[2] != 200]
