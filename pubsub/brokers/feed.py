"""The subscription feed: sharded pub/sub on one subscription connection per shard node.

Each job's events arrive on its sharded channel (`SSUBSCRIBE`), the every-job feed on the
64 partition channels (`pubsub.brokers.keys`). Redis delivers a sharded channel only on a
connection to the master that owns its slot, so the feed holds one connection per master
(one in all on a single server): a `SubscriptionConnection` of ours
(`pubsub.brokers.subscription`), which hands every reply to the feed as it is parsed and
keeps nothing per channel itself, so the feed's own sets are all there is to forget: none
holds a job after its last unsubscribe (`tests/pubsub/test_feed_leak.py`).

Anything that may have lost events is a gap, told to `listen`'s `on_gap` with the job
ids concerned once their subscriptions are back, and counted in `feed_epoch` the moment
it starts: a shard connection that fails or stops answering (a quiet connection gets a
PING after `probe_interval`, and is replaced when another interval passes without a
word), a slot moved to another master (Redis then sends `sunsubscribe` for its channels;
an `SSUBSCRIBE` to a node that lost the slot is answered `MOVED`), a failover. The
repair re-reads the cluster's slot map and subscribes each channel at its owner,
retrying on the schedule of `pubsub.backoff`. The connection that lost a slot stays:
Redis dropped those channels from it, and nothing of ours lists them any more.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.crc import key_slot
from redis.exceptions import ResponseError

from pubsub.backoff import Outage
from pubsub.broker import OnGap, OnMessage
from pubsub.brokers import keys
from pubsub.brokers.batch import TickBatcher
from pubsub.brokers.connect import (
    OUTAGE_ERRORS,
    Connector,
    address_of,
    failed_open,
    node_url,
    plain_url,
    translated_outage,
)
from pubsub.brokers.endpoint import ErrorReply
from pubsub.brokers.subscription import SubscriptionConnection
from pubsub.errors import BrokerUnavailable

log = structlog.get_logger(__name__)

PROBE_INTERVAL: Final = 30.0
SUBSCRIBE_TIMEOUT: Final = 5.0
# Keeps each shard connection in subscribed mode (so that it is read, and answers a PING
# in the same shape) while no job of its node is followed. A plain channel, node-local.
CONTROL_CHANNEL: Final = b"progress:control"
SINGLE_NODE: Final = "server"
PARTITION_CHANNELS: Final = frozenset(
    keys.partition_channel(p).encode() for p in range(keys.PARTITIONS)
)


@dataclass(slots=True, eq=False)
class _Shard:
    """One subscription connection, to one master."""

    node: str
    connection: SubscriptionConnection = field(init=False)
    channels: set[bytes] = field(default_factory=set)
    """Channels subscribed (or being subscribed) here."""
    confirming: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)
    leaving: set[bytes] = field(default_factory=set)
    """Channels we unsubscribed whose reply has not come yet."""
    heard: int = 0
    """Replies read so far (the liveness probe's clock)."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """Its probe."""


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
        """The size of every structure the feed keeps per channel (summed over the shards;
        a `SubscriptionConnection` keeps none): after a job's last unsubscribe, none
        holds it."""
        sizes = {"wanted": len(self._wanted), "orphans": len(self._orphans)}
        for name in ("channels", "confirming", "leaving"):
            sizes[name] = sum(len(getattr(shard, name)) for shard in self._shards.values())
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
        """`SUNSUBSCRIBE` a tick's channels, one command per shard (and slot); the replies
        take them off the shard's `leaving` (`_dispatch`)."""
        groups: dict[tuple[_Shard, int], list[bytes]] = defaultdict(list)
        for shard, channel in leaving:
            groups[shard, self._command_slot(channel)].append(channel)
        for (shard, _), names in groups.items():
            if self._shards.get(shard.node) is not shard:
                continue  # lost meanwhile: its subscriptions went with it
            try:
                shard.connection.sunsubscribe(names)
            except OSError as exc:
                self._lost(shard, exc)
        return [None] * len(leaving)

    async def _send_subscribes(self, channels: list[bytes]) -> list[Any]:
        """`SSUBSCRIBE` a tick's channels (one command per node, and slot), then wait for
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
            groups[node, self._command_slot(channel)].append(i)
        waits: list[tuple[int, asyncio.Future[None]]] = []
        for (node, _), members in groups.items():
            shard = self._shards.get(node)
            if shard is None:  # lost while an earlier slot's command was sent
                for i in members:
                    replies[i] = BrokerUnavailable("no subscription connection to its shard")
                continue
            names = [channels[i] for i in members]
            for i, name in zip(members, names, strict=True):
                confirmed = shard.confirming.get(name)
                if confirmed is None:
                    confirmed = shard.confirming[name] = asyncio.get_running_loop().create_future()
                shard.channels.add(name)
                self._orphans.discard(name)
                waits.append((i, confirmed))
            try:
                shard.connection.ssubscribe(names)
            except OSError as exc:
                self._lost(shard, exc)
        if waits:
            with anyio.move_on_after(SUBSCRIBE_TIMEOUT):
                await asyncio.wait([f for _, f in waits])
        for i, confirmed in waits:
            if not confirmed.done():
                replies[i] = BrokerUnavailable("subscription not confirmed")
            elif confirmed.exception() is not None:
                replies[i] = confirmed.exception()
        return replies

    def _command_slot(self, channel: bytes) -> int:
        """What one `SSUBSCRIBE` must share: on a cluster the slot (a command naming
        channels of several slots is refused), on one server nothing (it never checks)."""
        return 0 if self._connector.cluster is None else key_slot(channel)

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
                    log.warning(
                        "broker_feed_repair_failed", error=type(exc).__name__, detail=str(exc)
                    )
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
            async with translated_outage():  # no node answers: RedisClusterException
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
        url = plain_url(self._connector.url)
        if node != SINGLE_NODE:
            host, _, port = node.rpartition(":")
            url = node_url(url, host, int(port))
        shard = _Shard(node=node)
        try:
            shard.connection = await SubscriptionConnection.open(
                url,
                on_push=partial(self._dispatch, shard),
                on_error=partial(self._refused, shard),
                on_lost=partial(self._lost, shard),
                subscribe=[CONTROL_CHANNEL],
                timeout=SUBSCRIBE_TIMEOUT,
            )
        except (TimeoutError, ssl.SSLError) as exc:
            where = node if node != SINGLE_NODE else address_of(url)
            detail = await failed_open(url, where, exc, SUBSCRIBE_TIMEOUT)
            raise BrokerUnavailable(detail) from exc
        self._shards[node] = shard
        assert self._tg is not None
        self._tg.start_soon(self._probe, shard)
        log.info("broker_shard_connected", node=node)

    async def _probe(self, shard: _Shard) -> None:
        """A connection quiet for an interval gets a PING; quiet for another, it is
        taken as dead (a peer gone without a word, a NAT that forgot it)."""
        heard, pinged = -1, False
        with shard.scope:
            while True:
                await anyio.sleep(self._probe_interval)
                if shard.heard != heard:
                    heard, pinged = shard.heard, False
                    continue
                if pinged:
                    self._lost(shard, TimeoutError("the connection stopped answering"))
                    return
                pinged = True
                try:
                    shard.connection.ping()
                except OSError as exc:
                    self._lost(shard, exc)
                    return

    def _dispatch(self, shard: _Shard, push: list[Any]) -> None:
        """One reply of `shard`'s connection, as it is read (the hot path: no await)."""
        shard.heard += 1
        kind, channel = push[0], push[1]
        if kind == b"smessage":
            if self._on_message is not None:
                self._on_message(push[2], channel in PARTITION_CHANNELS)
        elif kind == b"ssubscribe":
            confirmed = shard.confirming.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == b"sunsubscribe":
            if channel in shard.leaving:
                shard.leaving.discard(channel)
            elif channel in shard.channels:
                # Not asked for: its slot moved to another master.
                self._moved(shard, [channel])

    def _refused(self, shard: _Shard, error: ErrorReply) -> None:
        """An error reply (`MOVED`: the slot map was stale): the channels being subscribed
        in its slot (in every slot when it names none) are subscribed at their owner."""
        shard.heard += 1
        slot = error.slot
        refused = [c for c in shard.confirming if slot is None or key_slot(c) == slot]
        if slot is not None:
            # Not subscribed there either: a `SUNSUBSCRIBE` of them is answered `MOVED` too.
            shard.leaving -= {c for c in shard.leaving if key_slot(c) == slot}
            log.info("broker_subscribe_redirected", node=shard.node, channels=len(refused))
        else:
            log.warning("broker_subscribe_refused", node=shard.node, error=str(error))
        self._moved(shard, refused)

    def _moved(self, shard: _Shard, channels: list[bytes]) -> None:
        """`channels` are no longer subscribed on `shard`: subscribe them at their owner."""
        if not channels:
            return  # e.g. a `SUNSUBSCRIBE` answered `MOVED`: nothing was lost
        self.feed_epoch += 1
        for channel in channels:
            shard.channels.discard(channel)
            confirmed = shard.confirming.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_exception(BrokerUnavailable("the channel's slot moved"))
            if channel in self._wanted:
                self._orphans.add(channel)
        self._repair_needed.set()

    def _lost(self, shard: _Shard, exc: BaseException) -> None:
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
        shard.scope.cancel()  # its probe
        shard.connection.abort()

    async def _close(self, shard: _Shard) -> None:
        self._shards.pop(shard.node, None)
        shard.scope.cancel()
        await shard.connection.aclose()


def _channels(job_id: str | None) -> list[bytes]:
    if job_id is None:
        return sorted(PARTITION_CHANNELS)
    return [keys.job_channel(job_id).encode()]
