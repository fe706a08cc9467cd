"""Nothing grows with the number of jobs ever seen: a hub's RSS per job followed once.

Each job's life goes through the hub as a user's would, over HTTP: `POST /api/jobs`, a
stream opened to it (its snapshot read), `POST` of its completion, the stream read to its
`end`, the stream closed. `CONCURRENCY` jobs are in flight at a time, so at any moment
the hub holds at most that many followed channels; after the last stream of a job left,
nothing of it should stay in the hub.

The warm-up: a fresh process grows for reasons that have nothing to do with leaks, so
the figure is read from the end of a warm-up on, each reading with no stream open
(`progress_streams_open` and `progress_subscriptions` at 0). The warm-up is larger than
the two per-job structures with a fixed bound above the concurrency, the store's record
cache (`KNOWN_RECORDS`, pubsub/store.py) and the commit script's keys
(`SLOT_KEYS_CACHED`, pubsub/brokers/commands.py), so both are full before the first
reading and merely turn over during the measured jobs.

Two figures. The row the requirement names: RSS growth over the `MEASURED_JOBS` right
after the warm-up. And, when asked for a longer run (`--growth-jobs`, RSS read every
`READING_EVERY` jobs), the steady state: the least-squares slope over the run's second
half. A hub's RSS rises for about the first 30,000 jobs and then stays level within a
few hundred KiB (docs/performance.md, growth per job): the first figure measures that
rise, the second whether anything grows per job once it is over. `--growth-streams`
runs the same curve for streams to one finished job (per connection, no new job).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from bench.cluster import CLUSTER_MASTERS
from bench.http import HttpConnection, Response
from bench.procs import Server, flush_redis
from bench.report import Report, Row, attempt
from bench.scenarios import Context
from bench.targets import HubTarget
from pubsub.brokers.slotkeys import SLOT_KEYS_CACHED
from pubsub.store import KNOWN_RECORDS
from tests.cluster import running_cluster

CONCURRENCY = 64
WARM_UP_JOBS = 6_000
MEASURED_JOBS = 12_000
READING_EVERY = 6_000  # jobs between two RSS readings of the curve
STEADY_READINGS = 4  # readings in the second half before it counts as a steady state
GROWTH_TARGET = 48.0  # bytes of RSS per job followed once
SETTLE_DEADLINE = 10.0
STREAM_DEADLINE = 10.0

assert WARM_UP_JOBS > max(KNOWN_RECORDS, SLOT_KEYS_CACHED), "the warm-up fills both caches"


@dataclass(slots=True)
class Growth:
    """RSS read every `READING_EVERY` jobs after the warm-up, and the hub CPU they took."""

    curve: list[tuple[int, int]]
    """(jobs followed since the process started, RSS bytes), the warm-up's end first."""
    seconds: float
    cpu_us: float
    """Hub CPU per job: create, connect, completion, `end`, leave."""

    @property
    def jobs(self) -> int:
        """Jobs followed after the warm-up."""
        return self.curve[-1][0] - self.curve[0][0]

    @property
    def rss_before(self) -> int:
        """RSS at the end of the warm-up."""
        return self.curve[0][1]

    @property
    def rss_after(self) -> int:
        """RSS at the last reading."""
        return self.curve[-1][1]

    @property
    def bytes_per_job(self) -> float:
        """RSS growth per job over the first `MEASURED_JOBS` after the warm-up (the row's
        figure since the second session, comparable with earlier runs)."""
        return self.between(self.curve[0][0], self.curve[0][0] + MEASURED_JOBS)

    @property
    def steady(self) -> list[tuple[int, int]]:
        """The readings of the run's second half (by jobs), where a growth that levels off
        has levelled off if the run was long enough: the criterion is fixed in advance,
        not chosen from the curve."""
        half = self.curve[0][0] + self.jobs / 2
        return [(n, rss) for n, rss in self.curve if n >= half]

    @property
    def steady_bytes_per_job(self) -> float:
        """RSS growth per job over the second half of the run, as the least-squares slope
        of its readings: single readings move by a few hundred KiB either way (the
        allocator's free lists), which one difference of two would read as growth."""
        points = self.steady
        if len(points) < 2:
            return 0.0
        mean_n = sum(n for n, _ in points) / len(points)
        mean_rss = sum(rss for _, rss in points) / len(points)
        spread = sum((n - mean_n) ** 2 for n, _ in points)
        return sum((n - mean_n) * (rss - mean_rss) for n, rss in points) / spread

    def between(self, start: int, end: int) -> float:
        """RSS growth per job between two readings (the nearest ones inside the range)."""
        inside = [(n, rss) for n, rss in self.curve if start <= n <= end]
        if len(inside) < 2 or inside[-1][0] == inside[0][0]:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


