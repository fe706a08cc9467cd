"""The "tutorial pattern" the hub is measured against (docs/performance.md).

A tiny sse-starlette app with the URL shape of the hub: every stream opens its own
`redis.asyncio` PubSub on the job's channel, reads the snapshot with GET, then relays
each published message. This is what most blog posts and answers show, and the first
row of the peer table in docs/performance.md. It is deliberately left as written there: one Redis
connection, one PubSub reader and one sse-starlette ping task per client.

Publishers write the job's snapshot to `baseline:job:{id}` and PUBLISH the same JSON on
`baseline:events:{id}` (see `job_key` / `job_channel`).

Run: python -m bench.baseline_app --redis-url redis://127.0.0.1:6379/0 --port 8001
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as redis
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

TERMINAL = frozenset({"completed", "failed", "cancelled"})
DEFAULT_PING = 15.0
MAX_CONNECTIONS = 100_000


def job_key(job_id: str) -> str:
    """Redis key holding a job's latest snapshot JSON."""
    return f"baseline:job:{job_id}"


def job_channel(job_id: str) -> str:
    """Redis channel carrying a job's snapshots."""
    return f"baseline:events:{job_id}"


async def events(request: Request) -> Response:
    """GET /api/jobs/{job_id}/events: one PubSub per client, as in the tutorials."""
    job_id = request.path_params["job_id"]
    client: redis.Redis = request.app.state.redis
    pubsub = client.pubsub()
    await pubsub.subscribe(job_channel(job_id))
    snapshot = await client.get(job_key(job_id))
    if snapshot is None:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        return JSONResponse({"error": f"Job {job_id!r} not found."}, status_code=404)

    first_text = snapshot.decode() if isinstance(snapshot, bytes) else snapshot

    async def stream() -> AsyncIterator[dict[str, Any]]:
        try:
            first = json.loads(snapshot)
            yield {"event": "snapshot", "id": str(first["seq"]), "data": first_text}
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                raw = message["data"].decode()
                data = json.loads(raw)
                yield {"event": "progress", "id": str(data["seq"]), "data": raw}
                if data["status"] in TERMINAL:
                    yield {"event": "end", "data": json.dumps({"status": data["status"]})}
                    break
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    return EventSourceResponse(stream(), ping=request.app.state.ping)


async def healthz(request: Request) -> Response:
    """GET /healthz."""
    return PlainTextResponse("ok")


def create_app(redis_url: str, ping: float = DEFAULT_PING) -> Starlette:
    """The baseline app bound to one Redis."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # redis-py caps a pool at 100 connections by default; every stream holds one.
        app.state.redis = redis.Redis.from_url(redis_url, max_connections=MAX_CONNECTIONS)
        app.state.ping = ping
        try:
            yield
        finally:
            await app.state.redis.aclose()

    routes = [
        Route("/api/jobs/{job_id}/events", events),
        Route("/healthz", healthz),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    """Serve the baseline with uvicorn (uvloop + httptools), like the hub."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ping", type=float, default=DEFAULT_PING)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.redis_url, args.ping),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
