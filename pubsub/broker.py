"""The Broker contract, and the one factory that picks a backend by URL scheme.

A broker provides the primitives the rest of progress-hub is built on: an atomic
compare-and-set commit of a job (seq, record, capped history, result, TTL and the
publication, all in one step), reads, the job index, the milestone cursors, and one
subscription feed per process. The rules of *what* to commit live in `pubsub.merge` and
`pubsub.store`, once, for every backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

OnMessage = Callable[[bytes, bool], None]
"""Called with each raw envelope delivered to this process, and whether it came through
the every-job feed (True) or the job's own subscription (False)."""

OnGap = Callable[[Collection[str | None]], Awaitable[None]]
"""Called once subscriptions are (re)established after a possible gap (a shard
connection lost and replaced, a slot moved to another node, a failover): the job ids
(None = the every-job feed) whose events may have been missed. The fan-out reloads
each and gives its streams the current snapshot (or the missed events)."""


@dataclass(frozen=True, slots=True)
class UpdateId:
    """Which update of which writer a commit carries.

    A commit whose answer was lost (the connection dropped after the write, or fewer
    replicas than asked confirmed it in time) is in doubt: it may be stored. Its retry
    carries the same id, and a broker that holds `number` (or a later one) of `writer`
    applies it no second time, so that a chunk counted is counted once (docs/api.md §8).
    A writer numbers its updates from 1 in the order it publishes them, one at a time.
    """

    writer: str
    number: int


REQUEST_KEYS_KEPT: Final = 64
"""How many of its last keyed updates a job remembers (`RequestKey`): a caller's retry
comes within seconds of its first try, long before 64 more keyed updates of one job."""


@dataclass(frozen=True, slots=True)
class RequestKey:
    """An HTTP caller's `Idempotency-Key` for one update, and which update it named.

    The HTTP twin of `UpdateId`, for callers that do not number their updates: a job
    remembers the keys of its last `REQUEST_KEYS_KEPT` keyed updates. The same key for
    the same update is a retry, applied no second time; for another update it is
    refused (`IdempotencyKeyReused`). Both are digests of 16 hex digits, so that each
    key a job keeps takes 32 bytes whatever the caller sent (commit.lua).
    """

    key: str
    update: str

    @classmethod
    def of(cls, key: str, update: bytes) -> RequestKey:
        """The request key of a caller's `key` and the update's bytes as it sent them."""
        return cls(_digest(key.encode()), _digest(update))


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Commit:
    """One atomic write of a job: applied only if the stored seq is still `expected_seq`
    and, with an `update_id` or a `request_key`, the job does not hold that update already."""

    job_id: str
    expected_seq: int
    record: bytes
    snapshot: bytes
    envelope: bytes
    ttl: int
    history_len: int
    created_at: float
    result: bytes | None = None
    quiet_since: float | None = None
    """When the job was last updated, if it can stall (queued or running, not flagged):
    its place in the stall sweep's index; None takes it out."""
    final: bool = False
    """The job ends with this commit: a broker keeps nothing of it for a next one."""
    update_id: UpdateId | None = None
    request_key: RequestKey | None = None


@dataclass(frozen=True, slots=True)
class MilestoneStep:
    """What one call of the milestone gate did to a client's cursor."""

    milestone: float | None
    calls: int