class Client:
    """One worker's keep-alive connection, opened again when the hub closed it while idle
    (uvicorn's keep-alive timeout: the request was not read, so sending it again is safe)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.http: HttpConnection | None = None

    async def request(self, method: str, path: str, body: bytes) -> Response:
        for _ in range(2):
            if self.http is None:
                self.http = await HttpConnection.connect(self.port)
            try:
                return await self.http.request(method, path, body)
            except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
                await self.aclose()
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
        raise RuntimeError(f"{method} {path}: the hub closed two connections in a row")

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None


async def create_job(http: Client, job_id: str) -> None:
    """`POST /api/jobs` of a new job."""
    response = await http.request("POST", "/api/jobs", json.dumps({"job_id": job_id}).encode())
    if response.status != 201:
        raise RuntimeError(f"POST /api/jobs {job_id} answered {response.status}")


async def complete_job(http: Client, job_id: str) -> None:
    """`POST` of a job's completion."""
    done = json.dumps({"status": "completed", "progress": 100}).encode()
    response = await http.request("POST", f"/api/jobs/{job_id}/events", done)
    if response.status != 202:
        raise RuntimeError(f"completing {job_id} answered {response.status}")


async def _follow_once(port: int, http: Client | None, job_id: str) -> None:
    """One job's whole life through the hub, followed by one stream until its `end`; with
    no `http`, one stream to a job already finished (its snapshot and `end` at once)."""
    if http is not None:
        await create_job(http, job_id)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        async with asyncio.timeout(STREAM_DEADLINE):
            seen = await _read_until(reader, b"", b"event: snapshot")
            if http is not None:
                await complete_job(http, job_id)
            await _read_until(reader, seen, b"event: end")
    finally:
        writer.close()
        await writer.wait_closed()


async def _read_until(reader: asyncio.StreamReader, seen: bytes, marker: bytes) -> bytes:
    """Read the stream until `marker` and the end of its frame; what was read since `seen`."""
    buf = seen
    while (at := buf.find(marker)) < 0 or buf.find(b"\n\n", at) < 0:
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError(f"stream closed before {marker!r}: {buf[:200]!r}")
        buf += chunk
    return buf[buf.find(b"\n\n", buf.find(marker)) + 2 :]


async def follow_all(port: int, prefix: str, jobs: int, one_job: str | None = None) -> None:
    """`jobs` distinct jobs, `CONCURRENCY` at a time, each followed once; with `one_job`
    (a finished job), as many streams to that one job instead."""
    names = iter(one_job or f"{prefix}-{i}" for i in range(jobs))

    async def worker() -> None:
        http = Client(port)
        try:
            for job_id in names:
                await _follow_once(port, None if one_job else http, job_id)
        finally:
            await http.aclose()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _settled(port: int) -> None:
    """Wait until the hub holds no stream and no subscription (every job left)."""
    http = await HttpConnection.connect(port)
    deadline = time.monotonic() + SETTLE_DEADLINE
    try:
        while True:
            text = (await http.request("GET", "/metrics")).body.decode()
            values = {
                s.name: s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if not s.labels
            }
            if values["progress_streams_open"] == 0 and values["progress_subscriptions"] == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hub still holds streams after the jobs: {values}")
            await asyncio.sleep(0.05)
    finally:
        await http.aclose()


async def rss_settled(srv: Server) -> int:
    """The hub's RSS once it holds no stream and its loop has finished the last closes."""
    await _settled(srv.port)
    await asyncio.sleep(0.5)  # let the hub's loop finish what the last closes started
    return srv.stat().rss


async def growth(
    ctx: Context,
    target: HubTarget,
    jobs: int = MEASURED_JOBS,
    one_job: bool = False,
    fresh_url: str | None = None,
) -> Growth:
    """Warm up, then follow `jobs` distinct jobs once each, reading RSS every
    `READING_EVERY` jobs (each reading once the hub holds no stream). With `one_job`,
    every stream (warm-up included) goes to one job finished before the first: what a
    connection leaves behind, with no new job at all. `fresh_url`: an empty broker to use
    instead of the bench's Redis (the cluster's)."""
    if fresh_url is None:
        await flush_redis(ctx.redis_url)
    async with target.server(fresh_url or ctx.redis_url, ctx.log_dir) as srv:
        finished = None
        if one_job:
            finished = "finished"
            http = Client(srv.port)
            await create_job(http, finished)
            await complete_job(http, finished)
            await http.aclose()
        await follow_all(srv.port, "warm", WARM_UP_JOBS, finished)
        curve = [(WARM_UP_JOBS, await rss_settled(srv))]
        seconds = cpu = 0.0
        while (done := curve[-1][0] - WARM_UP_JOBS) < jobs:
            batch = min(READING_EVERY, jobs - done)
            cpu0 = srv.stat().cpu
            t0 = time.monotonic()
            with ctx.profile(srv, f"growth-{done}"):
                await follow_all(srv.port, f"grow{done}", batch, finished)
            seconds += time.monotonic() - t0
            cpu += srv.stat().cpu - cpu0
            curve.append((curve[-1][0] + batch, await rss_settled(srv)))
    return Growth(curve, seconds, cpu * 1e6 / jobs)


