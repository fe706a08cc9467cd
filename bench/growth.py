"""Nothing grows with the number of jobs ever seen: a hub's RSS per job followed once.

Each job's life goes through the hub as a user's would, over HTTP: `POST /api/jobs`, a
stream opened to it (its snapshot read), `POST` of its completion, the stream read to its
`end`, the stream closed. `CONCURRENCY` jobs are in flight at a time, so at any moment
the hub holds at most that many followed channels; after the last stream of a job left,
nothing of it should stay in the hub.

The warm-up: a fresh process grows for reasons that have nothing to do with leaks, so
the figure is read between the end of a warm-up and the end of the measured jobs, both
with no stream open (`progress_streams_open` and `progress_subscriptions` at 0). The
warm-up is larger than the store's record cache (`KNOWN_RECORDS`, pubsub/store.py, the
only per-job structure with a fixed bound above the concurrency), so that cache is full
before the first reading and merely turns over during the measured jobs; it also brings
the allocator's arenas, uvicorn's and redis-py's connection pools, the interned strings
of every code path and the high-water size of every dict and set (they do not shrink) to
their steady state.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from bench.http import HttpConnection, Response
from bench.procs import Server, flush_redis
from bench.report import Report, Row, attempt
from bench.scenarios import Context
from bench.targets import HubTarget
from pubsub.store import KNOWN_RECORDS

CONCURRENCY = 64
WARM_UP_JOBS = 6_000
MEASURED_JOBS = 12_000
GROWTH_TARGET = 48.0  # bytes of RSS per job followed once
SETTLE_DEADLINE = 10.0
STREAM_DEADLINE = 10.0

assert WARM_UP_JOBS > KNOWN_RECORDS, "the warm-up fills the store's record cache"


@dataclass(slots=True)
class Growth:
    """RSS before and after `jobs` jobs each followed once, and the hub CPU they took."""

    jobs: int
    rss_before: int
    rss_after: int
    seconds: float
    cpu_us: float
    """Hub CPU per job: create, connect, completion, `end`, leave."""

    @property
    def bytes_per_job(self) -> float:
        """RSS growth per job followed once."""
        return (self.rss_after - self.rss_before) / self.jobs if self.jobs else 0.0


class _Client:
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


async def _follow_once(port: int, http: _Client, job_id: str) -> None:
    """One job's whole life through the hub, followed by one stream until its `end`."""
    response = await http.request("POST", "/api/jobs", json.dumps({"job_id": job_id}).encode())
    if response.status != 201:
        raise RuntimeError(f"POST /api/jobs {job_id} answered {response.status}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        async with asyncio.timeout(STREAM_DEADLINE):
            seen = await _read_until(reader, b"", b"event: snapshot")
            done = json.dumps({"status": "completed", "progress": 100}).encode()
            response = await http.request("POST", f"/api/jobs/{job_id}/events", done)
            if response.status != 202:
                raise RuntimeError(f"completing {job_id} answered {response.status}")
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


async def _follow_all(port: int, prefix: str, jobs: int) -> None:
    """`jobs` distinct jobs, `CONCURRENCY` at a time, each followed once."""
    names = iter(f"{prefix}-{i}" for i in range(jobs))

    async def worker() -> None:
        http = _Client(port)
        try:
            for job_id in names:
                await _follow_once(port, http, job_id)
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


async def _rss_settled(srv: Server) -> int:
    await _settled(srv.port)
    await asyncio.sleep(0.5)  # let the hub's loop finish what the last closes started
    return srv.stat().rss


async def growth(ctx: Context, target: HubTarget) -> Growth:
    """Warm up, then follow `MEASURED_JOBS` distinct jobs once each; RSS before and after."""
    await flush_redis(ctx.redis_url)
    async with target.server(ctx.redis_url, ctx.log_dir) as srv:
        await _follow_all(srv.port, "warm", WARM_UP_JOBS)
        before = await _rss_settled(srv)
        cpu0 = srv.stat().cpu
        t0 = time.monotonic()
        with ctx.profile(srv, "growth"):
            await _follow_all(srv.port, "grow", MEASURED_JOBS)
        seconds = time.monotonic() - t0
        cpu = srv.stat().cpu - cpu0
        after = await _rss_settled(srv)
    return Growth(MEASURED_JOBS, before, after, seconds, cpu * 1e6 / MEASURED_JOBS)


async def growth_rows(ctx: Context, report: Report, console: Console) -> None:
    """The growth row: RSS bytes per distinct job followed once, after the warm-up."""
    fig = await attempt(console, "growth per job", lambda: growth(ctx, HubTarget()), ctx.raw)
    if fig is not None:
        ctx.raw["growth"] = {
            "jobs": fig.jobs, "warm_up_jobs": WARM_UP_JOBS, "rss_before": fig.rss_before,
            "rss_after": fig.rss_after, "bytes_per_job": fig.bytes_per_job,
            "seconds": fig.seconds, "cpu_us_per_job": fig.cpu_us,
        }  # fmt: skip
    report.add(
        Row(
            f"RSS growth per job followed once, {MEASURED_JOBS:,} jobs",
            "B/job",
            fig.bytes_per_job if fig else None,
            GROWTH_TARGET,
            False,
            valid=fig is not None,
            check=f"{fig.jobs:,} jobs followed to end, after {WARM_UP_JOBS:,}" if fig else "",
            note=(
                f"{(fig.rss_after - fig.rss_before) / 1024:+,.0f} KiB; hub {fig.cpu_us:.0f} µs "
                f"CPU/job, {fig.jobs / fig.seconds:,.0f} jobs/s"
            )
            if fig
            else "",
        )
    )
