"""The servers under test and how to feed each one: the hub and the tutorial baseline.

A target knows how to start its server, create jobs and publish the index-th event of a
job, stamping `bench_message(index)` into the event so subscribers can measure latency.
Publishes to one job are awaited in order by the caller, so index order is seq order.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as redis

from bench.baseline_app import job_channel, job_key
from bench.http import HttpConnection
from bench.procs import Server, python, server_process
from bench.sse import bench_message
from progress_hub.embedded import free_port

HEARTBEAT = 2.0  # seconds; short so the idle-memory figure includes live heartbeats
MAX_CONNECTIONS = 30_000


def hub_available() -> bool:
    """True once the hub (progress_hub.main) is importable in this environment."""
    try:
        return importlib.util.find_spec("progress_hub.main") is not None
    except ModuleNotFoundError:
        return False


def progress_of(index: int, total: int) -> float:
    """A non-decreasing percent below 100 for the index-th of total events."""
    return round(min(99.0, 99.0 * index / max(total, 1)), 3)


class Target(Protocol):
    """A server under test plus the publisher that feeds it."""

    name: str

    def server(
        self, redis_url: str, log_dir: Path
    ) -> contextlib.AbstractAsyncContextManager[Server]:
        """Start the server in its own process."""
        ...

    async def create_jobs(self, job_ids: Iterable[str]) -> None:
        """Make the jobs exist so streams can open (404 otherwise)."""
        ...

    async def publish(self, job_id: str, index: int, total: int) -> None:
        """Publish the index-th event (1-based) of job_id."""
        ...

    async def publish_round(self, job_ids: Sequence[str], index: int, total: int) -> None:
        """Publish the index-th event of each job (pipelined where the feed allows)."""
        ...

    async def aclose(self) -> None:
        """Release publisher connections."""
        ...


class HttpPool:
    """A fixed set of keep-alive connections handed out one request at a time."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self.idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
        self.all: list[HttpConnection] = []

    async def request(self, method: str, path: str, body: bytes | None = None) -> int:
        """Send one request on an idle connection; return the status."""
        if self.idle.empty() and len(self.all) < self.size:
            conn = await HttpConnection.connect(self.port)
            self.all.append(conn)
        else:
            conn = await self.idle.get()
        try:
            response = await conn.request(method, path, body)
        finally:
            self.idle.put_nowait(conn)
        return response.status

    async def aclose(self) -> None:
        """Close every connection."""
        for conn in self.all:
            await conn.aclose()
        self.all.clear()


