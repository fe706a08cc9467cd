"""`pubsub.tqdm`: tqdm's bar, drawn as usual and published through a real SyncTracker."""

from __future__ import annotations

import io
import time

import anyio
import msgspec

from pubsub.store import JobStore
from pubsub.sync import SyncTracker
from pubsub.tqdm import tqdm, trange

ITEMS = 10_000


def _work() -> None:
    """A little real work per item: the loop lasts about a second, so that an ETA taken
    mid-way is tenths of a second, not rounded to 0.0 (ETAs carry one decimal)."""
    deadline = time.perf_counter() + 0.0001
    while time.perf_counter() < deadline:
        pass


def _loop(url: str, job_id: str, bar: io.StringIO) -> None:
    with SyncTracker(url, job_id) as job:
        job.start()
        for _ in tqdm(range(ITEMS), tracker=job, file=bar, desc="Pages"):
            _work()


async def test_tqdm_publishes_far_fewer_times_than_items_and_ends_exact(
    redis_url: str, store: JobStore
) -> None:
    bar = io.StringIO()

    await anyio.to_thread.run_sync(_loop, redis_url, "tqdm-1", bar)

    events = [msgspec.json.decode(raw) for raw in await store.history("tqdm-1")]
    final = events[-1]
    assert (final["progress"], final["eta_seconds"]) == (100, 0)
    assert final["message"].startswith(f"Pages: {ITEMS}/{ITEMS} (")
    assert final["message"].endswith(" it/s)")
    assert len(events) < ITEMS / 20, f"{len(events)} publishes for {ITEMS} items"
    midway = [e for e in events if 0 < e["progress"] < 100]
    assert midway, "no publish while the loop ran"
    assert any(e["eta_seconds"] is not None and e["eta_seconds"] > 0 for e in midway), [
        (e["progress"], e["eta_seconds"], e["message"]) for e in midway
    ]
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    assert f"{ITEMS}/{ITEMS}" in bar.getvalue(), "tqdm's own bar is still drawn"


def _quiet_loops(url: str) -> None:
    with SyncTracker(url, "tqdm-quiet") as job:
        for _ in trange(250, tracker=job, disable=True):
            pass
    with SyncTracker(url, "tqdm-manual") as job:
        bar: tqdm[int]
        with tqdm(tracker=job, file=io.StringIO(), unit="page") as bar:
            for _ in range(7):
                bar.update(3)


async def test_tqdm_publishes_without_a_drawn_bar_and_without_a_total(
    redis_url: str, store: JobStore
) -> None:
    await anyio.to_thread.run_sync(_quiet_loops, redis_url)

    quiet = await store.get("tqdm-quiet")
    assert (quiet.progress, quiet.message.split(" (")[0]) == (100, "250/250")
    manual = await store.get("tqdm-manual")
    assert manual.message.split(" (")[0] == "21 page"
    assert manual.progress == 0
