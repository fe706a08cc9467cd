"""The Redis broker's commands: commits, reads, the job index and milestones.

Built on redis-py's public API only: pipelines and `EVALSHA` through the client, which on
a cluster routes each command by its key's slot (`pubsub.brokers.connect`). The key layout
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

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError

from pubsub.broker import Commit, MilestoneStep
from pubsub.brokers import keys
from pubsub.brokers.batch import TickBatcher
from pubsub.brokers.connect import OUTAGE_ERRORS, Connector, translated_outage
from pubsub.brokers.slotkeys import SlotKeys
from pubsub.errors import BrokerUnavailable

REPLICA_WAIT_MS: Final = 1000
"""How long a commit waits for `replicas` replicas to confirm it (docs/api.md §8)."""


def _script(name: str) -> tuple[str, str]:
    source = resources.files("pubsub").joinpath("lua", name).read_text(encoding="utf-8")
    return source, hashlib.sha1(source.encode()).hexdigest()


COMMIT_SCRIPT: Final = _script("commit.lua")
DELETE_SCRIPT: Final = _script("delete.lua")
MILESTONE_SCRIPT: Final = _script("milestone.lua")


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
        self._commits = TickBatcher(self._send_commits, send_one=self._send_commit)
        self._reads = TickBatcher(self._send_reads)

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
        """HGET of each (key, field), pipelined (one round trip per node)."""
        client = await self._connector.client()
        pipe = client.pipeline(transaction=False)
        for key, name in fields:
            pipe.hget(key, name)
        return await self._execute(pipe)

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
        return False, reply[1] if len(reply) > 1 else None

    async def _send_commit(self, c: Commit) -> Any:
        """A lone commit: its script as one command, not a pipeline of one, which costs
        the client more (docs/performance.md: publish path)."""
        if self.replicas:
            # WAIT must follow the script on the script's own connection: a pipeline.
            return (await self._send_commits([c]))[0]
        client = await self._connector.client()
        try:
            try:
                return await client.execute_command(*_commit_command(c))
            except NoScriptError:  # the server restarted and forgot the script
                await client.script_load(COMMIT_SCRIPT[0])
                return await client.execute_command(*_commit_command(c))
        except OUTAGE_ERRORS:
            await self._refresh()  # as `_execute`: the retry finds a promoted replica
            raise

    async def _send_commits(self, batch: list[Commit]) -> list[Any]:
        client = await self._connector.client()
        replies = await self._pipeline_commits(client, batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # the server restarted and forgot the script: load it, send those again
            await client.script_load(COMMIT_SCRIPT[0])
            again = await self._pipeline_commits(client, [batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline_commits(self, client: Any, batch: list[Commit]) -> list[Any]:
        """The scripts of `batch`, pipelined, and each node's `WAIT` right behind them."""
        pipe = client.pipeline(transaction=False)
        nodes: dict[str, ClusterNode | None] = {}
        for c in batch:
            pipe.execute_command(*_commit_command(c))
            if self.replicas:
                node = _node_of(client, keys.job_key(c.job_id))
                nodes[node.name if node is not None else ""] = node
        # WAIT covers every write made before it on its connection: one per node, behind
        # that node's scripts (a pipeline sends one node's commands on one connection).
        waits: list[str] = []
        for name, node in nodes.items():
            if node is None:
                pipe.execute_command("WAIT", self.replicas, REPLICA_WAIT_MS)
            else:
                pipe.execute_command("WAIT", self.replicas, REPLICA_WAIT_MS, target_nodes=node)
            waits.append(name)
        replies = await self._execute(pipe)
        scripts, confirmed = replies[: len(batch)], replies[len(batch) :]
        if not waits:
            return scripts
        short = {
            name
            for name, count in zip(waits, confirmed, strict=True)
            if not _enough(count, self.replicas)
        }
        if not short:
            return scripts
        # Written on the master but not confirmed by enough replicas: not acknowledged
        # (docs/api.md §8). The caller's retry finds the write there, or redoes it.
        unconfirmed = BrokerUnavailable(f"fewer than {self.replicas} replicas confirmed in time")
        for i, c in enumerate(batch):
            node = _node_of(client, keys.job_key(c.job_id))
            if (node.name if node is not None else "") in short and _committed(scripts[i]):
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


def _commit_command(c: Commit) -> tuple[Any, ...]:
    """The `EVALSHA` of commit.lua for `c`, by name: redis-py's cluster pipeline refuses
    its `evalsha` method (it cannot know that the script's keys share a slot); the command
    itself routes by key, in a pipeline and alone."""
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
    )


def _raised(replies: list[Any]) -> list[Any]:
    """`replies`, unless one is an error: then that error, raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _node_of(client: Any, key: str) -> ClusterNode | None:
    return client.get_node_from_key(key) if isinstance(client, RedisCluster) else None


def _enough(count: Any, wanted: int) -> bool:
    return isinstance(count, int) and count >= wanted


def _committed(reply: Any) -> bool:
    return isinstance(reply, list) and bool(reply) and reply[0] == 1
