"""app/follow.py against a real hub: falling back from streaming to polling."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast
from urllib.parse import urlparse

import httpx
import pytest
import redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from progress_hub import follow
from pubsub import JobStatus, JobStore, Update, open_broker
from pubsub.brokers.keys import job_key
from tests.conditions import wait_until
from tests.conftest import HubFactory
from tests.hub import ThreadHub, run_hub
from tests.watchers import WATCHES, Shown, watcher

DEADLINE = 20.0


def test_job_watch_falls_back_to_polling_when_streams_are_turned_away(
    start_hub: HubFactory,
) -> None:
    # One connection allowed and held by us: every stream gets 200, a long jittered
    # retry: and a close (docs/api.md §3, over the connection limit), every poll a 503.
    hub = start_hub(max_connections=1)

    def publish(**update: Any) -> None:
        response = httpx.post(f"{hub.url}/api/jobs/job-1/events", json=update, timeout=5)
        assert response.status_code == 202, response.text

    publish(status="running", progress=30)
    modes: list[str] = []
    asked: list[float] = []
    marks: list[int] = []  # how many sleeps were asked for when each mode was shown

    def on_mode(mode: str) -> None:
        marks.append(len(asked))
        modes.append(mode)

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        time.sleep(0.01)  # honour the order of events, not the length of the waits

    with (
        httpx.Client(base_url=hub.url, timeout=5) as client,
        client.stream("GET", "/api/events") as held,
    ):
        assert held.status_code == 200
        # The hub counts a stream once it has subscribed, which is when it sends
        # its opening snapshots: wait for one so the limit is surely reached.
        # (Keep the iterator referenced: a collected one closes the connection.)
        lines = held.iter_lines()
        while not next(lines).startswith("event: snapshot"):
            pass
        follower = follow.JobWatch(
            client, "job-1", lambda snapshot: None, on_mode, poll_interval=0.05, sleep=sleep
        )
        finished = threading.Thread(target=follower.follow, daemon=True)
        finished.start()
        # Three streams turned away, then polls, which the full hub answers with 503
        # (docs/api.md §7, PROGRESS_MAX_CONNECTIONS) until our stream leaves.
        failures = follow.STREAM_FAILURES_BEFORE_POLLING
        wait_until(lambda: len(modes) > failures, DEADLINE, f"modes: {modes}")
        held.close()
        wait_until(lambda: "polling" in modes, DEADLINE, f"modes: {modes}")
        # The follower's own polls take the one slot now and then: retry a refused publish.
        wait_until(
            lambda: (
                httpx.post(
                    f"{hub.url}/api/jobs/job-1/events", json={"status": "completed"}, timeout=5
                ).status_code
                == 202
            ),
            DEADLINE,
            "the final publish was never admitted",
        )
        finished.join(DEADLINE)
    assert not finished.is_alive(), f"still following; modes: {modes}"
    assert follower.snapshot is not None and follower.snapshot.status == "completed"
    assert modes[: follow.STREAM_FAILURES_BEFORE_POLLING] == ["reconnecting"] * 3
    assert "live" not in modes
    # Each wait between turned-away streams is the hub's retry: hint (5-15 s), slept in
    # poll intervals with a read after each (refused here: the hub is full).
    waits = [sum(asked[start:end]) for start, end in zip(marks[:3], marks[1:4], strict=True)]
    assert all(wait >= 4.99 for wait in waits), f"the hub's retry: hint is honoured: {waits}"


# After a drop the watcher converges within one poll interval or one reconnect,
# whichever comes first: the hub's retry: hint (here 15 s) is no excuse to stay stale.
SLOW_RETRY_MS = 15_000
POLL = 0.2
CONVERGED = 5.0  # far below the retry hint, far above a poll interval on a loaded machine


class HeldStream:
    """ASGI middleware around the real app: the first stream at `path` sends its headers
    and then nothing until `release` (a hub too loaded to subscribe and read)."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path
        self.release = threading.Event()
        self.held = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == self.path
        if not stream or self.held:
            await self.app(scope, receive, send)
            return
        self.held = True

        async def held_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                await asyncio.to_thread(self.release.wait)
            await send(message)

        await self.app(scope, receive, held_send)


def publish_to(url: str, job_id: str, **update: Any) -> None:
    response = httpx.post(f"{url}/api/jobs/{job_id}/events", json=update, timeout=5)
    assert response.status_code == 202, response.text


def port_of(hub: ThreadHub) -> int:
    port = urlparse(hub.url).port
    assert port is not None
    return port


def test_job_watch_reads_the_job_while_it_waits_out_a_long_retry_hint(
    start_hub: HubFactory,
) -> None:
    hub = start_hub(retry_ms=SLOW_RETRY_MS)
    publish_to(hub.url, "job-w", status="running", progress=10)
    modes: list[str] = []
    with httpx.Client(base_url=hub.url, timeout=5) as client:
        watcher = follow.JobWatch(client, "job-w", lambda s: None, modes.append, poll_interval=POLL)
        following = threading.Thread(target=watcher.follow, daemon=True)
        following.start()
        wait_until(lambda: "live" in modes, DEADLINE, f"modes: {modes}")
        hub.stop()  # cut without a drain: the hint stays 15 s
        wait_until(lambda: "reconnecting" in modes, DEADLINE, f"modes: {modes}")
        with run_hub(hub.settings, port=port_of(hub)):
            publish_to(hub.url, "job-w", status="completed")
            following.join(CONVERGED)
            assert not following.is_alive(), f"still waiting for the stream; modes: {modes}"
    assert watcher.snapshot is not None and watcher.snapshot.status == "completed"


