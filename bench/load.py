"""Request-rate scenarios against the hub: HTTP publish and polling (200 vs 304)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.http import HttpConnection
from bench.procs import Server, flush_redis
from bench.scenarios import Context
from bench.sse import bench_message
from bench.targets import HubTarget, progress_of

REQUEST_CAP = 200_000  # per phase, whatever the duration


@dataclass(slots=True)
class Rate:
    """Requests answered with the expected status, per second, and server CPU per request."""

    ok: int
    bad: int
    first_bad: int | None
    seconds: float
    cpu_us: float

    @property
    def per_second(self) -> float:
        """Good answers per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0


async def request_loop(
    srv: Server,
    build: Callable[[HttpConnection, int, int], bytes],
    expect: int,
    seconds: float,
    connections: int,
) -> Rate:
    """`connections` keep-alive clients sending build(conn, worker, i) until the deadline."""
    conns = [await HttpConnection.connect(srv.port) for _ in range(connections)]
    ok = bad = 0
    first_bad: int | None = None
    per_worker = REQUEST_CAP // connections
    cpu0 = srv.stat().cpu
    start = time.monotonic()
    deadline = start + seconds

    async def worker(w: int, conn: HttpConnection) -> None:
        nonlocal ok, bad, first_bad
        for i in range(per_worker):
            if time.monotonic() >= deadline:
                return
            response = await conn.send(build(conn, w, i))
            if response.status == expect:
                ok += 1
            else:
                bad += 1
                first_bad = first_bad or response.status

    try:
        await asyncio.gather(*(worker(w, c) for w, c in enumerate(conns)))
        elapsed = time.monotonic() - start
        cpu = srv.stat().cpu - cpu0
    finally:
        for conn in conns:
            await conn.aclose()
    total = ok + bad
    return Rate(ok, bad, first_bad, elapsed, cpu * 1e6 / total if total else 0.0)


async def http_publish(ctx: Context, target: HubTarget) -> Rate:
    """POST /api/jobs/{id}/events from many keep-alive connections, one job each."""
    await flush_redis(ctx.redis_url)
    sizes = ctx.sizes
    async with target.server(ctx.redis_url, ctx.log_dir) as srv:
        await target.create_jobs(f"pub{w}" for w in range(sizes.load_connections))

        def build(conn: HttpConnection, w: int, i: int) -> bytes:
            body = {"progress": progress_of(i, REQUEST_CAP), "message": bench_message(i + 1)}
            return conn.encode("POST", f"/api/jobs/pub{w}/events", json.dumps(body).encode())

        return await request_loop(srv, build, 202, sizes.load_seconds, sizes.load_connections)


async def polling(ctx: Context, target: HubTarget) -> tuple[Rate, Rate]:
    """GET /api/jobs/{id} without (200) and with a matching If-None-Match (304)."""
    await flush_redis(ctx.redis_url)
    sizes = ctx.sizes
    async with target.server(ctx.redis_url, ctx.log_dir) as srv:
        await target.create_jobs(["poll0"])
        for index in range(1, 6):
            await target.publish("poll0", index, 10)
        probe = await HttpConnection.connect(srv.port)
        try:
            response = await probe.request("GET", "/api/jobs/poll0")
        finally:
            await probe.aclose()
        etag = response.headers.get(b"etag", b"").decode()
        if response.status != 200 or not etag:
            raise RuntimeError(f"GET /api/jobs/poll0 answered {response.status}, etag {etag!r}")
        cache: dict[int, tuple[bytes, bytes]] = {}

        def raw(conn: HttpConnection) -> tuple[bytes, bytes]:
            key = id(conn)
            if key not in cache:
                cache[key] = (
                    conn.encode("GET", "/api/jobs/poll0"),
                    conn.encode("GET", "/api/jobs/poll0", headers={"If-None-Match": etag}),
                )
            return cache[key]

        full = await request_loop(
            srv, lambda c, w, i: raw(c)[0], 200, sizes.load_seconds, sizes.load_connections
        )
        cache.clear()
        cached = await request_loop(
            srv, lambda c, w, i: raw(c)[1], 304, sizes.load_seconds, sizes.load_connections
        )
        return full, cached
