"""The scenarios of docs/performance.md, each run against one target on a fresh server process.

Every load loop is bounded twice: by a count of events or requests, and by a deadline.
A figure counts only when every subscriber got every event in order (`Delivery.complete`);
when a slow subscriber was conflated to the latest state instead, the row says so and
the figure does not pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fleet import STREAMS_PER_PROCESS, Delivery, Fleet, Opened, percentile
from bench.procs import ProcStat, Server, flush_redis
from bench.profile import recording
from bench.targets import HEARTBEAT, Target

BURST_ROUND = 50  # events per burst round: under the hub's 64-frame mailbox (app/fanout.py)


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each scenario is; `--full` uses the sizes named in docs/performance.md."""

    stream_counts: tuple[int, ...] = (2_000, 5_000)
    stream_jobs: int = 100
    fanout_subscribers: int = 1_000
    burst_events: int = 200
    paced_rates: tuple[int, ...] = (20, 100)
    paced_seconds: float = 5.0
    many_jobs: int = 1_000
    many_events: int = 30
    load_seconds: float = 3.0
    load_connections: int = 32
    library_events: int = 20_000
    baseline_max_streams: int = 9_000  # two descriptors per stream in the baseline


FULL = Sizes(
    stream_counts=(5_000, 19_500),
    burst_events=1_000,
    paced_seconds=10.0,
    many_events=100,
    load_seconds=5.0,
    library_events=100_000,
)


@dataclass(slots=True)
class Context:
    """What every scenario needs."""

    redis_url: str
    sizes: Sizes
    log_dir: Path
    raw: dict[str, Any]
    profile_dir: Path | None = None

    def profile(self, srv: Server, phase: str) -> contextlib.AbstractContextManager[None]:
        """py-spy the server during a phase when profiling was asked for."""
        if self.profile_dir is None:
            return contextlib.nullcontext()
        name = f"{phase}-{srv.name}".replace(" ", "_").replace("(", "").replace(")", "")
        return recording(srv.proc.pid, self.profile_dir / f"profile-{name}.txt")


def delivery_check(d: Delivery) -> str:
    """`delivered/expected`, plus what went wrong if anything did."""
    text = f"{d.delivered}/{d.expected} delivered"
    problems = []
    if d.gaps:
        problems.append(f"{d.gaps} conflated")
    if d.disorder:
        problems.append(f"{d.disorder} out of order")
    if d.unfinished:
        problems.append(f"{d.unfinished} streams short")
    return text + (f", {', '.join(problems)}" if problems else "")


def delivery_raw(d: Delivery) -> dict[str, Any]:
    """A delivery for the JSON record (latencies summarised)."""
    lat = d.latencies_ns
    return {
        "delivered": d.delivered, "expected": d.expected, "gaps": d.gaps,
        "disorder": d.disorder, "unfinished": d.unfinished, "closed": d.closed,
        "complete": d.complete, "client_cpu_s": d.client_cpu,
        "latency_ms": {q: percentile(lat, q) / 1e6 for q in (50, 90, 99, 100)} if lat else None,
    }  # fmt: skip


def require_all(opened: Opened, n: int) -> None:
    """Stop a scenario whose subscribers did not all connect: its figures would mislead."""
    if opened.connected != n:
        raise RuntimeError(f"only {opened.connected}/{n} streams opened: {opened.errors}")


async def publish_range(target: Target, job_id: str, first: int, last: int, total: int) -> None:
    """Publish events first..last of one job back to back, in order."""
    for index in range(first, last + 1):
        await target.publish(job_id, index, total)


async def publish_paced(
    target: Target, job_id: str, first: int, count: int, rate: float, total: int
) -> float:
    """Publish count events at `rate` per second; return the rate achieved."""
    start = time.monotonic()
    for k in range(count):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await target.publish(job_id, first + k, total)
    elapsed = time.monotonic() - start
    return count / elapsed if elapsed > 0 else float("inf")


@dataclass(slots=True)
class StreamFigures:
    """Memory and connect figures for n idle streams."""

    opened: Opened
    rss_per_stream: float
    alive: int
    connect_cpu_us: float


