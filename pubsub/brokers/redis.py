"""Redis (or Valkey) broker, on one server or a Redis Cluster: commands and the feed.

The two halves are separate concepts in separate modules, sharing the URL's connector:
`pubsub.brokers.commands` (atomic commits, reads, the partitioned job index, milestones)
and `pubsub.brokers.feed` (sharded subscriptions, one connection per shard node). The key
layout is `pubsub.brokers.keys`, the same on one server and on a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from pubsub.broker import Commit, MilestoneStep, OnGap, OnMessage
from pubsub.brokers.commands import RedisCommands
from pubsub.brokers.connect import Connector
from pubsub.brokers.feed import PROBE_INTERVAL, ShardedFeed


class RedisBroker:
    """A `Broker` on a Redis-compatible server, or cluster, shared by every hub and worker.

    Args:
        replicas: acknowledge a commit only once this many replicas hold it
            (docs/api.md §8, `PROGRESS_BROKER_REPLICAS`).
        probe_interval: seconds a quiet subscription connection waits before a PING.
    """

    def __init__(
        self, url: str, *, replicas: int = 0, probe_interval: float = PROBE_INTERVAL
    ) -> None:
        self.url = url
        self._connector = Connector(url)
        self.commands = RedisCommands(self._connector, replicas=replicas)
        self.feed = ShardedFeed(self._connector, probe_interval=probe_interval)

    @property
    def feed_epoch(self) -> int:
        return self.feed.feed_epoch

    @property
    def feed_up(self) -> bool:
        return self.feed.feed_up

    def feed_shards(self) -> dict[str, bool]:
        return self.feed.shards_up()

    def feed_footprint(self) -> dict[str, int]:
        return self.feed.footprint()

    @property
    def feed_resubscriptions(self) -> int:
        """Channels subscribed again after a gap, since start."""
        return self.feed.resubscriptions

    async def load(self, job_id: str) -> bytes | None:
        return await self.commands.load(job_id)

    async def load_seq(self, job_id: str) -> int | None:
        return await self.commands.load_seq(job_id)

    async def load_many(self, job_ids: Sequence[str]) -> list[bytes | None]:
        return await self.commands.load_many(job_ids)

    async def commit(self, commit: Commit) -> tuple[bool, bytes | None]:
        return await self.commands.commit(commit)

    async def history(self, job_id: str, count: int) -> list[bytes]:
        return await self.commands.history(job_id, count)

    async def result(self, job_id: str) -> bytes | None:
        return await self.commands.result(job_id)

    async def delete(self, job_id: str, envelope: bytes) -> bool:
        return await self.commands.delete(job_id, envelope)

    async def forget_writer(self, job_id: str, writer: str) -> None:
        await self.commands.forget_writer(job_id, writer)

    async def recent_jobs(self, start: int, stop: int) -> list[str]:
        return await self.commands.recent_jobs(start, stop)

    async def forget(self, job_ids: Sequence[str]) -> None:
        await self.commands.forget(job_ids)

    async def quiet_jobs(self, cutoff: float, limit: int) -> list[str]:
        return await self.commands.quiet_jobs(cutoff, limit)

    async def advance_milestone(
        self,
        job_id: str,
        client: str,
        milestones: Sequence[float],
        progress: float,
        max_clients: int,
    ) -> MilestoneStep:
        return await self.commands.advance_milestone(
            job_id, client, milestones, progress, max_clients
        )

    async def ping(self) -> None:
        await self.commands.ping()

    async def listen(self, on_message: OnMessage, on_gap: OnGap) -> None:
        await self.feed.listen(on_message, on_gap)

    async def subscribe(self, job_id: str | None) -> None:
        await self.feed.subscribe(job_id)

    async def unsubscribe(self, job_id: str | None) -> None:
        await self.feed.unsubscribe(job_id)

    async def aclose(self) -> None:
        await self.commands.aclose()
        await self._connector.aclose()
