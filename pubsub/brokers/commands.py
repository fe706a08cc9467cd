"""The Redis broker's commands: commits, reads, the job index and milestones.

The hot commands, commits and record reads, go on our own connections
(`pubsub.brokers.routing`, docs/performance.md "Publish path"); the others on redis-py's
public API: pipelines and `EVALSHA` through the client, which on a cluster routes each
command by its key's slot (`pubsub.brokers.connect`). The key layout
is `pubsub.brokers.keys`: every key of a job, its partition's index and both channels its
events go to share one slot, so a commit (seq, record, history, index entry, `SPUBLISH`)
and a delete each stay one atomic script.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from pubsub.broker import REQUEST_KEYS_KEPT, Commit, MilestoneStep, RequestKey, UpdateId
from pubsub.brokers import keys
from pubsub.brokers.batch import TickBatcher
from pubsub.brokers.connect import OUTAGE_ERRORS, Connector, translated_outage
from pubsub.brokers.routing import CommandRouter
from pubsub.brokers.slotkeys import SlotKeys
from pubsub.errors import BrokerUnavailable, IdempotencyKeyReused, ReplicasUnconfirmed

REPLICA_WAIT_MS: Final = 1000
"""How long a commit waits for `replicas` replicas to confirm it (docs/api.md §8)."""


def _script(name: str) -> tuple[str, str]:
    source = resources.files("pubsub").joinpath("lua", name).read_text(encoding="utf-8")
    return source, hashlib.sha1(source.encode()).hexdigest()


COMMIT_SCRIPT: Final = _script("commit.lua")
DELETE_SCRIPT: Final = _script("delete.lua")
MILESTONE_SCRIPT: Final = _script("milestone.lua")


NO_WRITER: Final = (b"", b"0")
"""commit.lua's writer arguments for a commit without an `UpdateId`."""
NO_REQUEST: Final = (b"", b"")
"""commit.lua's request key arguments for a commit without a `RequestKey`."""
KEPT_ARG: Final = b"%d" % REQUEST_KEYS_KEPT

SLOT_KEYS: Final = SlotKeys()
"""The KEYS of the jobs this process publishes to (one table per process, as a job's keys
are the same on every connection)."""


