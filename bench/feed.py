"""The feed alone: CPU per delivered message of a `RedisBroker` subscribed to many jobs.

`python -m bench.feed` starts a private server, subscribes one broker to 1,000 jobs and
lets a child process pipeline 20,000 `SPUBLISH` at them; it prints the listening
process's CPU (`time.process_time`, which the child's does not count) per message, for
each round (docs/performance.md, "The Redis broker on redis-py's public API").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Collection

from progress_hub.embedded import EmbeddedServer
from pubsub.brokers.redis import RedisBroker

JOBS = 1_000
MESSAGES = 20_000
DEADLINE = 60.0
PUBLISHER = r"""
import sys, redis
from pubsub.brokers import keys
url, jobs, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
channels = [keys.job_channel(f"feed-{j}") for j in range(jobs)]
envelope = (b'{"event":"progress","snapshot":{"job_id":"x","seq":12,"status":"running",'
            b'"progress":42.5,"stage":"transcribing","message":"B123:1234567890123",'
            b'"updated_at":1700000000.0}}')
client = redis.Redis.from_url(url)
pipe = client.pipeline(transaction=False)
for i in range(count):
    pipe.execute_command("SPUBLISH", channels[i % jobs], envelope)
    if i % 1000 == 999:
        pipe.execute()
pipe.execute()
"""


async def one_round(url: str, jobs: int = JOBS, messages: int = MESSAGES) -> float:
    """µs of this process's CPU per message delivered to the feed."""
    broker = RedisBroker(url)
    got = 0
    everything = asyncio.Event()

    def on_message(raw: bytes, every_job: bool) -> None:
        nonlocal got
        got += 1
        if got == messages:
            everything.set()

    async def on_gap(jobs: Collection[str | None]) -> None:
        return None

    listening = asyncio.ensure_future(broker.listen(on_message, on_gap))
    try:
        async with asyncio.timeout(DEADLINE):
            while not broker.feed_up:
                await asyncio.sleep(0.01)  # a bench, not a test: the feed's own readiness
            await asyncio.gather(*(broker.subscribe(f"feed-{j}") for j in range(jobs)))
            started = time.process_time()
            publisher = await asyncio.create_subprocess_exec(
                sys.executable, "-c", PUBLISHER, url, str(jobs), str(messages)
            )
            await everything.wait()
            cpu = time.process_time() - started
            await publisher.wait()
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await broker.aclose()
    return cpu * 1e6 / messages


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with EmbeddedServer() as server:
        figures = [uvloop.run(one_round(server.url)) for _ in range(args.rounds)]
    print("feed CPU per message:", ", ".join(f"{f:.2f}" for f in figures), "µs")


if __name__ == "__main__":
    main()