async def idle_streams(ctx: Context, target: Target, n: int) -> StreamFigures:
    """Open n streams on a fresh server, hold them idle through heartbeats, read RSS."""
    await flush_redis(ctx.redis_url)
    jobs = ctx.sizes.stream_jobs
    async with target.server(ctx.redis_url, ctx.log_dir) as srv:
        await target.create_jobs(f"idle{i}" for i in range(jobs))
        # Warm up lazily built state (imports, pools) so the delta is per stream.
        async with Fleet.run(srv.port) as warm:
            await warm.open(50, jobs, "idle")
        await asyncio.sleep(0.5)
        before = srv.stat().rss
        async with Fleet.run(srv.port, math.ceil(n / STREAMS_PER_PROCESS)) as fleet:
            cpu0 = srv.stat().cpu
            with ctx.profile(srv, f"connect{n}"):
                opened = await fleet.open(n, jobs, "idle", concurrency=512, timeout=60)
            connect_cpu = srv.stat().cpu - cpu0
            await asyncio.sleep(HEARTBEAT * 1.5 + 0.5)  # at least one heartbeat per stream
            after = srv.stat().rss
            await fleet.arm(0)
            alive = await fleet.wait(0)
    per = (after - before) / opened.connected if opened.connected else 0.0
    cpu_us = connect_cpu * 1e6 / opened.connected if opened.connected else 0.0
    return StreamFigures(opened, per / 1024, opened.connected - alive.closed, cpu_us)


@dataclass(slots=True)
class FanoutFigures:
    """One job fanned out to many subscribers: paced latency phases, then a burst."""

    paced: dict[int, tuple[Delivery, float, float]]
    """Per rate: delivery, events/s achieved, hub CPU µs per delivery (one event a write)."""
    burst: Delivery
    burst_rate: float
    cpu_us: float
    opened: Opened


async def fanout(ctx: Context, target: Target) -> FanoutFigures:
    """1 job x N subscribers: paced phases at each rate (latency), then a burst (rate, CPU)."""
    sizes = ctx.sizes
    await flush_redis(ctx.redis_url)
    counts = {rate: int(rate * sizes.paced_seconds) for rate in sizes.paced_rates}
    total = sum(counts.values()) + sizes.burst_events
    job = "fan0"
    async with target.server(ctx.redis_url, ctx.log_dir) as srv:
        await target.create_jobs([job])
        async with Fleet.run(srv.port) as fleet:
            opened = await fleet.open(sizes.fanout_subscribers, 1, "fan", timeout=60)
            require_all(opened, sizes.fanout_subscribers)
            index = 0
            paced: dict[int, tuple[Delivery, float, float]] = {}
            for rate, count in counts.items():
                await fleet.arm(index + count, record=True)
                fleet0 = fleet.cpu()
                cpu0 = srv.stat().cpu
                with ctx.profile(srv, f"paced{rate}"):
                    achieved = await publish_paced(target, job, index + 1, count, rate, total)
                    delivery = await fleet.wait(
                        10 + count * sizes.fanout_subscribers / 10_000, latencies=True
                    )
                cpu_us = (srv.stat().cpu - cpu0) * 1e6 / max(1, delivery.delivered)
                delivery.client_cpu = fleet.cpu() - fleet0
                paced[rate] = (delivery, achieved, cpu_us)
                index += count
            with ctx.profile(srv, "burst"):
                burst, burst_rate, cpu = await burst_phase(srv, fleet, target, job, index, total)
    return FanoutFigures(paced, burst, burst_rate, cpu, opened)


async def burst_phase(
    srv: Server | ServerGroup, fleet: Fleet, target: Target, job: str, index: int, total: int
) -> tuple[Delivery, float, float]:
    """Publish the rest of the job's events in back-to-back rounds; deliveries/s, CPU µs each.

    A round is `BURST_ROUND` events, fewer than the hub's per-stream mailbox holds, then a
    wait until every subscriber has all of them: longer bursts get conflated by design,
    and a conflated figure would count writes saved rather than events delivered.
    """
    rounds: list[Delivery] = []
    busy_ns = 0
    cpu = client_cpu = 0.0
    while index < total:
        last = min(total, index + BURST_ROUND)
        expected = await fleet.arm(last)
        cpu0, fleet0 = srv.stat().cpu, fleet.cpu()
        t0 = time.monotonic_ns()
        await publish_range(target, job, index + 1, last, total)
        delivery = await fleet.wait(10 + expected / 5_000)
        cpu += srv.stat().cpu - cpu0
        client_cpu += fleet.cpu() - fleet0
        busy_ns += max(0, delivery.last_ns - t0)
        rounds.append(delivery)
        index = last
    merged = Delivery(
        delivered=sum(d.delivered for d in rounds),
        expected=sum(d.expected for d in rounds),
        gaps=sum(d.gaps for d in rounds),
        disorder=sum(d.disorder for d in rounds),
        first_ns=rounds[0].first_ns if rounds else 0,
        last_ns=rounds[-1].last_ns if rounds else 0,
        unfinished=max((d.unfinished for d in rounds), default=0),
        closed=rounds[-1].closed if rounds else 0,
        client_cpu=client_cpu,
    )
    rate = merged.delivered / (busy_ns / 1e9) if busy_ns else 0.0
    cpu_us = cpu * 1e6 / merged.delivered if merged.delivered else 0.0
    return merged, rate, cpu_us