class RedisCommands:
    """Every command of the `Broker` contract but the feed, on one server or a cluster.

    Args:
        replicas: a commit is acknowledged only once this many replicas hold it (`WAIT`
            on the commit's own connection, right behind the script); 0: at once.
    """

    def __init__(self, connector: Connector, *, replicas: int = 0) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be 0 or more, got {replicas}")
        self._connector = connector
        self.replicas = replicas
        # The hot commands on our own connections (docs/performance.md, "Publish path"):
        # commits on one connection per node, reads on another, so that a read never
        # waits behind a commit's `WAIT` for slow replicas.
        self._commits_router = CommandRouter(connector, scripts=[COMMIT_SCRIPT])
        self._reads_router = CommandRouter(connector)
        self._commits = TickBatcher(self._send_commits)
        self._reads = TickBatcher(self._send_reads)

    @property
    def routers(self) -> tuple[CommandRouter, CommandRouter]:
        """The routers of the hot commands: commits, and record reads."""
        return self._commits_router, self._reads_router

    async def load(self, job_id: str) -> bytes | None:
        return cast(bytes | None, await self._reads.call((keys.job_key(job_id), "record")))

    async def load_seq(self, job_id: str) -> int | None:
        seq = cast(bytes | None, await self._reads.call((keys.job_key(job_id), "seq")))
        return int(seq) if seq is not None else None

    async def load_many(self, job_ids: Sequence[str]) -> list[bytes | None]:
        if not job_ids:
            return []
        async with translated_outage():
            records = await self._send_reads([(keys.job_key(j), "record") for j in job_ids])
        for record in records:
            if isinstance(record, Exception):
                raise record
        return cast(list[bytes | None], records)

    async def _send_reads(self, fields: list[tuple[str, str]]) -> list[Any]:
        """HGET of each (key, field), on our connections (one round trip per node)."""
        reads = [(key, (b"HGET", key, name)) for key, name in fields]
        return (await self._reads_router.execute(reads))[0]

    async def _execute(self, pipe: Any) -> list[Any]:
        """Run a pipeline, errors in their replies' places; a node that failed has the
        slot map read again, so that the retry finds a promoted replica."""
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        except OUTAGE_ERRORS:
            await self._refresh()
            raise
        if any(isinstance(reply, OUTAGE_ERRORS) for reply in replies):
            await self._refresh()
        return replies

    async def _refresh(self) -> None:
        try:
            await self._connector.refresh()
        except BrokerUnavailable:
            pass  # the cluster is still choosing: the next failure asks again

    async def commit(self, commit: Commit) -> tuple[bool, bytes | None]:
        # Each commit of a batch is still its own atomic compare-and-set script.
        reply = await self._commits.call(commit)
        if reply[0] == 1:
            return True, None
        if reply[0] == 3:
            raise IdempotencyKeyReused(commit.job_id)
        # 2: the job holds this update already (commit.lua), 0: the seq moved.
        return reply[0] == 2, reply[1] if len(reply) > 1 else None

    async def _send_commits(self, batch: list[Commit]) -> list[Any]:
        """The scripts of `batch` on our connections, and, with `replicas`, each node's
        `WAIT` right behind them on the same connection (it covers every write made before
        it there)."""
        commands = [_routed(_commit_command(c)) for c in batch]
        if not self.replicas:
            return (await self._commits_router.execute(commands))[0]
        wait = (b"WAIT", b"%d" % self.replicas, b"%d" % REPLICA_WAIT_MS)
        scripts, confirmed = await self._commits_router.execute(commands, tail=wait)
        # Written on the master but not confirmed by enough replicas: not acknowledged
        # (docs/api.md §8). The caller's retry finds the write there (its `UpdateId`),
        # and is acknowledged once this `WAIT` confirms it; or redoes it.
        unconfirmed = ReplicasUnconfirmed(self.replicas)
        for i, count in enumerate(confirmed):
            if _committed(scripts[i]) and not _enough(count, self.replicas):
                scripts[i] = unconfirmed
        return scripts

    async def history(self, job_id: str, count: int) -> list[bytes]:
        if count <= 0:
            return []
        client = await self._connector.client()
        async with translated_outage():
            entries = await client.lrange(keys.history_key(job_id), -count, -1)
        return cast(list[bytes], entries)

    async def result(self, job_id: str) -> bytes | None:
        client = await self._connector.client()
        async with translated_outage():
            stored = await client.get(keys.result_key(job_id))
        return cast(bytes | None, stored)

    async def delete(self, job_id: str, envelope: bytes) -> bool:
        slot_keys = SLOT_KEYS.take(job_id)
        existed = await self._eval(DELETE_SCRIPT, slot_keys, [envelope, job_id])
        return bool(existed)

    async def forget_writer(self, job_id: str, writer: str) -> None:
        client = await self._connector.client()
        async with translated_outage():
            await client.hdel(keys.job_key(job_id), keys.writer_field(writer))

    async def recent_jobs(self, start: int, stop: int) -> list[str]:
        """Ids newest first, positions `start`..`stop` of the merged partition indexes.

        Two shapes, those the store asks for: `0 <= start <= stop` (from the newest) and
        `start < 0, stop == -1` (the oldest `-start` ids). Each partition's index gives
        its own best `stop + 1` (or `-start`) entries, all in one pipelined round trip per
        node, merged by creation time.
        """
        oldest = start < 0
        if oldest and stop != -1 or not oldest and not 0 <= start <= stop:
            raise ValueError(f"unsupported index range {start}..{stop}")
        take = -start if oldest else stop + 1
        client = await self._connector.client()
        pipe = client.pipeline(transaction=False)
        for part in range(keys.PARTITIONS):
            if oldest:
                pipe.zrange(keys.index_key(part), 0, take - 1, withscores=True)
            else:
                pipe.zrevrange(keys.index_key(part), 0, take - 1, withscores=True)
        async with translated_outage():
            indexes = cast(list[list[tuple[bytes, float]]], _raised(await self._execute(pipe)))
        entries = [(score, job_id) for index in indexes for job_id, score in index]
        if oldest:
            chosen = heapq.nsmallest(take, entries)
            return [job_id.decode() for _, job_id in reversed(chosen)]
        chosen = heapq.nlargest(take, entries)
        return [job_id.decode() for _, job_id in chosen[start:]]

    async def forget(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        by_partition: dict[int, list[str]] = defaultdict(list)
        for job_id in job_ids:
            by_partition[keys.partition(job_id)].append(job_id)
        client = await self._connector.client()
        pipe = client.pipeline(transaction=False)
        for part, ids in by_partition.items():
            pipe.zrem(keys.index_key(part), *ids)
            pipe.zrem(keys.live_key(part), *ids)
        async with translated_outage():
            _raised(await self._execute(pipe))

    async def quiet_jobs(self, cutoff: float, limit: int) -> list[str]:
        """The quietest `limit` of every partition's live index up to `cutoff`, merged:
        one pipelined round trip per node, and only jobs that can stall are read."""
        client = await self._connector.client()
        pipe = client.pipeline(transaction=False)
        for part in range(keys.PARTITIONS):
            pipe.zrangebyscore(keys.live_key(part), "-inf", cutoff, 0, limit, withscores=True)
        async with translated_outage():
            indexes = cast(list[list[tuple[bytes, float]]], _raised(await self._execute(pipe)))
        entries = [(score, job_id) for index in indexes for job_id, score in index]
        return [job_id.decode() for _, job_id in heapq.nsmallest(limit, entries)]

    async def advance_milestone(
        self,
        job_id: str,
        client: str,
        milestones: Sequence[float],
        progress: float,
        max_clients: int,
    ) -> MilestoneStep:
        reply = await self._eval(
            MILESTONE_SCRIPT,
            [keys.milestones_key(job_id), keys.job_key(job_id)],
            [client, repr(progress), max_clients, *(repr(m) for m in milestones)],
        )
        if reply[0] == -2:
            raise ValueError(f"too many milestone clients for this job (limit {max_clients})")
        if reply[0] == -1:
            return MilestoneStep(milestone=None, calls=0)
        milestone = float(reply[2]) if reply[0] == 1 else None
        return MilestoneStep(milestone=milestone, calls=int(reply[1]))

    async def ping(self) -> None:
        client = await self._connector.client()
        async with translated_outage():
            if isinstance(client, RedisCluster):
                await client.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await client.ping()

    async def aclose(self) -> None:
        """Close our own connections (redis-py's are the connector's)."""
        await self._commits_router.aclose()
        await self._reads_router.aclose()

    async def _eval(
        self, script: tuple[str, str], slot_keys: Sequence[str | bytes], args: list[Any]
    ) -> Any:
        """One script by its digest, loaded first if the server does not know it."""
        client = await self._connector.client()
        async with translated_outage():
            try:
                return await client.evalsha(script[1], len(slot_keys), *slot_keys, *args)
            except NoScriptError:
                await client.script_load(script[0])
                return await client.evalsha(script[1], len(slot_keys), *slot_keys, *args)


def _routed(command: tuple[Any, ...]) -> tuple[bytes, tuple[Any, ...]]:
    """An `EVALSHA` with the key it is routed by: its first KEY (all share one slot)."""
    return command[3], command


def _commit_command(c: Commit) -> tuple[Any, ...]:
    """The `EVALSHA` of commit.lua for `c`, as `hiredis.pack_command` takes it."""
    slot_keys = SLOT_KEYS.take(c.job_id) if c.final else SLOT_KEYS.get(c.job_id)
    return (
        "EVALSHA",
        COMMIT_SCRIPT[1],
        len(slot_keys),
        *slot_keys,
        b"%d" % c.expected_seq,
        c.record,
        c.snapshot,
        c.envelope,
        b"%d" % c.ttl,
        b"%d" % c.history_len,
        c.result if c.result is not None else b"",
        c.job_id.encode(),
        repr(c.created_at).encode(),
        repr(c.quiet_since).encode() if c.quiet_since is not None else b"",
        *(_writer_args(c.update_id) if c.update_id else NO_WRITER),
        *(_request_args(c.request_key) if c.request_key else NO_REQUEST),
        KEPT_ARG,
    )


def _writer_args(update_id: UpdateId) -> tuple[bytes, bytes]:
    return keys.writer_field(update_id.writer).encode(), b"%d" % update_id.number


def _request_args(request_key: RequestKey) -> tuple[bytes, bytes]:
    return request_key.key.encode(), request_key.update.encode()


def _raised(replies: list[Any]) -> list[Any]:
    """`replies`, unless one is an error: then that error, raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _enough(count: Any, wanted: int) -> bool:
    return isinstance(count, int) and count >= wanted


def _committed(reply: Any) -> bool:
    """Written by this script, or found written by this update's earlier attempt."""
    return isinstance(reply, list) and bool(reply) and reply[0] in (1, 2)
