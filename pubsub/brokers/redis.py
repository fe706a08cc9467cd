"""Redis (or Valkey) broker: Lua scripts for atomic commits, one pub/sub connection per process.

Every key of a job carries the job id as a hash tag (`progress:{id}:...`) so that a job's
keys share one Redis Cluster slot and the commit script stays a single atomic step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Final, Generic, TypeVar, cast

import anyio
import hiredis
import redis.asyncio as redis
import structlog
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pubsub.broker import Commit, MilestoneStep, OnMessage, OnReconnect
from pubsub.errors import BrokerUnavailable

log = structlog.get_logger(__name__)

INDEX_KEY: Final = "progress:jobs"
INDEX_KEY_BYTES: Final = INDEX_KEY.encode()
CHANNEL_PREFIX: Final = "progress:events:"
EVERY_JOB_PATTERN: Final = CHANNEL_PREFIX + "*"
# Keeps the subscription connection subscribed (and so readable) while no job is.
CONTROL_CHANNEL: Final = "progress:control"
CONTROL_CHANNEL_BYTES: Final = CONTROL_CHANNEL.encode()
FEED_READ_BYTES: Final = 256 * 1024
FEED_HEALTH_INTERVAL: Final = 30.0
SUBSCRIBE_TIMEOUT: Final = 5.0
COMMAND_CONNECT_TIMEOUT: Final = 2.0
COMMAND_TIMEOUT: Final = 3.0
RECONNECT_BACKOFF_MIN: Final = 0.05
RECONNECT_BACKOFF_MAX: Final = 1.0
POOL_SIZE: Final = 64
POOL_WAIT: Final = 5.0
OUTAGE_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, OSError)

T = TypeVar("T")


def job_key(job_id: str) -> str:
    """Hash holding a job's `seq` and `record`."""
    return f"progress:{{{job_id}}}:job"


def history_key(job_id: str) -> str:
    """Capped list of a job's retained snapshots, oldest first."""
    return f"progress:{{{job_id}}}:history"


def result_key(job_id: str) -> str:
    """A job's stored result."""
    return f"progress:{{{job_id}}}:result"


def milestones_key(job_id: str) -> str:
    """Hash of the milestone-gate cursors of a job's clients."""
    return f"progress:{{{job_id}}}:milestones"


def channel(job_id: str | None) -> str:
    """The pub/sub channel of a job (None: the pattern of every job's channel)."""
    return EVERY_JOB_PATTERN if job_id is None else CHANNEL_PREFIX + job_id


def _job_keys(job_id: str) -> list[str]:
    return [job_key(job_id), history_key(job_id), result_key(job_id), milestones_key(job_id)]


def _script(name: str) -> str:
    return resources.files("pubsub").joinpath("lua", name).read_text(encoding="utf-8")


@asynccontextmanager
async def _translated_outage() -> AsyncIterator[None]:
    """Turn redis-py's connection failures into the domain's `BrokerUnavailable`."""
    try:
        yield
    except OUTAGE_ERRORS as exc:
        raise BrokerUnavailable(type(exc).__name__) from exc


class _TickBatcher(Generic[T]):
    """Calls made in the same tick of the event loop share one pipelined round trip.

    The first call of a tick starts a sender task, which runs from the next tick on:
    by then every concurrent caller (publishers, HTTP requests, polls) has joined the
    batch. It sends the whole batch with `send` and hands each caller its own reply, or
    the round trip's failure. A task, not the first caller, so that a caller cancelled
    meanwhile takes nobody's reply with it. The pool checkout and the socket write are
    then paid once per batch (issue 6: polling, publish).
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[list[Any]]]) -> None:
        self._send = send
        self._batch: list[tuple[T, asyncio.Future[Any]]] | None = None
        self._senders: set[asyncio.Task[None]] = set()  # referenced until done

    async def call(self, item: T) -> Any:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        if self._batch is not None:
            self._batch.append((item, reply))  # the sender has not taken the batch yet
        else:
            self._batch = [(item, reply)]
            sender = loop.create_task(self._send_batch())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        async with _translated_outage():
            return await reply

    async def _send_batch(self) -> None:
        batch, self._batch = self._batch or [], None
        try:
            replies = await self._send([item for item, _ in batch])
        except Exception as exc:
            for _, reply in batch:
                if not reply.done():  # done: its caller was cancelled meanwhile
                    reply.set_exception(exc)
            return
        except BaseException:  # the sender itself cancelled (the loop shutting down)
            for _, reply in batch:
                reply.cancel()
            raise
        for (_, reply), value in zip(batch, replies, strict=True):
            if reply.done():
                continue
            if isinstance(value, Exception):
                reply.set_exception(value)
            else:
                reply.set_result(value)


def _command(*parts: bytes) -> bytes:
    """One command in the Redis protocol (RESP), packed by hand for the hot paths."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError)