@dataclass(slots=True)
class ManyJobsFigures:
    """Many jobs, one subscriber each, all published concurrently."""

    delivery: Delivery
    rate: float
    cpu_us: float
    publish_rate: float


async def many_jobs(
    ctx: Context,
    target: Target,
    workers: int = 32,
    *,
    redis_url: str | None = None,
    measured: Callable[[list[str], int], contextlib.AbstractContextManager[Any]] | None = None,
) -> ManyJobsFigures:
    """N jobs x 1 subscriber; `workers` publishers each own a slice of the jobs.

    Args:
        redis_url: another Redis than the bench's own (the cluster scenario); not flushed.
        measured: entered around the publishing, given the jobs and the events per job
            (the cluster scenario reads each shard's CPU with it).
    """
    sizes = ctx.sizes
    if redis_url is None:
        redis_url = ctx.redis_url
        await flush_redis(redis_url)
    jobs = [f"many{i}" for i in range(sizes.many_jobs)]
    events = sizes.many_events
    async with target.server(redis_url, ctx.log_dir) as srv:
        await target.create_jobs(jobs)
        async with Fleet.run(srv.port) as fleet:
            require_all(await fleet.open(len(jobs), len(jobs), "many", timeout=60), len(jobs))
            expected = await fleet.arm(events)

            async def worker(mine: list[str]) -> None:
                for index in range(1, events + 1):
                    await target.publish_round(mine, index, events)

            cpu0 = srv.stat().cpu
            fleet0 = fleet.cpu()
            t0 = time.monotonic_ns()
            around = measured(jobs, events) if measured else contextlib.nullcontext()
            with ctx.profile(srv, f"many-{target.name}"), around:
                await asyncio.gather(*(worker(jobs[w::workers]) for w in range(workers)))
                published = time.monotonic_ns()
                delivery = await fleet.wait(10 + expected / 5_000)
            cpu = srv.stat().cpu - cpu0
            delivery.client_cpu = fleet.cpu() - fleet0
    seconds = (delivery.last_ns - t0) / 1e9
    return ManyJobsFigures(
        delivery=delivery,
        rate=delivery.delivered / seconds if seconds > 0 else 0.0,
        cpu_us=cpu * 1e6 / delivery.delivered if delivery.delivered else 0.0,
        publish_rate=len(jobs) * events / ((published - t0) / 1e9),
    )


@dataclass(slots=True)
class ScalingFigures:
    """Burst fan-out with the same subscribers spread over 1..N hub processes."""

    hubs: int
    delivery: Delivery
    rate: float
    cpu_us: float


class ServerGroup:
    """Several servers measured as one: CPU and RSS summed."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers

    def stat(self) -> ProcStat:
        """Summed CPU seconds and RSS of every server."""
        stats = [s.stat() for s in self.servers]
        return ProcStat(cpu=sum(s.cpu for s in stats), rss=sum(s.rss for s in stats))


async def scaling(ctx: Context, make: Callable[[], Target], hubs: int) -> ScalingFigures:
    """1 job x N subscribers split over `hubs` hub processes on one Redis; burst rounds."""
    sizes = ctx.sizes
    await flush_redis(ctx.redis_url)
    async with contextlib.AsyncExitStack() as stack:
        targets = [make() for _ in range(hubs)]
        servers = [await stack.enter_async_context(t.server(ctx.redis_url, ctx.log_dir))
                   for t in targets]  # fmt: skip
        feed = targets[0]
        await feed.create_jobs(["scale0"])
        fleet = await stack.enter_async_context(Fleet.run([s.port for s in servers]))
        require_all(await fleet.open(sizes.fanout_subscribers, 1, "scale", timeout=60),
                    sizes.fanout_subscribers)  # fmt: skip
        delivery, rate, cpu_us = await burst_phase(
            ServerGroup(servers), fleet, feed, "scale0", 0, sizes.burst_events
        )
    return ScalingFigures(hubs, delivery, rate, cpu_us)
