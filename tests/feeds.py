"""A broker's feed running for a test: what it delivers, in order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager

import anyio

from pubsub.brokers.redis import RedisBroker
from tests.conditions import eventually


async def _no_gap(jobs: Collection[str | None]) -> None:
    return None


@asynccontextmanager
async def listening(broker: RedisBroker, *, up_within: float = 10) -> AsyncIterator[list[bytes]]:
    """Run `broker`'s feed in a task group until the block ends, once it is up (within
    `up_within` s); yields the list the envelopes it delivers are appended to."""
    delivered: list[bytes] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(broker.listen, lambda raw, _: delivered.append(raw), _no_gap)
        await eventually(lambda: broker.feed_up, bool, up_within, "the feed is up")
        try:
            yield delivered
        finally:
            tg.cancel_scope.cancel()
