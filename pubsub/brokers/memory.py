"""In-process broker: everything in dicts, for one hub process and for tests."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from pubsub.broker import REQUEST_KEYS_KEPT, Commit, MilestoneStep, OnGap, OnMessage
from pubsub.errors import BrokerUnavailable, IdempotencyKeyReused


@dataclass(slots=True)
class _Job:
    seq: int
    record: bytes
    history: deque[bytes]
    created_at: float
    expires_at: float
    result: bytes | None = None
    quiet_since: float | None = None
    milestones: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    writers: dict[str, int] = field(default_factory=dict)
    """The number of each writer's latest update this job holds (`UpdateId`)."""
    requests: dict[str, str] = field(default_factory=dict)
    """The digest of the update of each of the job's last request keys, oldest first
    (`RequestKey`)."""


class MemoryBroker:
    """A `Broker` that lives in this process only (no persistence, no other hubs)."""

    feed_epoch = 0  # its feed is a function call: never lost
    feed_resubscriptions = 0

    def feed_shards(self) -> dict[str, bool]:
        return {"memory": self.feed_up}

    def feed_footprint(self) -> dict[str, int]:
        return {"subscribed": len(self._subscribed)}

    @property
    def feed_up(self) -> bool:
        return self._on_message is not None

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._subscribed: set[str | None] = set()
        self._on_message: OnMessage | None = None

    def _live(self, job_id: str) -> _Job | None:
        job = self._jobs.get(job_id)
        if job is not None and job.expires_at <= time.monotonic():
            del self._jobs[job_id]
            return None
        return job

    async def load(self, job_id: str) -> bytes | None:
        job = self._live(job_id)
        return job.record if job else None

    async def load_seq(self, job_id: str) -> int | None:
        job = self._live(job_id)
        return job.seq if job else None

    async def load_many(self, job_ids: Sequence[str]) -> list[bytes | None]:
        return [await self.load(job_id) for job_id in job_ids]

    async def commit(self, commit: Commit) -> tuple[bool, bytes | None]:
        job = self._live(commit.job_id)
        update_id = commit.update_id
        if job and update_id and job.writers.get(update_id.writer, 0) >= update_id.number:
            return True, job.record
        request = commit.request_key
        if job and request and request.key in job.requests:
            if job.requests[request.key] != request.update:
                raise IdempotencyKeyReused(commit.job_id)
            return True, job.record
        current = job.seq if job else 0
        if current != commit.expected_seq:
            return False, job.record if job else None
        if job is None:
            job = _Job(
                seq=0,
                record=b"",
                history=deque(maxlen=commit.history_len),
                created_at=commit.created_at,
                expires_at=0.0,
            )
            self._jobs[commit.job_id] = job
        job.seq = commit.expected_seq + 1
        job.record = commit.record
        job.history.append(commit.snapshot)
        job.expires_at = time.monotonic() + commit.ttl
        job.quiet_since = commit.quiet_since
        if commit.result is not None:
            job.result = commit.result
        if update_id is not None:
            job.writers[update_id.writer] = update_id.number
        if request is not None:
            job.requests[request.key] = request.update
            if len(job.requests) > REQUEST_KEYS_KEPT:
                del job.requests[next(iter(job.requests))]
        self._publish(commit.job_id, commit.envelope)
        return True, None

    async def history(self, job_id: str, count: int) -> list[bytes]:
        job = self._live(job_id)
        if job is None or count <= 0:
            return []
        return list(job.history)[-count:]

    async def result(self, job_id: str) -> bytes | None:
        job = self._live(job_id)
        return job.result if job else None

    async def forget_writer(self, job_id: str, writer: str) -> None:
        job = self._live(job_id)
        if job is not None:
            job.writers.pop(writer, None)

    async def delete(self, job_id: str, envelope: bytes) -> bool:
        if self._live(job_id) is None:
            return False
        del self._jobs[job_id]
        self._publish(job_id, envelope)
        return True

    async def recent_jobs(self, start: int, stop: int) -> list[str]:
        ordered = sorted(self._jobs.items(), key=lambda item: item[1].created_at, reverse=True)
        # Negative positions count from the oldest end, as in Redis' ZREVRANGE.
        end = None if stop == -1 else stop + 1
        return [job_id for job_id, _ in ordered[start:end]]

    async def forget(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            self._live(job_id)

    async def quiet_jobs(self, cutoff: float, limit: int) -> list[str]:
        quiet = [
            (job.quiet_since, job_id)
            for job_id, job in list(self._jobs.items())
            if job.quiet_since is not None and job.quiet_since <= cutoff and self._live(job_id)
        ]
        return [job_id for _, job_id in sorted(quiet)[:limit]]

    async def advance_milestone(
        self,
        job_id: str,
        client: str,
        milestones: Sequence[float],
        progress: float,
        max_clients: int,
    ) -> MilestoneStep:
        job = self._live(job_id)
        if job is None:
            return MilestoneStep(milestone=None, calls=0)
        if client not in job.calls and len(job.calls) >= max_clients:
            raise ValueError(f"too many milestone clients for this job (limit {max_clients})")
        job.calls[client] = calls = job.calls.get(client, 0) + 1
        last = job.milestones.get(client, -1.0)
        upcoming = [m for m in milestones if m > last]
        if upcoming and progress >= upcoming[0]:
            job.milestones[client] = upcoming[0]
            return MilestoneStep(milestone=upcoming[0], calls=calls)
        return MilestoneStep(milestone=None, calls=calls)

    async def ping(self) -> None:
        return None

    async def listen(self, on_message: OnMessage, on_gap: OnGap) -> None:
        self._on_message = on_message
        try:
            await anyio.sleep_forever()
        finally:
            self._on_message = None

    async def subscribe(self, job_id: str | None) -> None:
        if self._on_message is None:
            # As with Redis: no feed is running, so a subscription would hear nothing.
            raise BrokerUnavailable("the broker feed is not running")
        self._subscribed.add(job_id)

    async def unsubscribe(self, job_id: str | None) -> None:
        self._subscribed.discard(job_id)

    async def aclose(self) -> None:
        self._jobs.clear()

    def _publish(self, job_id: str, envelope: bytes) -> None:
        if self._on_message is None:
            return
        if job_id in self._subscribed:
            self._on_message(envelope, False)
        if None in self._subscribed:
            self._on_message(envelope, True)
