"""The async tracker: how pipeline code publishes one job's progress.

    async with Tracker.connect("redis://127.0.0.1:6379/0", "job-42", pipeline="pdf") as job:
        await job.stage("extract")
        await job.advance(0.5, "Page 10 of 20")
        await job.complete({"pages": 20})

How it keeps its promises (docs/api.md §2, docs/publishing.md):

- Calls never wait for the network. Each is checked at once (`ValueError` at the call
  site, see `pubsub.updates`), queued in a `Backlog`, and published by one sender task
  that the tracker's task group owns. A slow or absent broker never slows the pipeline.
- Coalescing: the sender publishes at most once per `coalesce` window (50 ms by default),
  except that stage changes and end states go out at once. Queued updates merge with
  chunk increments summed (`pubsub.coalesce`), so the final state is exact.
- Outages: a publish failing with `BrokerUnavailable` goes back to the front of the queue
  and the sender retries with backoff (`pubsub.backoff`); calls keep queueing, and the
  state is flushed when the broker is back. The only place that absorbs outages
  (STYLE.md). With `raise_on_outage=True` calls raise while the broker is known to be
  down; what they asked for is still kept and flushed later.
- Auto-advance (`pubsub.autoadvance`) runs on the sender's timer until the next update.
- Cancel requests (docs/api.md §9, `pubsub.cancel`): learnt from each publish's answer,
  or by one read per `cancel_poll_interval` while the job is silent, on the sender's
  timer. `cancel_requested` then reads true; with `raise_on_cancel=True` every later call
  but `cancel`/`fail`/`complete` raises `JobCancelled`, and `async with` left with
  `JobCancelled` records the job `cancelled`.
- Leaving `async with` flushes (waiting at most `close_timeout` s), then cancels the
  sender and closes the connection the tracker opened: nothing is left running.

A tracker made without a job id checks every call and does nothing else, so pipeline
code needs no `if job_id:` branches.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from types import TracebackType
from typing import Any, Final

import anyio
import structlog
from anyio.abc import TaskGroup
from msgspec import UNSET

from pubsub.autoadvance import AutoAdvance
from pubsub.backoff import Outage
from pubsub.broker import UpdateId, open_broker, redacted_url, unreachable_hint
from pubsub.cancel import DEFAULT_CANCEL_POLL_SECONDS, CancelWatch, check_poll_interval
from pubsub.coalesce import Backlog
from pubsub.errors import (
    BrokerUnavailable,
    InvalidUpdate,
    JobCancelled,
    JobNotFound,
    JobTerminal,
    PayloadTooLarge,
    ReplicasUnconfirmed,
)
from pubsub.events import Snapshot, Update, is_valid_job_id
from pubsub.exits import fails_job
from pubsub.pipelines import PipelineRegistry
from pubsub.store import DEFAULT_HISTORY, DEFAULT_RETENTION, JobStore
from pubsub.updates import UpdateBuilder

log = structlog.get_logger(__name__)

# asyncio's own clock and events, not anyio's: the library runs on asyncio (redis.asyncio,
# the sync tracker's loop), and anyio looks up the running backend on every call, a
# tenth of a publish's CPU in the bench's profile (docs/performance.md: library publish).
_now = time.monotonic

DEFAULT_COALESCE_SECONDS: Final = 0.05
DEFAULT_CLOSE_TIMEOUT: Final = 10.0


class Tracker:
    """Publishes the progress of one job; enter it with `async with` before calling."""

    def __init__(
        self,
        store: JobStore | None,
        job_id: str | None,
        *,
        pipeline: str | None = None,
        coalesce: float = DEFAULT_COALESCE_SECONDS,
        raise_on_outage: bool = False,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        raise_on_cancel: bool = False,
        cancel_poll_interval: float | None = DEFAULT_CANCEL_POLL_SECONDS,
    ) -> None:
        """Bind a tracker to one job of `store`.

        Args:
        store: where the job lives; None (or a None `job_id`) makes an untracked tracker.
        job_id: the job to publish; None accepts every call and does nothing.
        pipeline: the job's pipeline name, to check stage keys at the call site.
        coalesce: seconds within which consecutive updates merge into one publish.
        raise_on_outage: raise `BrokerUnavailable` from calls while the broker is down.
        close_timeout: how long leaving `async with` waits for queued updates to go out.
        raise_on_cancel: once the job was asked to cancel, calls raise `JobCancelled`.
        cancel_poll_interval: seconds of silence after which the tracker reads the job to
            learn of a cancel request (one read per interval; None: only from publishes).
        """
        if job_id is not None and not is_valid_job_id(job_id):
            raise ValueError(f"job id {job_id!r} must be 1-128 letters, digits or ._:-")
        if not coalesce >= 0 or not close_timeout >= 0:
            raise ValueError("coalesce and close_timeout must be numbers of seconds, from 0")
        registry = store.pipelines if store is not None else PipelineRegistry()
        self._builder = UpdateBuilder(registry.resolve(pipeline))
        self.job_id = job_id
        self.pipeline = pipeline
        self._store = store if job_id is not None else None
        self._owns_broker = False
        # Named in the outage warnings, so that a wrong URL is found from the first line.
        self._broker_url: str | None = None
        self._coalesce = coalesce
        self._raise_on_outage = raise_on_outage
        self._close_timeout = close_timeout
        self._backlog = Backlog()
        # Names this tracker's updates to the broker, so that a retry of one in doubt is
        # applied once (`pubsub.broker.UpdateId`).
        self._writer = secrets.token_hex(8)
        self._task_group: TaskGroup | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._closed = False
        self._ended = False
        self._publishing = False
        self._flush_now = False
        self._last_publish = -math.inf
        self._outage = Outage()
        self._last_failure: BrokerUnavailable | None = None
        self._auto: AutoAdvance | None = None
        self._raise_on_cancel = raise_on_cancel
        self._cancel = CancelWatch(interval=check_poll_interval(cancel_poll_interval))
        self.snapshot: Snapshot | None = None
        """The job as the hub last acknowledged it (None before the first publish)."""

    @classmethod
    def connect(
        cls,
        broker_url: str,
        job_id: str | None,
        *,
        pipeline: str | None = None,
        pipelines: PipelineRegistry | None = None,
        history: int = DEFAULT_HISTORY,
        retention: int = DEFAULT_RETENTION,
        coalesce: float = DEFAULT_COALESCE_SECONDS,
        raise_on_outage: bool = False,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        raise_on_cancel: bool = False,
        cancel_poll_interval: float | None = DEFAULT_CANCEL_POLL_SECONDS,
        replicas: int = 0,
    ) -> Tracker:
        """A tracker with a broker connection of its own, closed when it exits.

        `broker_url` is any URL of `pubsub.open_broker` (one Redis, any node of a
        cluster). `history` and `retention` should match the hub's (the defaults do):
        whoever commits the final update sets how long the finished job is kept.
        `replicas`: an update counts as published only once this many replicas hold it
        (docs/api.md §8); until then it is kept and retried like one sent during an
        outage. The other options are the constructor's.
        """
        if job_id is None:
            # Untracked: calls are still checked against the pipeline, never published.
            store = JobStore(open_broker("memory://"), pipelines)
        else:
            broker = open_broker(broker_url, replicas=replicas)
            store = JobStore(broker, pipelines, history=history, retention=retention)
        tracker = cls(
            store,
            job_id,
            pipeline=pipeline,
            coalesce=coalesce,
            raise_on_outage=raise_on_outage,
            close_timeout=close_timeout,
            raise_on_cancel=raise_on_cancel,
            cancel_poll_interval=cancel_poll_interval,
        )
        tracker._owns_broker = True
        tracker._broker_url = broker_url
        return tracker

    @property
    def outage(self) -> bool:
        """True while the broker is unreachable and updates wait to be flushed."""
        return self._outage.ongoing

    @property
    def cancel_requested(self) -> bool:
        """True once the tracker learnt that someone asked to cancel the job."""
        return self._cancel.requested

    @property
    def ended(self) -> bool:
        """True once the job reached an end state; later calls are ignored."""
        return self._ended

    async def start(self, message: str | None = None) -> None:
        """Mark the job running."""
        self._queue(self._builder.start(message))

    async def stage(
        self, key: str, message: str | None = None, *, expected_seconds: float | None = None
    ) -> None:
        """Enter a stage: progress jumps to its start, then auto-advances if it has a duration.

        Args:
            key: a stage of the tracker's pipeline (`ValueError` otherwise).
            expected_seconds: how long the stage should take; default: the pipeline's.
        """
        update, expected = self._builder.stage(key, message, expected_seconds)
        self._queue(update, auto_advance=expected)

    async def advance(self, fraction: float, message: str | None = None) -> None:
        """Progress within the current stage, from 0 to 1."""
        self._queue(self._builder.advance(fraction, message))

    async def set(
        self, percent: float, message: str | None = None, *, eta_seconds: float | None = None
    ) -> None:
        """Set the overall percent explicitly (0-100).

        Args:
            eta_seconds: seconds left by the caller's own estimate (tqdm's rate, say),
                published instead of the hub's average-rate ETA (docs/api.md §1).
        """
        self._queue(self._builder.set(percent, message, eta_seconds))

    async def message(self, text: str) -> None:
        """Say what is happening, without moving progress."""
        self._queue(self._builder.message(text))

    async def heartbeat(self) -> None:
        """Tell watchers the job is alive (it is not stalled)."""
        self._queue(self._builder.heartbeat())

    async def meta(self, **values: Any) -> None:
        """Merge small metadata into the job's `meta` (8 KiB encoded at most)."""
        self._queue(self._builder.meta(values))

    async def chunks(self, total: int) -> None:
        """Start `total` chunks of work (entering the pipeline's chunk stage if needed)."""
        self._queue(self._builder.chunks(total))

    async def chunk_done(
        self, index: int, page_start: int | None = None, page_end: int | None = None
    ) -> None:
        """Chunk `index` (from 0) is done; counts stay exact across worker processes."""
        self._queue(self._builder.chunk_done(index, page_start, page_end))

    async def chunk_failed(
        self, index: int, page_start: int | None, page_end: int | None, error: str
    ) -> None:
        """Chunk `index` failed: `Chunk {index+1} (pages a-b) failed: {error}`."""
        self._queue(self._builder.chunk_failed(index, page_start, page_end, error))

    async def merge(self, message: str | None = None) -> None:
        """Enter the pipeline's merge stage."""
        update, expected = self._builder.merge(message)
        self._queue(update, auto_advance=expected)

    async def retrying(self, attempt: int, max_attempts: int, reason: str | None = None) -> None:
        """About to retry: attempt `attempt` of `max_attempts`; progress is kept."""
        self._queue(self._builder.retrying(attempt, max_attempts, reason))

    async def complete(self, result: Any = None, message: str | None = None) -> None:
        """Finish the job, with an optional text or JSON result (1 MiB at most)."""
        self._queue(self._builder.complete(result, message), ends=True)

    async def fail(self, error: str) -> None:
        """Fail the job with a human error sentence."""
        self._queue(self._builder.fail(error), ends=True)

    async def cancel(self, message: str | None = None) -> None:
        """Cancel the job."""
        self._queue(self._builder.cancel(message), ends=True)

    async def flush(self) -> None:
        """Wait until every call so far is published (through an outage, if there is one)."""
        if self._store is None:
            return
        self._require_open()
        while len(self._backlog) or self._publishing:
            self._idle = asyncio.Event()
            self._flush_now = True
            self._wake()
            await self._idle.wait()

    async def aclose(self) -> None:
        """Publish what is queued (waiting at most `close_timeout` s), then stop the sender."""
        if self._store is None or self._closed or self._task_group is None:
            return
        self._auto = None
        # Shielded: a cancelled pipeline still gets its last state out, within the timeout.
        with anyio.move_on_after(self._close_timeout, shield=True):
            await self.flush()
            await self._forget_writer()
        self._closed = True
        if len(self._backlog):
            log.error(
                "job_updates_lost",
                job_id=self.job_id,
                updates=self._backlog.clear(),
                **self._broker_context(),
            )
        self._task_group.cancel_scope.cancel()

    async def __aenter__(self) -> Tracker:
        if self._store is None:
            return self
        if self._task_group is not None:
            raise RuntimeError("a Tracker can be entered only once")
        self._wakeup = asyncio.Event()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._cancel.start(_now())
        task_group.start_soon(self._send_forever)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # Only errors fail the job, and not a framework's retry (`pubsub.exits`).
            # A pipeline stopping on a cancel request did what was asked: it is cancelled.
            if fails_job(exc) and not self._ended and not self._closed:
                if isinstance(exc, JobCancelled):
                    await self.cancel()
                else:
                    await self.fail(str(exc) or type(exc).__name__)
            await self.aclose()
        finally:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
                await self._task_group.__aexit__(None, None, None)
            if self._owns_broker and self._store is not None:
                with anyio.CancelScope(shield=True):
                    await self._store.broker.aclose()

    def _queue(
        self, update: Update, *, auto_advance: float | None = None, ends: bool = False
    ) -> None:
        """Queue a checked update; a stage with a duration starts auto-advance."""
        if self._store is None:
            return
        self._require_open()
        if self._ended:
            log.warning("tracker_call_after_end", job_id=self.job_id)
            return
        if self._raise_on_cancel and self._cancel.requested and not ends:
            assert self.job_id is not None
            raise JobCancelled(self.job_id)
        if _moves(update):
            # Real progress (or a new stage, or a status) ends the current auto-advance.
            self._auto = None
        if auto_advance is not None:
            now = _now()
            self._auto = AutoAdvance(started=now, expected=auto_advance, next_tick=now)
        self._ended = self._ended or ends
        self._backlog.add(update)
        self._wake()
        if self._raise_on_outage and self.outage:
            raise BrokerUnavailable("the update is kept and will be published when it is back")

    async def _forget_writer(self) -> None:
        """Once everything is published, the job need not keep this tracker's update
        number: no retry of it can come after close (`pubsub.broker.UpdateId`)."""
        assert self._store is not None and self.job_id is not None
        if not self._backlog.numbered or len(self._backlog):
            return
        try:
            await self._store.forget_writer(self.job_id, self._writer)
        except BrokerUnavailable:
            pass  # kept until the job expires: a few bytes

    def _require_open(self) -> None:
        if self._task_group is None or self._closed:
            raise RuntimeError("use the tracker inside `async with tracker:` (it is not open)")

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _send_forever(self) -> None:
        """The sender: publishes the backlog when due and drives auto-advance."""
        while True:
            delay = self._next_due() - _now()
            if delay > 0:
                assert self._wakeup is not None
                # asyncio.timeout, not anyio.move_on_after: see `_now` (one per publish).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if math.isinf(delay) else delay):
                        await self._wakeup.wait()
            if self._wakeup is not None and self._wakeup.is_set():
                self._wakeup = asyncio.Event()
            now = _now()
            self._tick_auto_advance(now)
            if len(self._backlog) and now >= self._flush_due():
                await self._publish_backlog()
            elif not len(self._backlog) and not self._ended and self._cancel.due(now):
                await self._read_cancel_request()
            elif not len(self._backlog) and not self._publishing and self._idle is not None:
                self._idle.set()

    def _flush_due(self) -> float:
        if self._outage.ongoing:
            return self._outage.retry_at
        if self._flush_now or self._backlog.urgent:
            return -math.inf
        return self._last_publish + self._coalesce

    def _next_due(self) -> float:
        due = self._flush_due() if len(self._backlog) else math.inf
        if not len(self._backlog) and not self._ended:
            # A publish is an answer too: the silent-job read is only for silence.
            due = min(due, self._cancel.next_due)
        if self._auto is not None:
            due = min(due, self._auto.next_tick)
        return due

    def _tick_auto_advance(self, now: float) -> None:
        fraction = self._auto.tick(now) if self._auto is not None else None
        if fraction is not None:
            self._backlog.add(Update(stage_progress=fraction))

    async def _publish_backlog(self) -> None:
        assert self._store is not None and self.job_id is not None
        self._publishing = True
        try:
            # Only what was queued when the flush began: updates queued meanwhile wait for
            # the next window, or the sender would publish as fast as the broker answers.
            for _ in range(len(self._backlog)):
                entry = self._backlog.take()
                assert entry is not None
                try:
                    snapshot = await self._store.publish(
                        self.job_id,
                        entry.update,
                        pipeline=self.pipeline,
                        update_id=UpdateId(self._writer, entry.number),
                    )
                    self.snapshot = snapshot
                except BrokerUnavailable as exc:
                    self._backlog.put_back(entry)
                    self._outage_began(exc)
                    return
                except JobTerminal as exc:
                    # Ended elsewhere (cancelled over HTTP, say): nothing more to say.
                    log.warning("job_ended_elsewhere", job_id=self.job_id, status=exc.status)
                    self._ended, self._auto = True, None
                    self._backlog.clear()
                    return
                except (InvalidUpdate, PayloadTooLarge) as exc:
                    # Checked at the call site already; the hub knows something we did not
                    # (another writer's chunk total, a pipeline it lacks). Drop just this one.
                    log.error("job_update_rejected", job_id=self.job_id, reason=str(exc))
                else:
                    # At once, not after the backlog: a reader may see this snapshot
                    # before the loop ends, and calls made then must not raise.
                    self._outage_ended()
                    self._heard(snapshot)
            self._outage_ended()  # the broker answered, even if it rejected every update
            self._flush_now = False
        finally:
            self._publishing = False
            self._last_publish = _now()
            if self._idle is not None and not len(self._backlog):
                self._idle.set()

    async def _read_cancel_request(self) -> None:
        """The silent job's one read per interval: has anyone asked to cancel it?"""
        assert self._store is not None and self.job_id is not None
        try:
            snapshot = await self._store.get(self.job_id)
        except (BrokerUnavailable, JobNotFound):
            # Nothing to learn now (the broker is away, the job not yet published or
            # deleted); look again after the interval.
            self._cancel.start(_now())
            return
        self._heard(snapshot)

    def _heard(self, snapshot: Snapshot) -> None:
        if self._cancel.heard(snapshot, _now()):
            log.info("job_cancel_requested", job_id=self.job_id, seq=snapshot.seq)

    def _outage_began(self, exc: BrokerUnavailable) -> None:
        self._last_failure = exc
        if self._outage.failed(_now()):
            queued = len(self._backlog)
            log.warning(
                "broker_unavailable",
                job_id=self.job_id,
                **self._broker_context(),
                error=str(exc),
                queued=queued,
            )

    def _broker_context(self) -> dict[str, str]:
        """The broker's address and what to check, for the outage log lines."""
        url = self._broker_url
        if url is None:
            return {}
        failure = self._last_failure
        if isinstance(failure, ReplicasUnconfirmed):
            check = failure.hint
        else:
            check = unreachable_hint(url)
        return {"broker": redacted_url(url), "check": check}

    def _outage_ended(self) -> None:
        lasted = self._outage.succeeded(_now())
        if lasted is not None:
            log.info("broker_restored", job_id=self.job_id, seconds_down=round(lasted, 3))


def _moves(update: Update) -> bool:
    """True when an update moves progress or changes stage or status."""
    moving = (update.stage, update.stage_progress, update.progress, update.chunks, update.status)
    return any(value is not UNSET for value in moving)
