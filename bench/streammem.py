"""`python -m bench.streammem`: traced memory per idle hub stream, by the package that
allocated it.

The hub (its app as `progress-hub serve` builds it, on the memory broker, a heartbeat an
hour apart) runs in this process under uvicorn with uvloop and httptools, with tracemalloc on;
a client process opens `--streams` streams (10 jobs, each stream read to its snapshot,
then left open). tracemalloc compares the heap before and after: what each open stream
holds, whoever allocated it. `make bench` measures the RSS this comes to
(docs/performance.md, memory per stream); this says whose it is.
"""

from __future__ import annotations

import argparse
import collections
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import httpx
import uvicorn

from progress_hub.main import create_app
from progress_hub.settings import Settings

JOBS = 10
CLIENT = r"""
import asyncio, sys

port, count, jobs = (int(arg) for arg in sys.argv[1:4])

async def stream(i):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/jobs/mem-%d/events HTTP/1.1\r\nHost: hub\r\n\r\n" % (i % jobs))
    await writer.drain()
    await reader.readuntil(b"event: snapshot")
    return reader, writer

async def main():
    held = []
    for start in range(0, count, 100):
        held += await asyncio.gather(*(stream(i) for i in range(start, min(count, start + 100))))
    print("open", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""
OWNERS = ("sse_starlette", "anyio", "uvicorn", "starlette", "structlog", "asyncio", "progress_hub")


def owner(filename: str) -> str:
    """The package an allocation is charged to (weak references and the rest: by file)."""
    for name in OWNERS:
        if f"/{name}/" in filename:
            return name
    return filename.rsplit("/", 1)[-1]


def open_streams(port: int, count: int) -> subprocess.Popen[str]:
    """A client process holding `count` open streams (returns once they are open)."""
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(port), str(count), str(JOBS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    if client.stdout.readline().strip() != "open":
        raise SystemExit("the client could not open its streams")
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args()
    settings = Settings(broker_url="memory://", heartbeat=3600)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), log_level="warning", loop="uvloop", http="httptools"
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    for job in range(JOBS):
        httpx.post(f"http://127.0.0.1:{port}/api/jobs/mem-{job}/events", json={"progress": 1})
    tracemalloc.start(1)
    # A few streams first, so that what is made once (the first stream's caches) is not counted.
    warm = open_streams(port, 20)
    time.sleep(0.5)
    before = tracemalloc.take_snapshot()
    measured = open_streams(port, args.streams)
    time.sleep(1.0)
    after = tracemalloc.take_snapshot()
    by_owner: collections.Counter[str] = collections.Counter()
    for stat in after.compare_to(before, "filename"):
        by_owner[owner(stat.traceback[0].filename)] += stat.size_diff
    total = sum(by_owner.values())
    print(f"{args.streams} idle streams: {total / args.streams / 1024:.1f} KiB traced each")
    for name, size in by_owner.most_common(12):
        print(f"  {size / args.streams / 1024:5.2f} KiB  {name}")
    for client in (measured, warm):
        client.kill()
    server.should_exit = True


if __name__ == "__main__":
    main()