async def growth_rows(
    ctx: Context,
    report: Report,
    console: Console,
    jobs: int = MEASURED_JOBS,
    streams: int = 0,
    on_cluster: bool = False,
) -> None:
    """The growth row: RSS bytes per distinct job followed once, after the warm-up; with
    more than `MEASURED_JOBS` jobs, a second row for the last `MEASURED_JOBS` of them.
    With `streams`, the same rows for that many streams to one finished job; with
    `on_cluster`, the job rows again for a hub on a fresh 3-master cluster."""
    runs = [("job", "growth", jobs, False)]
    if streams:
        runs.append(("stream to one finished job", "growth_one_job", streams, True))
    for what, key, count, one_job in runs:
        fig = await attempt(
            console,
            f"growth per {what}",
            lambda: growth(ctx, HubTarget(), count, one_job),  # awaited before the loop moves on
            ctx.raw,
        )
        _growth_rows(ctx, report, console, fig, what, key)
    if on_cluster:
        # Started from this (the main) thread: servers are tied to the thread that forks them.
        where = f"{CLUSTER_MASTERS}-master cluster"
        with running_cluster(masters=CLUSTER_MASTERS, replicas=0, node_timeout_ms=5000) as nodes:
            fig = await attempt(
                console,
                f"growth per job, {where}",
                lambda: growth(ctx, HubTarget(), jobs, fresh_url=nodes.url),
                ctx.raw,
            )
        _growth_rows(ctx, report, console, fig, "job", "growth_cluster", where)


def _growth_rows(
    ctx: Context,
    report: Report,
    console: Console,
    fig: Growth | None,
    what: str,
    key: str,
    where: str = "",
) -> None:
    """The rows of one growth run; `where`: the broker, when not the bench's Redis."""
    on = f", {where}" if where else ""
    if fig is not None:
        ctx.raw[key] = {
            "jobs": fig.jobs, "warm_up_jobs": WARM_UP_JOBS, "rss_before": fig.rss_before,
            "rss_after": fig.rss_after, "bytes_per_job": fig.bytes_per_job,
            "steady_bytes_per_job": fig.steady_bytes_per_job, "curve": fig.curve,
            "seconds": fig.seconds, "cpu_us_per_job": fig.cpu_us,
        }  # fmt: skip
        console.log(
            f"{key} curve (count → RSS KiB): "
            + ", ".join(f"{n:,} → {rss // 1024:,}" for n, rss in fig.curve)
        )
    unit = "B/job" if what == "job" else "B/stream"
    report.add(
        Row(
            f"RSS growth per {what} followed once, {MEASURED_JOBS:,}{on}",
            unit,
            fig.bytes_per_job if fig else None,
            GROWTH_TARGET if what == "job" else None,
            False,
            valid=fig is not None,
            check=f"{MEASURED_JOBS:,} followed to end, after {WARM_UP_JOBS:,}" if fig else "",
            note=(
                f"{fig.bytes_per_job * MEASURED_JOBS / 1024:+,.0f} KiB; hub {fig.cpu_us:.0f} µs "
                f"CPU each, {fig.jobs / fig.seconds:,.0f}/s"
            )
            if fig
            else "",
        )
    )
    if fig is not None and len(fig.steady) >= STEADY_READINGS:
        first, last = fig.steady[0][0], fig.steady[-1][0]
        report.add(
            Row(
                f"RSS growth per {what}, second half of {last:,} (least squares){on}",
                unit,
                fig.steady_bytes_per_job,
                GROWTH_TARGET if what == "job" else None,
                False,
                check=f"{len(fig.steady)} readings, {first:,}–{last:,} of the process",
                note=f"{(fig.rss_after - fig.rss_before) / 1024:+,.0f} KiB over all {fig.jobs:,}",
            )
        )