def _first(replies: Iterator[Any]) -> Any:
    """The next reply, skipping the index write sent after it."""
    reply = next(replies)
    next(replies)
    return reply


class RedisBroker:
    """A `Broker` on one Redis-compatible server shared by every hub and worker."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.feed_epoch = 0
        # One quick retry covers a pooled connection that died with a Redis restart; more,
        # with redis-py's default backoff (1 s, 2 s, 4 s), would hold every HTTP caller for
        # seconds in a real outage, where the contract wants a 503 at once (API.md §2).
        # The pool blocks rather than raising: redis-py's default async pool raises
        # MaxConnectionsError once 100 commands are in flight, which turned a burst of
        # stream connects away while Redis was fine (issue 6, bench fan-out).
        self._pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT,
            socket_connect_timeout=COMMAND_CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
        )
        self._client = redis.Redis(
            connection_pool=self._pool, retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1)
        )
        # The subscription connection gets no silent retries: an outage must surface
        # here, so that the listener resubscribes and resyncs every open stream.
        # RESP2 (redis-py's default): `_read_feed` parses pub/sub replies as arrays.
        self._feed_client = redis.Redis.from_url(
            url,
            socket_connect_timeout=COMMAND_CONNECT_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
        self._commit = self._client.register_script(_script("commit.lua"))
        self._delete = self._client.register_script(_script("delete.lua"))
        self._milestone = self._client.register_script(_script("milestone.lua"))
        self._subscribed: set[str | None] = set()
        self._confirmations: dict[bytes, anyio.Event] = {}
        self._pubsub: PubSub | None = None
        self._subscribe_lock = anyio.Lock()
        self._commits = _TickBatcher(self._send_commits)
        self._reads = _TickBatcher(self._send_reads)

    @property
    def feed_up(self) -> bool:
        return self._pubsub is not None

    async def load(self, job_id: str) -> bytes | None:
        return cast(bytes | None, await self._reads.call((job_key(job_id), "record")))

    async def load_seq(self, job_id: str) -> int | None:
        seq = cast(bytes | None, await self._reads.call((job_key(job_id), "seq")))
        return int(seq) if seq is not None else None

    async def _send_reads(self, fields: list[tuple[str, str]]) -> list[Any]:
        """HGET of each (key, field), in one round trip."""
        return await self._round_trip(
            [_command(b"HGET", key.encode(), name.encode()) for key, name in fields]
        )

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        """Send packed commands on one pooled connection and read their replies; an error
        reply is returned in its place, a connection failure raised.

        redis-py's pipeline spent a third of a publish's CPU packing arguments; the hot
        commands are packed by `_command` instead and only the connection is redis-py's.
        Not retried: a commit whose reply was lost may have been applied.
        """
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(b"".join(commands), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            # A reply may be half read: the connection is not fit for the next caller.
            await connection.disconnect()
            raise
        finally:
            await self._pool.release(connection)

    async def load_many(self, job_ids: Sequence[str]) -> list[bytes | None]:
        if not job_ids:
            return []
        async with _translated_outage():
            records = await self._send_reads([(job_key(job_id), "record") for job_id in job_ids])
        for record in records:
            if isinstance(record, Exception):
                raise record
        return cast(list[bytes | None], records)

    async def commit(self, commit: Commit) -> tuple[bool, bytes | None]:
        # Each commit of a batch is still its own atomic compare-and-set script.
        reply = await self._commits.call(commit)
        if reply[0] == 1:
            return True, None
        return False, reply[1] if len(reply) > 1 else None

    async def _send_commits(self, batch: list[Commit]) -> list[Any]:
        replies = await self._pipeline_commits(batch)
        missing = [c for c, r in zip(batch, replies, strict=True) if _is_noscript(r)]
        if missing:  # Redis restarted and forgot the script: load it, send those again
            await self._client.script_load(self._commit.script)
            for c, r in zip(missing, await self._pipeline_commits(missing), strict=True):
                replies[batch.index(c)] = r
        return replies

    async def _pipeline_commits(self, batch: list[Commit]) -> list[Any]:
        sha = self._commit.sha.encode()
        commands: list[bytes] = []
        for c in batch:
            keys = [key.encode() for key in _job_keys(c.job_id)]
            commands.append(
                _command(
                    b"EVALSHA",
                    sha,
                    b"%d" % len(keys),
                    *keys,
                    b"%d" % c.expected_seq,
                    c.record,
                    c.snapshot,
                    channel(c.job_id).encode(),
                    c.envelope,
                    b"%d" % c.ttl,
                    b"%d" % c.history_len,
                    c.result if c.result is not None else b"",
                )
            )
            if c.expected_seq == 0:
                # A new job also enters the index, in the same round trip.
                score = repr(c.created_at).encode()
                commands.append(_command(b"ZADD", INDEX_KEY_BYTES, score, c.job_id.encode()))
        replies = await self._round_trip(commands)
        # Keep only the scripts' replies (drop those of the index writes).
        it = iter(replies)
        return [next(it) if c.expected_seq else _first(it) for c in batch]

    async def history(self, job_id: str, count: int) -> list[bytes]:
        if count <= 0:
            return []
        async with _translated_outage():
            entries = cast(list[bytes], await self._client.lrange(history_key(job_id), -count, -1))
        return entries

    async def result(self, job_id: str) -> bytes | None:
        async with _translated_outage():
            stored = cast(bytes | None, await self._client.get(result_key(job_id)))
        return stored

    async def delete(self, job_id: str, envelope: bytes) -> bool:
        async with _translated_outage():
            existed = await self._delete(keys=_job_keys(job_id), args=[channel(job_id), envelope])
            await self._client.zrem(INDEX_KEY, job_id)
        return bool(existed)

    async def recent_jobs(self, start: int, stop: int) -> list[str]:
        async with _translated_outage():
            ids = cast(list[bytes], await self._client.zrevrange(INDEX_KEY, start, stop))
        return [job_id.decode() for job_id in ids]

    async def forget(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            async with _translated_outage():
                await self._client.zrem(INDEX_KEY, *job_ids)

    async def advance_milestone(
        self,
        job_id: str,
        client: str,
        milestones: Sequence[float],
        progress: float,
        max_clients: int,
    ) -> MilestoneStep:
        async with _translated_outage():
            reply = await self._milestone(
                keys=[milestones_key(job_id), job_key(job_id)],
                args=[client, repr(progress), max_clients, *(repr(m) for m in milestones)],
            )
        if reply[0] == -2:
            raise ValueError(f"too many milestone clients for this job (limit {max_clients})")
        if reply[0] == -1:
            return MilestoneStep(milestone=None, calls=0)
        milestone = float(reply[2]) if reply[0] == 1 else None
        return MilestoneStep(milestone=milestone, calls=int(reply[1]))

    async def ping(self) -> None:
        async with _translated_outage():
            await self._client.ping()

    async def listen(self, on_message: OnMessage, on_reconnect: OnReconnect) -> None:
        backoff, reconnecting = RECONNECT_BACKOFF_MIN, False
        while True:
            pubsub = self._feed_client.pubsub()
            try:
                await pubsub.subscribe(CONTROL_CHANNEL)
                async with self._subscribe_lock:
                    # Under the lock, so that a stream joining or leaving meanwhile is neither
                    # missed nor revived; streams may subscribe only once this is done.
                    for job_id in self._subscribed:
                        await self._send_subscribe(pubsub, job_id)
                    self._pubsub = pubsub
                if reconnecting:
                    log.info("broker_subscription_restored", jobs=len(self._subscribed))
                    await on_reconnect()
                backoff, reconnecting = RECONNECT_BACKOFF_MIN, False
                await self._read_feed(pubsub, on_message)
            except OUTAGE_ERRORS as exc:
                if not reconnecting:
                    log.warning("broker_subscription_lost", error=type(exc).__name__)
                reconnecting = True
            finally:
                # At once, before any wait: from here the feed is down (`feed_up`), and
                # what was learnt from it may be stale (`feed_epoch`).
                self._pubsub = None
                self.feed_epoch += 1
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)

    async def subscribe(self, job_id: str | None) -> None:
        async with self._subscribe_lock:
            pubsub = self._pubsub
            if pubsub is None:
                raise BrokerUnavailable("no subscription connection")
            key = channel(job_id).encode()
            confirmed = self._confirmations[key] = anyio.Event()
            try:
                async with _translated_outage():
                    await self._send_subscribe(pubsub, job_id)
                # Wait for Redis to confirm: only then is no later publish missed by a
                # reader that loads the snapshot next.
                with anyio.fail_after(SUBSCRIBE_TIMEOUT):
                    await confirmed.wait()
            except BaseException as exc:
                # The SUBSCRIBE may have reached Redis: take it back, or it leaks there.
                with anyio.CancelScope(shield=True):
                    await self._send_unsubscribe(pubsub, job_id)
                if isinstance(exc, TimeoutError):
                    raise BrokerUnavailable("subscription not confirmed") from None
                raise
            finally:
                self._confirmations.pop(key, None)
            self._subscribed.add(job_id)

    async def unsubscribe(self, job_id: str | None) -> None:
        async with self._subscribe_lock:
            self._subscribed.discard(job_id)
            pubsub = self._pubsub
            if pubsub is not None:
                # The listener resubscribes only what is still wanted after a reconnect.
                await self._send_unsubscribe(pubsub, job_id)

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._pool.aclose()  # a client given a pool does not close it
        await self._feed_client.aclose()

    @staticmethod
    async def _send_subscribe(pubsub: PubSub, job_id: str | None) -> None:
        if job_id is None:
            await pubsub.psubscribe(EVERY_JOB_PATTERN)
        else:
            await pubsub.subscribe(channel(job_id))

    @staticmethod
    async def _send_unsubscribe(pubsub: PubSub, job_id: str | None) -> None:
        """Best effort: with the connection gone, so is the subscription."""
        try:
            if job_id is None:
                await pubsub.punsubscribe(EVERY_JOB_PATTERN)
            else:
                await pubsub.unsubscribe(channel(job_id))
        except OUTAGE_ERRORS:
            log.debug("broker_unsubscribe_skipped", job_id=job_id)

    async def _read_feed(self, pubsub: PubSub, on_message: OnMessage) -> None:
        """Read the subscription connection until it fails.

        redis-py's `PubSub.get_message` costs 10 µs of CPU per message (health checks,
        retries, a dict per message); here the connection's bytes go straight to a
        hiredis parser, 0.9 µs a message (issue 6: many jobs, one message per event).
        redis-py still connects, authenticates and sends every command; only the
        reading is ours, and redis-py never reads this connection, so no byte is
        taken by both. A connection quiet for a health interval gets a PING; quiet
        for another, it is taken as dead (what redis-py's health check did).
        """
        connection = pubsub.connection
        stream = connection._reader if connection is not None else None
        if stream is None:
            raise RedisConnectionError("the subscription connection is not open")
        parser = hiredis.Reader()
        pinged = False
        while True:
            with anyio.move_on_after(FEED_HEALTH_INTERVAL) as quiet:
                data = await stream.read(FEED_READ_BYTES)
            if quiet.cancelled_caught:
                if pinged:
                    raise RedisTimeoutError("the subscription connection stopped answering")
                pinged = True
                await pubsub.ping()
                continue
            if not data:
                raise RedisConnectionError("the subscription connection was closed")
            pinged = False
            try:
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    self._dispatch(reply, on_message)
            except hiredis.ProtocolError as exc:
                raise RedisConnectionError(f"unreadable reply on the subscription: {exc}") from exc

    def _dispatch(self, reply: Any, on_message: OnMessage) -> None:
        """One RESP2 pub/sub reply: [b"message", channel, data], [b"pmessage", pattern,
        channel, data], [b"subscribe", channel, count], [b"pong", b""], ..."""
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind == b"message":
            if reply[1] != CONTROL_CHANNEL_BYTES:
                on_message(reply[2], False)
        elif kind == b"pmessage":
            on_message(reply[3], True)
        elif kind in (b"subscribe", b"psubscribe"):
            confirmed = self._confirmations.get(reply[1])
            if confirmed is not None:
                confirmed.set()