def test_job_watch_reads_the_job_when_a_reconnected_stream_is_late(
    start_hub: HubFactory, redis_url: str
) -> None:
    hub = start_hub(retry_ms=100)
    publish_to(hub.url, "job-h", status="running", progress=10)
    modes: list[str] = []
    held: list[HeldStream] = []

    def hold(app: ASGIApp) -> ASGIApp:
        held.append(HeldStream(app, "/api/jobs/job-h/events"))
        return held[-1]

    async def worker_publishes() -> None:
        store = JobStore(open_broker(redis_url))
        try:
            await store.publish("job-h", Update(status=JobStatus.COMPLETED))
        finally:
            await store.broker.aclose()

    with httpx.Client(base_url=hub.url, timeout=5) as client:
        # A poll interval longer than the wait to reconnect: only the read on
        # reconnecting can bring the final state while the stream is held.
        watcher = follow.JobWatch(client, "job-h", lambda s: None, modes.append, poll_interval=30)
        following = threading.Thread(target=watcher.follow, daemon=True)
        following.start()
        wait_until(lambda: "live" in modes, DEADLINE, f"modes: {modes}")
        hub.stop()
        asyncio.run(worker_publishes())  # the job ends while no hub runs
        with run_hub(hub.settings, port=port_of(hub), wrap=hold):
            try:
                wait_until(lambda: held[0].held, DEADLINE, "the watcher did not reconnect")
                following.join(CONVERGED)
                assert not following.is_alive(), f"stuck on the late stream; modes: {modes}"
            finally:
                held[0].release.set()
    assert watcher.snapshot is not None and watcher.snapshot.status == "completed"


def test_all_watch_drops_jobs_deleted_while_the_hub_was_away(start_hub: HubFactory) -> None:
    hub = start_hub(retry_ms=SLOW_RETRY_MS)
    publish_to(hub.url, "keep-1", status="running", progress=10)
    publish_to(hub.url, "gone-1", status="running", progress=10)
    modes: list[str] = []
    with httpx.Client(base_url=hub.url, timeout=5) as client:
        watcher = follow.AllWatch(
            client, lambda jobs: None, modes.append, stop=follow.nothing_active, poll_interval=POLL
        )
        following = threading.Thread(target=watcher.follow, daemon=True)
        following.start()
        wait_until(lambda: "live" in modes, DEADLINE, f"modes: {modes}")
        hub.stop()
        with run_hub(hub.settings, port=port_of(hub)):
            assert httpx.delete(f"{hub.url}/api/jobs/gone-1", timeout=5).status_code == 204
            publish_to(hub.url, "keep-1", status="completed")
            following.join(CONVERGED)
            assert not following.is_alive(), f"jobs: {sorted(watcher.jobs)}; modes: {modes}"
    assert sorted(watcher.jobs) == ["keep-1"]


@pytest.mark.parametrize("watch", WATCHES)
@pytest.mark.parametrize("reused", ["end", "seqs"])
def test_a_watch_takes_the_updates_that_reused_seqs_it_showed(
    start_hub: HubFactory, redis_url: str, watch: str, reused: str
) -> None:
    # A hub restarted on a Redis that lost its last writes: the job went on from seq 3,
    # reusing the seqs 4 and 5 the watcher showed. It ended at seq 4 (an end is the job's
    # last seq), or wrote seqs 4 and 5 again (another write at the shown seq is news).
    job = f"job-r-{watch}-{reused}"
    hub = start_hub(retry_ms=100)
    for progress in (10, 20, 30):
        publish_to(hub.url, job, status="running", progress=progress)
    raw = redis.Redis.from_url(redis_url)
    kept = cast(dict[bytes, bytes], raw.hgetall(job_key(job)))
    shown = Shown(job)
    with httpx.Client(base_url=hub.url, timeout=5) as client:
        following = threading.Thread(
            target=watcher(watch, client, shown, poll_interval=POLL).follow, daemon=True
        )
        following.start()
        # Live: the stream delivered (`watch --all` shows a list read before it opens).
        wait_until(lambda: shown.live and shown.seqs == [3], DEADLINE, f"shown: {shown.seqs}")
        for progress in (40, 50):
            publish_to(hub.url, job, progress=progress)
        wait_until(lambda: shown.seqs[-1:] == [5], DEADLINE, f"shown: {shown.seqs}")
        hub.stop()
        raw.hset(job_key(job), items=["seq", kept[b"seq"], "record", kept[b"record"]])
        raw.close()
        if reused == "end":
            again = [Update(status=JobStatus.COMPLETED)]
        else:
            again = [Update(progress=45), Update(progress=55)]
        assert asyncio.run(_publish_straight(job, redis_url, again)) == [4, 5][: len(again)]
        with run_hub(hub.settings, port=port_of(hub)):
            if reused == "seqs":

                def rewritten() -> bool:
                    return shown.last is not None and shown.last.progress == 55

                wait_until(rewritten, DEADLINE, f"shown: {shown.last}")
                publish_to(hub.url, job, status="completed")
            following.join(CONVERGED)
            assert not following.is_alive(), f"still following; shown: {shown.seqs}"
    assert shown.last is not None and shown.last.status == "completed"
    assert shown.last.seq == (4 if reused == "end" else 6)


async def _publish_straight(job_id: str, redis_url: str, updates: list[Update]) -> list[int]:
    """Publish as a worker does, to Redis with no hub; the seqs they got."""
    store = JobStore(open_broker(redis_url))
    try:
        return [(await store.publish(job_id, update)).seq for update in updates]
    finally:
        await store.broker.aclose()
