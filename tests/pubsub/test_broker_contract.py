"""The contract every broker backend keeps: memory, a private Redis, a private cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import msgspec
import pytest

from pubsub.broker import REQUEST_KEYS_KEPT, Broker, RequestKey, UpdateId, open_broker
from pubsub.errors import (
    BrokerUnavailable,
    IdempotencyKeyReused,
    JobExists,
    JobNotFound,
    JobTerminal,
)
from pubsub.events import ENVELOPE_DECODER, ChunksPatch, EventKind, JobStatus, Update
from pubsub.store import JobStore
from tests.conditions import eventually


async def _subscribe_when_listening(broker: Broker, job_id: str) -> None:
    """Subscribe once the listener task has its feed (it connects in its own task, to
    every shard of a cluster)."""
    await eventually(lambda: broker.feed_up, bool, 5, "the listener has its feed")

    async def subscribed() -> bool:
        try:
            await broker.subscribe(job_id)
        except BrokerUnavailable:
            return False
        return True

    await eventually(subscribed, bool, 5, "the listener took the subscription")


@pytest.fixture(params=["memory", "redis", "cluster"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: memory, a private Redis, a private Redis Cluster."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def contract_store(broker_url: str) -> AsyncIterator[JobStore]:
    broker = open_broker(broker_url)
    try:
        yield JobStore(broker, history=5)
    finally:
        await broker.aclose()


async def test_store_create_then_get_returns_seq_one_queued(contract_store: JobStore) -> None:
    created = await contract_store.create("job-1", pipeline="pdf", meta={"user": 7})
    fetched = await contract_store.get("job-1")
    assert fetched == created
    assert (fetched.seq, fetched.status, fetched.pipeline, fetched.meta) == (
        1,
        JobStatus.QUEUED,
        "pdf",
        {"user": 7},
    )


async def test_store_create_twice_raises_job_exists(contract_store: JobStore) -> None:
    await contract_store.create("job-1")
    with pytest.raises(JobExists):
        await contract_store.create("job-1")


async def test_store_publish_increments_seq_and_creates_unknown_jobs(
    contract_store: JobStore,
) -> None:
    first = await contract_store.publish("fresh", Update(progress=10))
    second = await contract_store.publish("fresh", Update(message="half", progress=50))
    assert (first.seq, second.seq) == (1, 2)
    assert (second.status, second.progress, second.message) == (JobStatus.RUNNING, 50, "half")


async def test_store_retry_of_an_update_it_holds_changes_nothing(
    contract_store: JobStore,
) -> None:
    # What a tracker's retry looks like when the first attempt's answer was lost: the
    # same update under the same id, from a store that no longer trusts its cached record.
    chunk = Update(chunks=ChunksPatch(add_completed=1))
    await contract_store.publish("counted", Update(chunks=ChunksPatch(total=4)))
    first = await contract_store.publish("counted", chunk, update_id=UpdateId("w1", 1))
    retried = await JobStore(contract_store.broker, history=5).publish(
        "counted", chunk, update_id=UpdateId("w1", 1)
    )
    assert retried == first == await contract_store.get("counted")
    assert first.chunks is not None and first.chunks.completed == 1
    # Another writer's update, and this writer's next one, are each applied.
    other = await contract_store.publish("counted", chunk, update_id=UpdateId("w2", 1))
    assert other.chunks is not None and (other.seq, other.chunks.completed) == (3, 2)
    after = await contract_store.publish("counted", chunk, update_id=UpdateId("w1", 2))
    assert after.chunks is not None and (after.seq, after.chunks.completed) == (4, 3)
    # An older number of a writer that has moved on is held too.
    again = await contract_store.publish("counted", chunk, update_id=UpdateId("w1", 1))
    assert again == after
    # A writer forgotten (its tracker closed) is a stranger again.
    await contract_store.forget_writer("counted", "w1")
    anew = await contract_store.publish("counted", chunk, update_id=UpdateId("w1", 2))
    assert anew.chunks is not None and (anew.seq, anew.chunks.completed) == (5, 4)
    assert len(await contract_store.history("counted")) == 5
    # The retry of a job's end is held too, not refused as an update to an ended job.
    done = Update(status=JobStatus.COMPLETED)
    end = await contract_store.publish("counted", done, update_id=UpdateId("w3", 1))
    elsewhere = JobStore(contract_store.broker, history=5)
    assert await elsewhere.publish("counted", done, update_id=UpdateId("w3", 1)) == end


async def test_store_retry_under_a_request_key_is_applied_once(
    contract_store: JobStore,
) -> None:
    # An HTTP caller's retry: the same key and body, from a store (another hub process)
    # that did not make the first attempt.
    chunk = Update(chunks=ChunksPatch(add_completed=1))
    await contract_store.publish("keyed", Update(chunks=ChunksPatch(total=2)))
    first = await contract_store.publish("keyed", chunk, request_key=RequestKey.of("k1", b"d1"))
    elsewhere = JobStore(contract_store.broker, history=5)
    assert await elsewhere.publish("keyed", chunk, request_key=RequestKey.of("k1", b"d1")) == first
    # The key with another update's digest is refused, and changes nothing.
    with pytest.raises(IdempotencyKeyReused):
        await elsewhere.publish("keyed", chunk, request_key=RequestKey.of("k1", b"d2"))
    last = await contract_store.publish("keyed", chunk, request_key=RequestKey.of("k2", b"d1"))
    assert last.chunks is not None and (last.seq, last.chunks.completed) == (3, 2)
    # The retry of the last chunk would be past the total, and of an end, to an ended
    # job: each is answered as held, not refused.
    assert await elsewhere.publish("keyed", chunk, request_key=RequestKey.of("k2", b"d1")) == last
    done = Update(status=JobStatus.COMPLETED)
    end = await contract_store.publish("keyed", done, request_key=RequestKey.of("k3", b"d3"))
    assert await elsewhere.publish("keyed", done, request_key=RequestKey.of("k3", b"d3")) == end
    with pytest.raises(JobTerminal):
        await elsewhere.publish("keyed", done, request_key=RequestKey.of("k4", b"d3"))
    assert await contract_store.get("keyed") == end


async def test_store_keeps_the_request_keys_of_a_jobs_last_keyed_updates(
    contract_store: JobStore,
) -> None:
    beat = Update(message="tick")
    for n in range(REQUEST_KEYS_KEPT + 1):
        await contract_store.publish("window", beat, request_key=RequestKey.of(f"k{n}", b"d"))
    # The newest keys are held; the oldest has left the window and applies again.
    held = await contract_store.publish("window", beat, request_key=RequestKey.of("k1", b"d"))
    assert held.seq == REQUEST_KEYS_KEPT + 1
    anew = await contract_store.publish("window", beat, request_key=RequestKey.of("k0", b"d"))
    assert anew.seq == REQUEST_KEYS_KEPT + 2


async def test_store_history_is_capped_and_ordered(contract_store: JobStore) -> None:
    for percent in range(1, 9):
        await contract_store.publish("capped", Update(progress=percent))
    history = await contract_store.history("capped")
    assert [msgspec.json.decode(raw)["seq"] for raw in history] == [4, 5, 6, 7, 8]


async def test_store_replay_returns_missed_events_or_none_past_history(
    contract_store: JobStore,
) -> None:
    for percent in range(1, 9):
        await contract_store.publish("replayed", Update(progress=percent))
    within = await contract_store.replay("replayed", 5)
    assert within.missed is not None
    assert [msgspec.json.decode(raw)["seq"] for raw in within.missed] == [6, 7, 8]
    assert (await contract_store.replay("replayed", 8)).missed == []
    assert (await contract_store.replay("replayed", 1)).missed is None  # trimmed away
    assert (await contract_store.replay("replayed", 99)).missed is None  # store was reset


async def test_store_terminal_job_refuses_updates_and_keeps_state(
    contract_store: JobStore,
) -> None:
    await contract_store.publish("done", Update(status=JobStatus.COMPLETED, result="ok"))
    with pytest.raises(JobTerminal):
        await contract_store.publish("done", Update(progress=10))
    snapshot = await contract_store.get("done")
    assert (snapshot.seq, snapshot.progress, snapshot.has_result) == (1, 100, True)
    assert await contract_store.result("done") == (b"ok", "text/plain; charset=utf-8")


async def test_store_delete_removes_job_and_result(contract_store: JobStore) -> None:
    await contract_store.publish("gone", Update(result={"a": 1}))
    await contract_store.delete("gone")
    with pytest.raises(JobNotFound):
        await contract_store.get("gone")
    with pytest.raises(JobNotFound):
        await contract_store.result("gone")
    with pytest.raises(JobNotFound):
        await contract_store.delete("gone")


async def test_store_list_jobs_newest_first_filtered_by_status(contract_store: JobStore) -> None:
    clock = iter(range(1000, 2000))
    contract_store._clock = lambda: float(next(clock))  # deterministic creation order
    await contract_store.create("a")
    await contract_store.create("b")
    await contract_store.publish("c", Update(progress=5))
    all_jobs = await contract_store.list_jobs()
    assert [s.job_id for s in all_jobs] == ["c", "b", "a"]
    running = await contract_store.list_jobs(status=[JobStatus.RUNNING])
    assert [s.job_id for s in running] == ["c"]
    assert [s.job_id for s in await contract_store.list_jobs(limit=1)] == ["c"]


async def test_broker_delivers_envelopes_of_subscribed_jobs_only(broker_url: str) -> None:
    broker: Broker = open_broker(broker_url)
    store = JobStore(broker)
    received: list[tuple[str, int, bool]] = []
    got_two = anyio.Event()

    def on_message(raw: bytes, every_job: bool) -> None:
        envelope = ENVELOPE_DECODER.decode(raw)
        received.append((envelope.snapshot.job_id, envelope.snapshot.seq, every_job))
        if len(received) == 2:
            got_two.set()

    async def on_gap(channels: object) -> None:
        return None

    assert not broker.feed_up  # nothing listens yet: a hub must not say it is ready
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(broker.listen, on_message, on_gap)
            with anyio.fail_after(5):
                await _subscribe_when_listening(broker, "watched")
                assert broker.feed_up
                await store.publish("ignored", Update(progress=1))
                await store.publish("watched", Update(progress=2))
                await broker.unsubscribe("watched")
                await broker.subscribe(None)
                await store.publish("ignored", Update(progress=3))
                await got_two.wait()
            tg.cancel_scope.cancel()
        assert not broker.feed_up
    finally:
        await broker.aclose()
    assert received == [("watched", 1, False), ("ignored", 2, True)]


async def test_store_delete_publishes_deleted_envelope(broker_url: str) -> None:
    broker = open_broker(broker_url)
    store = JobStore(broker)
    kinds: list[EventKind] = []
    deleted = anyio.Event()

    def on_message(raw: bytes, every_job: bool) -> None:
        kinds.append(ENVELOPE_DECODER.decode(raw).event)
        if kinds[-1] is EventKind.DELETED:
            deleted.set()

    async def on_gap(channels: object) -> None:
        return None

    await store.publish("doomed", Update(progress=1))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(broker.listen, on_message, on_gap)
            with anyio.fail_after(5):
                await _subscribe_when_listening(broker, "doomed")
                await store.delete("doomed")
                await deleted.wait()
            tg.cancel_scope.cancel()
    finally:
        await broker.aclose()
    assert kinds == [EventKind.DELETED]


async def test_store_seq_reads_the_current_seq_or_raises(contract_store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        await contract_store.seq("nobody")
    await contract_store.publish("counted", Update(progress=1))
    await contract_store.publish("counted", Update(progress=2))
    assert await contract_store.seq("counted") == 2
