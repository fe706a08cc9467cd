"""Traced memory per idle EventSourceResponse, options as the hub uses them, by file.

2,000 responses whose body has written its first frame and waits for the next, and whose
ASGI receive waits like uvicorn's; tracemalloc counts what they hold, grouped by the file
that allocated it. Run with the sse-starlette to measure on the path.
"""

from __future__ import annotations

import asyncio
import collections
import tracemalloc
from collections.abc import AsyncIterator

import uvloop
from sse_starlette import EventSourceResponse

STREAMS = 2_000
SCOPE = {"type": "http", "method": "GET", "headers": []}


def owner(filename: str) -> str:
    """The package (or file) an allocation is charged to."""
    for name in ("sse_starlette", "anyio", "asyncio", "starlette"):
        if f"/{name}/" in filename:
            return name
    if filename == __file__:
        return "this script (request task, body generator)"
    return "/".join(filename.rsplit("/", 2)[-2:])


async def main() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    counted = STREAMS - 1
    written = 0
    all_written: asyncio.Future[None] = loop.create_future()

    async def body() -> AsyncIterator[bytes]:
        nonlocal written
        yield b"retry: 1000\n\n"
        written += 1
        if written == counted:
            all_written.set_result(None)
        await gate

    async def send(message: object) -> None:
        pass

    async def receive() -> dict[str, str]:
        await gate
        return {"type": "http.disconnect"}

    def serve() -> asyncio.Future[None]:
        response = EventSourceResponse(body(), ping=0, sep="\n", send_timeout=30)
        return asyncio.ensure_future(response(SCOPE, receive, send))  # type: ignore[arg-type]

    # One response first, so that one-off objects (the shutdown watcher) are not counted.
    first = serve()
    await asyncio.sleep(0.05)
    written = 0
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    streams = [serve() for _ in range(counted)]
    await all_written
    await asyncio.sleep(0.05)
    after = tracemalloc.take_snapshot()
    held: collections.Counter[str] = collections.Counter()
    for stat in after.compare_to(before, "filename"):
        held[owner(stat.traceback[0].filename)] += stat.size_diff
    print(f"{sum(held.values()) / counted / 1024:.2f} KiB traced per stream")
    for name, size in held.most_common(8):
        print(f"  {size / counted:7.0f} B  {name}")
    print(f"  tasks alive: {len(asyncio.all_tasks())} for {STREAMS} streams")
    gate.set_result(None)
    await asyncio.gather(first, *streams, return_exceptions=True)


if __name__ == "__main__":
    uvloop.run(main())
