"""CPU per body chunk of sse-starlette's EventSourceResponse, options as the hub uses them.

The body yields pre-encoded frames and waits one loop pass between them; the ASGI send
never blocks, so the figure is sse-starlette's own work per write (and the loop pass).
Run with the sse-starlette to measure on the path: `python measure_chunk.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import uvloop
from sse_starlette import EventSourceResponse

CHUNKS = 50_000
REPEATS = 5
SCOPE = {"type": "http", "method": "GET", "headers": []}


async def per_chunk(send_timeout: float | None) -> float:
    """µs of process CPU per chunk for one response of CHUNKS chunks."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(CHUNKS):
            await asyncio.sleep(0)
            yield b"data: x\n\n"

    async def send(message: object) -> None:
        pass

    never = asyncio.Event()

    async def receive() -> dict[str, str]:
        await never.wait()
        return {"type": "http.disconnect"}

    response = EventSourceResponse(body(), ping=0, sep="\n", send_timeout=send_timeout)
    start = time.process_time()
    await response(SCOPE, receive, send)  # type: ignore[arg-type]
    return (time.process_time() - start) / CHUNKS * 1e6


async def main() -> None:
    for send_timeout in (None, 30.0):
        runs = sorted([await per_chunk(send_timeout) for _ in range(REPEATS)])
        print(f"send_timeout={send_timeout}: {runs[REPEATS // 2]:.2f} µs/chunk (min {runs[0]:.2f})")


if __name__ == "__main__":
    uvloop.run(main())
