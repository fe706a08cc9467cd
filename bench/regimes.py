"""The regimes where users are: HTTP publishers one request at a time, many jobs with one
watcher each, streams to new jobs, and many idle streams at the default heartbeat.

Every figure here is one event per write (no burst, so no write coalescing): each
publish is answered before the next is sent, by each of `SEQUENTIAL_CLIENTS` clients.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

from rich.console import Console

from bench.fleet import STREAMS_PER_PROCESS, Delivery, Fleet, Opened
from bench.http import HttpConnection
from bench.procs import flush_redis
from bench.report import Report, Row, attempt
from bench.scenarios import Context, delivery_check, require_all
from bench.sse import bench_message
from bench.targets import HubTarget, progress_of

SEQUENTIAL_CLIENTS = 4
DEFAULT_HEARTBEAT = 15.0  # the hub's default (app/settings.py)


@dataclass(slots=True)
class Sequential:
    """Publishes from `SEQUENTIAL_CLIENTS` clients, one request at a time each."""

    published: int
    seconds: float
    cpu_us: float
    """Hub CPU per accepted publish (its deliveries included)."""
    delivery: Delivery | None = None

    @property
    def per_second(self) -> float:
        """Publishes accepted per second."""
        return self.published / self.seconds if self.seconds > 0 else 0.0


async def _publish_all(port: int, plan: list[list[tuple[str, int, int]]]) -> int:
    """Each client sends its (job, index, total) list in order, one request at a time."""
    conns = [await HttpConnection.connect(port) for _ in plan]

    async def client(conn: HttpConnection, mine: list[tuple[str, int, int]]) -> int:
        for job_id, index, total in mine:
            body = {"progress": progress_of(index, total), "message": bench_message(index)}
            raw = conn.encode("POST", f"/api/jobs/{job_id}/events", json.dumps(body).encode())
            response = await conn.send(raw)
            if response.status != 202:
                raise RuntimeError(f"publish to {job_id} answered {response.status}")
        return len(mine)

    try:
        return sum(await asyncio.gather(*(client(c, m) for c, m in zip(conns, plan))))
    finally:
        for conn in conns:
            await conn.aclose()


def _plan(jobs: list[str], events: int) -> list[list[tuple[str, int, int]]]:
    """Every job's events 1..events, the jobs dealt over the clients, round-robin."""
    plan: list[list[tuple[str, int, int]]] = [[] for _ in range(SEQUENTIAL_CLIENTS)]
    for index in range(1, events + 1):
        for k, job_id in enumerate(jobs):
            plan[k % SEQUENTIAL_CLIENTS].append((job_id, index, events))
    return plan


async def sequential_publish(
    ctx: Context, target: HubTarget, *, jobs: int, subscribers_per_job: int, events: int
) -> Sequential:
    """`jobs` jobs, each followed by `subscribers_per_job` streams (0: none), each sent
    `events` updates over HTTP by the sequential clients."""
    await flush_redis(ctx.redis_url)
    names = [f"seq{i}" for i in range(jobs)]
    async with target.server(ctx.redis_url, ctx.log_dir) as srv:
        await target.create_jobs(names)
        plan = _plan(names, events)
        async with Fleet.run(srv.port) as fleet:
            if subscribers_per_job:
                n = jobs * subscribers_per_job
                require_all(await fleet.open(n, jobs, "seq", timeout=60), n)
            expected = await fleet.arm(events) if subscribers_per_job else 0
            cpu0 = srv.stat().cpu
            t0 = time.monotonic()
            with ctx.profile(srv, f"seq-{jobs}x{subscribers_per_job}"):
                published = await _publish_all(srv.port, plan)
                delivery = None
                if subscribers_per_job:
                    delivery = await fleet.wait(10 + expected / 5_000)
            seconds = time.monotonic() - t0
            cpu = srv.stat().cpu - cpu0
    return Sequential(published, seconds, cpu * 1e6 / published if published else 0.0, delivery)


@dataclass(slots=True)
class NewJobStreams:
    """Streams opened, each to a job no other stream follows."""

    opened: Opened
    per_second: float
    cpu_us: float


async def new_job_streams(ctx: Context, target: HubTarget, n: int) -> NewJobStreams:
    """Open n streams, stream i to job i (each its own first subscription)."""
    await flush_redis(ctx.redis_url)
    async with target.server(ctx.redis_url, ctx.log_dir) as srv:
        await target.create_jobs(f"new{i}" for i in range(n))
        async with Fleet.run(srv.port, math.ceil(n / STREAMS_PER_PROCESS)) as fleet:
            cpu0 = srv.stat().cpu
            with ctx.profile(srv, f"newjobs{n}"):
                opened = await fleet.open(n, n, "new", concurrency=512, timeout=60)
            cpu = srv.stat().cpu - cpu0
    rate = opened.connected / opened.seconds if opened.seconds else 0.0
    return NewJobStreams(opened, rate, cpu * 1e6 / opened.connected if opened.connected else 0.0)


@dataclass(slots=True)
class Idle:
    """Hub CPU while streams sit idle at the default heartbeat."""

    opened: Opened
    core_percent: float
    seconds: float
    rss_per_stream_kib: float


