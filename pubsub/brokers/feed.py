"""The subscription feed: sharded pub/sub on one subscription connection per shard node.

Each job's events arrive on its sharded channel (`SSUBSCRIBE`), the every-job feed on the
64 partition channels (`pubsub.brokers.keys`). Redis delivers a sharded channel only on a
connection to the master that owns its slot, so the feed holds one connection per master
(one in all on a single server), each read through redis-py's public `PubSub`
(`get_message`), which therefore sees every unsubscribe reply and keeps nothing of a job
after its last unsubscribe (`tests/pubsub/test_feed_leak.py`).

Anything that may have lost events is a gap, told to `listen`'s `on_gap` with the job
ids concerned once their subscriptions are back, and counted in `feed_epoch` the moment
it starts: a shard connection that fails or stops answering (a quiet connection gets a
PING after `probe_interval`, and is replaced when another interval passes without a
word), a slot moved to another master (Redis then sends `sunsubscribe` for its channels;
an `SSUBSCRIBE` to a node that lost the slot is answered `MOVED`; that connection is
replaced too, as redis-py's `PubSub` would otherwise go on listing those channels), a
failover. The repair re-reads the cluster's slot map and subscribes each channel at its
owner, retrying on the schedule of `pubsub.backoff`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.asyncio.client import PubSub
from redis.crc import key_slot
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pubsub.backoff import Outage
from pubsub.broker import OnGap, OnMessage
from pubsub.brokers import keys
from pubsub.brokers.batch import TickBatcher
from pubsub.brokers.connect import OUTAGE_ERRORS, Connector, node_url, server_client
from pubsub.errors import BrokerUnavailable

log = structlog.get_logger(__name__)

PROBE_INTERVAL: Final = 30.0
SUBSCRIBE_TIMEOUT: Final = 5.0
# Keeps each shard connection in subscribed mode (so that it is read, and answers a PING
# in the same shape) while no job of its node is followed. A plain channel, node-local.
CONTROL_CHANNEL: Final = b"progress:control"
SINGLE_NODE: Final = "server"
# What redis-py's `PubSub` keeps per channel or pattern (its public attributes).
PUBSUB_STRUCTURES: Final = (
    "channels",
    "pending_unsubscribe_channels",
    "patterns",
    "pending_unsubscribe_patterns",
    "shard_channels",
    "pending_unsubscribe_shard_channels",
)
PARTITION_CHANNELS: Final = frozenset(
    keys.partition_channel(p).encode() for p in range(keys.PARTITIONS)
)


@dataclass(slots=True, eq=False)
class _Shard:
    """One subscription connection, to one master."""

    node: str
    pubsub: PubSub
    channels: set[bytes] = field(default_factory=set)
    """Channels subscribed (or being subscribed) here."""
    confirming: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)
    leaving: set[bytes] = field(default_factory=set)
    """Channels we unsubscribed whose reply has not come yet."""
    heard: int = 0
    """Replies read so far (the liveness probe's clock)."""
    stale: bool = False
    """Redis dropped (or refused) channels of it that redis-py's `PubSub` still lists and
    cannot be told to forget (a `SUNSUBSCRIBE` there is answered `MOVED`): replaced."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """Its reader and its probe."""


class ShardedFeed:
    """The subscription side of the Redis broker (the `Broker` feed of docs/api.md §3)."""

    def __init__(self, connector: Connector, *, probe_interval: float = PROBE_INTERVAL) -> None:
        if probe_interval <= 0:
            raise ValueError(f"probe_interval must be positive, got {probe_interval}")
        self._connector = connector
        self._probe_interval = probe_interval
        self.feed_epoch = 0
        self.resubscriptions = 0
        """Channels subscribed again after a gap, since start."""
        self._wanted: dict[bytes, str | None] = {}  # channel → job id (None: every job)
        self._shards: dict[str, _Shard] = {}
        self._nodes: set[str] = set()  # the masters, as last read
        self._orphans: set[bytes] = set()  # wanted, subscribed nowhere right now
        self._repair_needed = anyio.Event()
        self._on_message: OnMessage | None = None
        self._tg: TaskGroup | None = None
        self._subscribes = TickBatcher(self._send_subscribes)
        self._unsubscribes: TickBatcher[tuple[_Shard, bytes]] = TickBatcher(self._send_unsubscribes)

    @property
    def feed_up(self) -> bool:
        """True while every shard connection is up and every channel subscribed."""
        return (
            self._tg is not None
            and bool(self._nodes)
            and all(node in self._shards for node in self._nodes)
            and not self._orphans
        )

    def shards_up(self) -> dict[str, bool]:
        """Whether each shard connection is up, by node (the masters, and any in use)."""
        return {node: node in self._shards for node in self._nodes | set(self._shards)}

    def footprint(self) -> dict[str, int]:
        """The size of every structure the feed keeps, ours and redis-py's `PubSub`'s
        (summed over the shards): after a job's last unsubscribe, none holds it."""
        sizes = {"wanted": len(self._wanted), "orphans": len(self._orphans)}
        for name in ("channels", "confirming", "leaving"):
            sizes[name] = sum(len(getattr(shard, name)) for shard in self._shards.values())
        for name in PUBSUB_STRUCTURES:
            sizes[f"pubsub.{name}"] = sum(
                len(getattr(shard.pubsub, name)) for shard in self._shards.values()
            )
        return sizes

    async def listen(self, on_message: OnMessage, on_gap: OnGap) -> None:
        """Deliver every event of the subscribed channels to `on_message` until cancelled."""
        self._on_message = on_message
        self._orphans = set(self._wanted)
        self._repair_needed.set()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self._repair_forever(on_gap)
        finally:
            self._tg = self._on_message = None
            self.feed_epoch += 1
            with anyio.CancelScope(shield=True):
                for shard in list(self._shards.values()):
                    await self._close(shard)
            self._nodes = set()

    async def subscribe(self, job_id: str | None) -> None:
        """Receive one job's events (None: every job's) once Redis confirmed it."""
        channels = _channels(job_id)
        for channel in channels:
            self._wanted[channel] = job_id
        try:
            if len(channels) == 1:
                await self._subscribes.call(channels[0])
            else:
                await asyncio.gather(*(self._subscribes.call(channel) for channel in channels))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.unsubscribe(job_id)
            raise

    async def unsubscribe(self, job_id: str | None) -> None:
        """Stop receiving one job's events; best effort (a lost connection took them)."""
        leaving: list[tuple[_Shard, bytes]] = []
        for channel in _channels(job_id):
            self._wanted.pop(channel, None)
            self._orphans.discard(channel)
            for shard in self._shards.values():
                if channel in shard.channels:
                    shard.channels.discard(channel)
                    shard.leaving.add(channel)
                    leaving.append((shard, channel))
        try:
            if len(leaving) == 1:
                await self._unsubscribes.call(leaving[0])
            else:
                await asyncio.gather(*(self._unsubscribes.call(item) for item in leaving))
        except BrokerUnavailable:
            log.debug("broker_unsubscribe_skipped", job_id=job_id)

    async def _send_unsubscribes(self, leaving: list[tuple[_Shard, bytes]]) -> list[Any]:
        """`SUNSUBSCRIBE` a tick's channels, one command per shard and slot; the replies
        are read by the shard's reader (and so by redis-py, which forgets them then)."""
        groups: dict[tuple[_Shard, int], list[bytes]] = defaultdict(list)
        for shard, channel in leaving:
            groups[shard, key_slot(channel)].append(channel)
        for (shard, _), names in groups.items():
            if self._shards.get(shard.node) is not shard:
                continue  # lost meanwhile: its subscriptions went with it
            try:
                await shard.pubsub.sunsubscribe(*names)
            except OUTAGE_ERRORS as exc:
                await self._lost(shard, exc)
        return [None] * len(leaving)

    async def _send_subscribes(self, channels: list[bytes]) -> list[Any]:
        """`SSUBSCRIBE` a tick's channels (one command per node and slot), then wait for
        every confirmation: concurrent first subscriptions share one round trip."""
        if self._tg is None:
            # As with the memory broker: with no feed running a subscription hears nothing.
            unavailable = BrokerUnavailable("the broker feed is not running")
            return [unavailable for _ in channels]
        replies: list[Any] = [None] * len(channels)
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, channel in enumerate(channels):
            if channel not in self._wanted:  # unsubscribed meanwhile
                continue
            node = self._owner(channel)
            if node not in self._shards:
                replies[i] = BrokerUnavailable("no subscription connection to its shard")
                continue
            groups[node, key_slot(channel)].append(i)
        waits: list[tuple[int, asyncio.Future[None]]] = []
        for (node, _), members in groups.items():
            shard = self._shards[node]
            names = [channels[i] for i in members]
            for i, name in zip(members, names, strict=True):
                confirmed = shard.confirming.get(name)
                if confirmed is None:
                    confirmed = shard.confirming[name] = asyncio.get_running_loop().create_future()
                shard.channels.add(name)
                self._orphans.discard(name)
                waits.append((i, confirmed))
            try:
                await shard.pubsub.ssubscribe(*names)
            except OUTAGE_ERRORS as exc:
                await self._lost(shard, exc)
        if waits:
            with anyio.move_on_after(SUBSCRIBE_TIMEOUT):
                await asyncio.wait([f for _, f in waits])
        for i, confirmed in waits:
            if not confirmed.done():
                replies[i] = BrokerUnavailable("subscription not confirmed")
            elif confirmed.exception() is not None:
                replies[i] = confirmed.exception()
        return replies

    def _owner(self, channel: bytes) -> str:
        """The node whose connection carries `channel`, as the slot map says now."""
        cluster = self._connector.cluster
        if cluster is None:
            return SINGLE_NODE
        node = cluster.get_node_from_key(channel.decode())
        return f"{node.host}:{node.port}" if node is not None else ""

    async def _repair_forever(self, on_gap: OnGap) -> None:
        outage = Outage()
        while True:
            await self._repair_needed.wait()
            self._repair_needed = anyio.Event()
            try:
                repaired = await self._repair()
            except (*OUTAGE_ERRORS, BrokerUnavailable, ResponseError) as exc:
                if outage.failed(anyio.current_time()):
                    log.warning("broker_feed_repair_failed", error=type(exc).__name__)
                self._repair_needed.set()
                await anyio.sleep(outage.delay)
                continue
            if outage.succeeded(anyio.current_time()) is not None:
                log.info("broker_feed_restored", channels=len(repaired))
            if repaired:
                self.resubscriptions += len(repaired)
                await on_gap({self._wanted.get(c) for c in repaired if c in self._wanted})

    async def _repair(self) -> set[bytes]:
        """Connect every master, subscribe every orphaned channel at its owner; returns
        the channels subscribed again."""
        await self._connector.client()
        cluster = self._connector.cluster
        if cluster is not None:
            await cluster.nodes_manager.initialize()  # the slot map, read again
            self._nodes = {f"{n.host}:{n.port}" for n in cluster.get_primaries()}
        else:
            self._nodes = {SINGLE_NODE}
        for node in self._nodes - set(self._shards):
            await self._open(node)
        orphans = set(self._orphans)
        if not orphans:
            return set()
        replies = await self._send_subscribes(list(orphans))
        failed = [r for r in replies if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        return orphans

    async def _open(self, node: str) -> None:
        """One subscription connection to `node`, subscribed to the control channel."""
        url = self._connector.url
        if node != SINGLE_NODE:
            host, _, port = node.rpartition(":")
            url = node_url(url, host, int(port))
        pubsub = server_client(url, pool=False).pubsub()
        try:
            with anyio.fail_after(SUBSCRIBE_TIMEOUT):
                await pubsub.subscribe(CONTROL_CHANNEL)
                while (await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT)) is None:
                    pass
        except BaseException:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        shard = self._shards[node] = _Shard(node=node, pubsub=pubsub)
        assert self._tg is not None
        self._tg.start_soon(self._run, shard)
        log.info("broker_shard_connected", node=node)

    async def _run(self, shard: _Shard) -> None:
        with shard.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._probe, shard)
                tg.start_soon(self._read, shard)

    async def _read(self, shard: _Shard) -> None:
        """Read one shard connection until it fails.

        Without a timeout per read: one costs redis-py as much again as the read itself
        (docs/performance.md, the public-API broker); `_probe` watches for silence instead.
        """
        pubsub = shard.pubsub
        try:
            while True:
                try:
                    message = await pubsub.get_message(timeout=None)
                except ResponseError as exc:
                    self._refused(shard, exc)
                    message = None
                shard.heard += 1
                if message is not None:
                    self._dispatch(shard, message)
                if shard.stale:
                    await self._lost(shard, ResponseError("a slot of it moved"))
                    return
        except OUTAGE_ERRORS as exc:
            await self._lost(shard, exc)

    async def _probe(self, shard: _Shard) -> None:
        """A connection quiet for an interval gets a PING; quiet for another, it is
        taken as dead (a peer gone without a word, a NAT that forgot it)."""
        heard, pinged = -1, False
        while True:
            await anyio.sleep(self._probe_interval)
            if shard.heard != heard:
                heard, pinged = shard.heard, False
                continue
            if pinged:
                await self._lost(shard, RedisTimeoutError("the connection stopped answering"))
                return
            pinged = True
            try:
                await shard.pubsub.ping()
            except OUTAGE_ERRORS as exc:
                await self._lost(shard, exc)
                return

    def _dispatch(self, shard: _Shard, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            if self._on_message is not None:
                self._on_message(message["data"], channel in PARTITION_CHANNELS)
        elif kind == "ssubscribe":
            confirmed = shard.confirming.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == "sunsubscribe":
            if channel in shard.leaving:
                shard.leaving.discard(channel)
            elif channel in shard.channels:
                # Not asked for: its slot moved to another master.
                self._moved(shard, [channel])

    def _refused(self, shard: _Shard, exc: ResponseError) -> None:
        """An `SSUBSCRIBE` answered with an error (`MOVED`: the slot map was stale)."""
        slot = getattr(exc, "slot_id", None)
        refused = [c for c in shard.confirming if slot is None or key_slot(c) == slot]
        log.info("broker_subscribe_redirected", node=shard.node, channels=len(refused))
        self._moved(shard, refused)

    def _moved(self, shard: _Shard, channels: list[bytes]) -> None:
        """`channels` are no longer subscribed on `shard`: subscribe them at their new
        owner, and replace `shard`, so that redis-py keeps nothing of them either."""
        shard.stale = True
        self.feed_epoch += 1
        for channel in channels:
            shard.channels.discard(channel)
            confirmed = shard.confirming.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_exception(BrokerUnavailable("the channel's slot moved"))
            if channel in self._wanted:
                self._orphans.add(channel)
        self._repair_needed.set()

    async def _lost(self, shard: _Shard, exc: BaseException) -> None:
        """Give up a shard connection: its channels wait for the repair."""
        if self._shards.get(shard.node) is not shard:
            return
        log.warning("broker_shard_lost", node=shard.node, error=type(exc).__name__)
        del self._shards[shard.node]
        self.feed_epoch += 1
        self._orphans |= {c for c in shard.channels if c in self._wanted}
        for confirmed in shard.confirming.values():
            if not confirmed.done():
                confirmed.set_exception(BrokerUnavailable("the subscription connection was lost"))
        self._repair_needed.set()
        shard.scope.cancel()  # its reader and probe, whichever of them called
        with anyio.CancelScope(shield=True):
            await self._close(shard)

    async def _close(self, shard: _Shard) -> None:
        self._shards.pop(shard.node, None)
        try:
            await shard.pubsub.aclose()  # type: ignore[no-untyped-call]
        except OUTAGE_ERRORS:
            pass
        await shard.pubsub.connection_pool.aclose()


def _channels(job_id: str | None) -> list[bytes]:
    if job_id is None:
        return sorted(PARTITION_CHANNELS)
    return [keys.job_channel(job_id).encode()]