class Broker(Protocol):
    """Storage and pub/sub primitives of one backend (memory, redis)."""

    @property
    def feed_epoch(self) -> int:
        """+1 whenever any subscription may have missed events. Whatever this process
        learnt from the feed in an earlier epoch may be stale."""
        ...

    @property
    def feed_up(self) -> bool:
        """True while every shard connection of the feed is up (`listen` is delivering)."""
        ...

    @property
    def feed_resubscriptions(self) -> int:
        """Subscriptions made again after a possible gap, since start (for the metrics)."""
        ...

    def feed_shards(self) -> Mapping[str, bool]:
        """Whether each shard connection of the feed is up, by node (for the metrics)."""
        ...

    def feed_footprint(self) -> Mapping[str, int]:
        """The size of every structure the feed keeps, by name (for the metrics): after a
        job's last unsubscribe, none holds it (tests/pubsub/test_feed_leak.py)."""
        ...

    async def load(self, job_id: str) -> bytes | None:
        """The stored record of a job, or None."""
        ...

    async def load_seq(self, job_id: str) -> int | None:
        """The stored seq of a job (no record decoded), or None."""
        ...

    async def load_many(self, job_ids: Sequence[str]) -> list[bytes | None]:
        """The stored records of several jobs, None where missing, in order."""
        ...

    async def commit(self, commit: Commit) -> tuple[bool, bytes | None]:
        """Write `commit` if the stored seq matches: `(True, None)`. `(True, record)`
        when the job already holds its `update_id` or `request_key` (the stored record,
        which shows it), `IdempotencyKeyReused` when its key named another update;
        `(False, record)` when the seq moved (None: no such job)."""
        ...

    async def history(self, job_id: str, count: int) -> list[bytes]:
        """The last `count` retained snapshots of a job, oldest first."""
        ...

    async def result(self, job_id: str) -> bytes | None:
        """The stored result of a job, or None."""
        ...

    async def delete(self, job_id: str, envelope: bytes) -> bool:
        """Remove every key of a job and publish `envelope`; False if it did not exist."""
        ...

    async def forget_writer(self, job_id: str, writer: str) -> None:
        """Drop what a job keeps of a writer's updates (`UpdateId`): it sends no more."""
        ...

    async def recent_jobs(self, start: int, stop: int) -> list[str]:
        """Ids in the job index, newest first, positions `start` to `stop` inclusive."""
        ...

    async def forget(self, job_ids: Sequence[str]) -> None:
        """Drop ids from the job index and the live index (their keys have expired)."""
        ...

    async def quiet_jobs(self, cutoff: float, limit: int) -> list[str]:
        """Up to `limit` ids of jobs that can stall and were last updated at or before
        `cutoff`, the quietest first."""
        ...

    async def advance_milestone(
        self,
        job_id: str,
        client: str,
        milestones: Sequence[float],
        progress: float,
        max_clients: int,
    ) -> MilestoneStep:
        """Count a gate call and move the client's cursor by at most one reached milestone."""
        ...

    async def ping(self) -> None:
        """Return when the broker answers; raise `BrokerUnavailable` otherwise."""
        ...

    async def listen(self, on_message: OnMessage, on_gap: OnGap) -> None:
        """Feed every envelope of the subscribed jobs to `on_message`, until cancelled;
        after a possible gap, tell `on_gap` which subscriptions it touched."""
        ...

    async def subscribe(self, job_id: str | None) -> None:
        """Start receiving one job's events (None: every job's).

        Returns once the broker confirmed it, so that a read after it misses nothing;
        concurrent first subscriptions share one round trip; raises `BrokerUnavailable`
        when it cannot be confirmed.
        """
        ...

    async def unsubscribe(self, job_id: str | None) -> None:
        """Stop receiving one job's events (None: the every-job feed); prompt, best effort."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def redacted_url(url: str) -> str:
    """A broker URL fit for logs and error messages: no user, password or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    userinfo = "***@" if parts.username or parts.password else ""
    return f"{parts.scheme}://{userinfo}{host}{parts.path}"


def unreachable_hint(url: str) -> str:
    """What to check when the broker at `url` does not answer (docs/publishing.md)."""
    return (
        f"nothing answers at {redacted_url(url)}: is Redis running there (the hub's embedded "
        "broker: `progress-hub serve` prints its URL), and do the hub and its workers use it?"
    )


REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster", "unix", "valkey")


def open_broker(url: str, *, replicas: int = 0) -> Broker:
    """The broker for `url`: `memory://`, or `redis://host:port/db` naming one server or
    any node of a cluster (also `rediss://`; `redis+cluster://` forces cluster mode).

    Args:
        replicas: acknowledge a commit only once this many replicas hold it (Redis only,
            docs/api.md §8).
    """
    if replicas < 0:
        raise ValueError(f"replicas must be 0 or more, got {replicas}")
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        if replicas:
            raise ValueError("the memory broker has no replicas")
        from pubsub.brokers.memory import MemoryBroker

        return MemoryBroker()
    if scheme in REDIS_SCHEMES:
        from pubsub.brokers.redis import RedisBroker

        return RedisBroker(url, replicas=replicas)
    raise ValueError(f"unknown broker scheme {scheme!r} in {url!r} (use redis:// or memory://)")