async def idle_cpu(ctx: Context, n: int, jobs: int = 100, seconds: float = 30.0) -> Idle:
    """Open n streams over `jobs` jobs, then read the hub's CPU over `seconds` idle (two
    default heartbeats: every stream is pinged twice)."""
    await flush_redis(ctx.redis_url)
    target = HubTarget(heartbeat=DEFAULT_HEARTBEAT)
    async with target.server(ctx.redis_url, ctx.log_dir) as srv:
        await target.create_jobs(f"quiet{i}" for i in range(jobs))
        rss0 = srv.stat().rss
        async with Fleet.run(srv.port, math.ceil(n / STREAMS_PER_PROCESS)) as fleet:
            opened = await fleet.open(n, jobs, "quiet", concurrency=512, timeout=120)
            require_all(opened, n)
            await asyncio.sleep(2.0)  # let connect work (and its garbage) settle
            cpu0 = srv.stat().cpu
            t0 = time.monotonic()
            with ctx.profile(srv, f"idle{n}"):
                await asyncio.sleep(seconds)
            cpu = srv.stat().cpu - cpu0
            elapsed = time.monotonic() - t0
            rss = srv.stat().rss - rss0
    return Idle(opened, 100 * cpu / elapsed, elapsed, rss / n / 1024)


async def regime_rows(ctx: Context, report: Report, console: Console, chosen: set[str]) -> None:
    """The rows of the regimes above that `chosen` names."""
    hub = HubTarget()
    if "seqpub" in chosen:
        for subs, target in ((0, 150.0), (1, None)):
            fig = await attempt(
                console,
                f"sequential publish, {subs} subscriber(s)",
                lambda: sequential_publish(
                    ctx, hub, jobs=SEQUENTIAL_CLIENTS, subscribers_per_job=subs, events=1_000
                ),
                ctx.raw,
            )
            if fig is not None:
                ctx.raw[f"seqpub_{subs}"] = {"rate": fig.per_second, "cpu_us": fig.cpu_us}
            report.add(
                Row(
                    f"HTTP publish, {SEQUENTIAL_CLIENTS} sequential clients, {subs} sub/job",
                    "µs CPU/req",
                    fig.cpu_us if fig else None,
                    target,
                    False,
                    valid=bool(fig and (fig.delivery is None or fig.delivery.complete)),
                    check=delivery_check(fig.delivery) if fig and fig.delivery else "",
                    note=f"{fig.per_second:,.0f} req/s" if fig else "",
                )
            )
    if "manyhttp" in chosen:
        for jobs, subs, target in ((ctx.sizes.many_jobs, 1, 7_500.0), (1, 1_000, None)):
            fig = await attempt(
                console,
                f"{jobs} jobs × {subs} over HTTP",
                lambda: sequential_publish(
                    ctx, hub, jobs=jobs, subscribers_per_job=subs,
                    events=max(10, 20_000 // jobs) if jobs > 1 else 300,
                ),
                ctx.raw,
            )  # fmt: skip
            delivered = fig.delivery.delivered if fig and fig.delivery else 0
            if fig is not None:
                ctx.raw[f"manyhttp_{jobs}x{subs}"] = {
                    "rate": fig.per_second, "cpu_us": fig.cpu_us, "delivered": delivered,
                    "seconds": fig.seconds,
                }  # fmt: skip
            unit, figure = ("ev/s", fig.per_second if fig else None)
            if jobs == 1 and fig:
                unit, figure = "deliv/s", delivered / fig.seconds
            report.add(
                Row(
                    f"{jobs:,} job(s) × {subs:,} sub, {SEQUENTIAL_CLIENTS} sequential HTTP clients",
                    unit,
                    figure,
                    target,
                    True,
                    valid=bool(fig and fig.delivery and fig.delivery.complete),
                    check=delivery_check(fig.delivery) if fig and fig.delivery else "",
                    note=f"hub {fig.cpu_us:.0f} µs CPU per publish" if fig else "",
                )
            )
    if "newjobs" in chosen:
        n = 5_000
        fig2 = await attempt(
            console, "streams to new jobs", lambda: new_job_streams(ctx, hub, n), ctx.raw
        )
        if fig2 is not None:
            ctx.raw["newjobs"] = {"rate": fig2.per_second, "cpu_us": fig2.cpu_us,
                                  "seconds": fig2.opened.seconds}  # fmt: skip
        report.add(
            Row(
                f"streams to {n:,} new jobs",
                "streams/s",
                fig2.per_second if fig2 else None,
                2_500,
                True,
                valid=bool(fig2 and fig2.opened.connected == n),
                check=f"{fig2.opened.connected}/{n} snapshots" if fig2 else "",
                note=f"hub {fig2.cpu_us:.0f} µs CPU/connect" if fig2 else "",
            )
        )
    if "idle" in chosen:
        # 20,000 less headroom: the descriptor hard limit here is 20,000 per process
        # (docs/performance.md, bounds), and the hub holds a few of its own.
        n = 19_500
        fig3 = await attempt(console, "idle streams", lambda: idle_cpu(ctx, n), ctx.raw)
        if fig3 is not None:
            ctx.raw["idle"] = {"core_percent": fig3.core_percent, "seconds": fig3.seconds,
                               "rss_kib_per_stream": fig3.rss_per_stream_kib}  # fmt: skip
        report.add(
            Row(
                f"{n:,} idle streams, heartbeat {DEFAULT_HEARTBEAT:.0f} s: hub CPU",
                "% core",
                fig3.core_percent if fig3 else None,
                2.0,
                False,
                valid=bool(fig3 and fig3.opened.connected == n),
                check=f"{fig3.opened.connected}/{n} open" if fig3 else "",
                note=f"{fig3.rss_per_stream_kib:.1f} KiB RSS/stream" if fig3 else "",
            )
        )