class HubTarget:
    """progress-hub, fed over HTTP (`POST /api/jobs/{id}/events`)."""

    name = "hub"

    def __init__(self, heartbeat: float = HEARTBEAT) -> None:
        self.pool: HttpPool | None = None
        self.heartbeat = heartbeat

    @contextlib.asynccontextmanager
    async def server(self, redis_url: str, log_dir: Path) -> AsyncIterator[Server]:
        """`progress-hub serve` on a free port, sharing the bench's Redis."""
        port = free_port()
        script = Path(python()).parent / "progress-hub"
        launcher = [str(script)] if script.exists() else [python(), "-m", "progress_hub.cli"]
        cmd = [
            *launcher,
            "serve",
            "--broker-url",
            redis_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        env = {
            "PROGRESS_HEARTBEAT": str(self.heartbeat),
            "PROGRESS_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        }
        async with server_process(self.name, cmd, port, env, log_dir / "hub.log") as srv:
            self.pool = HttpPool(port, 32)
            try:
                yield srv
            finally:
                await self.aclose()

    def _pool(self) -> HttpPool:
        if self.pool is None:
            raise RuntimeError("hub target used outside its server() block")
        return self.pool

    async def create_jobs(self, job_ids: Iterable[str]) -> None:
        """POST /api/jobs for each id (32 at a time)."""
        pool = self._pool()
        gate = asyncio.Semaphore(32)

        async def one(job_id: str) -> None:
            async with gate:
                body = json.dumps({"job_id": job_id, "pipeline": None}).encode()
                status = await pool.request("POST", "/api/jobs", body)
                if status != 201:
                    raise RuntimeError(f"POST /api/jobs {job_id} answered {status}")

        await asyncio.gather(*(one(j) for j in job_ids))

    async def publish(self, job_id: str, index: int, total: int) -> None:
        """POST one progress update."""
        body = json.dumps(
            {"progress": progress_of(index, total), "message": bench_message(index)}
        ).encode()
        status = await self._pool().request("POST", f"/api/jobs/{job_id}/events", body)
        if status != 202:
            raise RuntimeError(f"publish to {job_id} answered {status}")

    async def publish_round(self, job_ids: Sequence[str], index: int, total: int) -> None:
        """One POST per job, in turn (HTTP has no batch endpoint)."""
        for job_id in job_ids:
            await self.publish(job_id, index, total)

    async def aclose(self) -> None:
        """Close the publisher's connections."""
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None


def baseline_snapshot(job_id: str, seq: int, progress: float, message: str) -> bytes:
    """A snapshot shaped like the hub's, so both servers carry the same bytes."""
    now = time.time()
    snapshot: dict[str, Any] = {
        "job_id": job_id, "seq": seq, "status": "running", "pipeline": None, "stage": None,
        "stage_label": None, "progress": progress, "message": message, "chunks": None,
        "attempt": None, "max_attempts": None, "eta_seconds": None, "error": None,
        "meta": {}, "has_result": False, "created_at": now, "updated_at": now,
        "stalled": False,
    }  # fmt: skip
    return json.dumps(snapshot).encode()


class BaselineTarget:
    """The tutorial app, fed by SET + PUBLISH straight to Redis (as its tutorials do)."""

    name = "baseline"

    def __init__(self) -> None:
        self.client: redis.Redis | None = None

    @contextlib.asynccontextmanager
    async def server(self, redis_url: str, log_dir: Path) -> AsyncIterator[Server]:
        """bench.baseline_app under uvicorn (uvloop + httptools) on a free port."""
        port = free_port()
        cmd = [
            python(),
            "-m",
            "bench.baseline_app",
            "--redis-url",
            redis_url,
            "--port",
            str(port),
            "--ping",
            str(HEARTBEAT),
        ]
        async with server_process(self.name, cmd, port, {}, log_dir / "baseline.log") as srv:
            self.client = redis.Redis.from_url(redis_url, max_connections=64)
            try:
                yield srv
            finally:
                await self.aclose()

    def _client(self) -> redis.Redis:
        if self.client is None:
            raise RuntimeError("baseline target used outside its server() block")
        return self.client

    async def create_jobs(self, job_ids: Iterable[str]) -> None:
        """SET each job's first snapshot (seq 1)."""
        pipe = self._client().pipeline(transaction=False)
        for job_id in job_ids:
            pipe.set(job_key(job_id), baseline_snapshot(job_id, 1, 0.0, ""))
        await pipe.execute()

    async def publish(self, job_id: str, index: int, total: int) -> None:
        """SET the new snapshot and PUBLISH it on the job's channel."""
        data = baseline_snapshot(job_id, index + 1, progress_of(index, total), bench_message(index))
        pipe = self._client().pipeline(transaction=False)
        pipe.set(job_key(job_id), data)
        pipe.publish(job_channel(job_id), data)
        await pipe.execute()

    async def publish_round(self, job_ids: Sequence[str], index: int, total: int) -> None:
        """SET + PUBLISH for every job in one pipeline."""
        pipe = self._client().pipeline(transaction=False)
        for job_id in job_ids:
            data = baseline_snapshot(
                job_id, index + 1, progress_of(index, total), bench_message(index)
            )
            pipe.set(job_key(job_id), data)
            pipe.publish(job_channel(job_id), data)
        await pipe.execute()

    async def aclose(self) -> None:
        """Close the Redis client."""
        if self.client is not None:
            await self.client.aclose()
            self.client = None


class RawFeedTarget:
    """The hub fed by bare PUBLISHes of the library's envelope: its delivery capacity.

    The library pays a read and an atomic commit per update (about 4k/s from one process
    here), which bounds every many-jobs figure fed through it. Publishing the envelope the
    commit script would publish, pipelined, takes the publisher out of the measurement.
    """

    name = "hub (raw PUBLISH)"

    def __init__(self, *, cluster: bool = False) -> None:
        """`cluster`: publish through a cluster client, one pipeline per shard."""
        self.hub = HubTarget()
        self.cluster = cluster
        self.client: redis.Redis | redis.RedisCluster | None = None

    @contextlib.asynccontextmanager
    async def server(self, redis_url: str, log_dir: Path) -> AsyncIterator[Server]:
        """The hub process plus a Redis client of our own."""
        async with self.hub.server(redis_url, log_dir) as srv:
            if self.cluster:
                self.client = redis.RedisCluster.from_url(redis_url)
            else:
                self.client = redis.Redis.from_url(redis_url, max_connections=64)
            try:
                yield srv
            finally:
                await self.aclose()

    async def create_jobs(self, job_ids: Iterable[str]) -> None:
        """Create the jobs through the hub, so their snapshots exist (seq 1)."""
        await self.hub.create_jobs(job_ids)

    def _envelope(self, job_id: str, index: int, total: int) -> bytes:
        snapshot = baseline_snapshot(
            job_id, index + 1, progress_of(index, total), bench_message(index)
        )
        return b'{"event":"progress","snapshot":%s}' % snapshot

    async def publish(self, job_id: str, index: int, total: int) -> None:
        """SPUBLISH `{"event":"progress","snapshot":…}` with seq index+1 on the job's channel."""
        await self.publish_round([job_id], index, total)

    async def publish_round(self, job_ids: Sequence[str], index: int, total: int) -> None:
        """Every job's envelope in one pipeline."""
        from pubsub.brokers.keys import job_channel

        if self.client is None:
            raise RuntimeError("raw feed target used outside its server() block")
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            # By name: redis-py's cluster pipeline routes SPUBLISH only that way.
            pipe.execute_command(
                "SPUBLISH", job_channel(job_id), self._envelope(job_id, index, total)
            )
        await pipe.execute()

    async def aclose(self) -> None:
        """Close the Redis client and the hub's HTTP pool."""
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        await self.hub.aclose()
