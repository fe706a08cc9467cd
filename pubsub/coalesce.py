"""Coalescing: queued updates of one job merged into as few publishes as give the same state.

A publisher emitting thousands of updates per second must not flood the broker (docs/publishing.md),
and during an outage only the latest state needs keeping. So each queued update joins the
newest queued one when publishing the pair as one update ends in the same job state as
publishing them in turn; otherwise it starts a new entry. Entries start only at stage and
status changes, so the backlog stays a handful of entries however long an outage lasts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from msgspec import UNSET, UnsetType

from pubsub.events import ChunksPatch, JobStatus, Update


@dataclass(slots=True)
class Pending:
    """One queued publish and whether it must go out without waiting for the window."""

    update: Update
    urgent: bool
    number: int = 0
    """Its number among the backlog's publishes, from its first attempt on (0: not yet
    tried). An entry tried and put back is in doubt (it may be stored): it is retried as
    it was, under the same number, and nothing merges into it (`pubsub.broker.UpdateId`)."""


class Backlog:
    """The updates a tracker has yet to publish, oldest first."""

    def __init__(self) -> None:
        self._entries: deque[Pending] = deque()
        self._numbered = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def numbered(self) -> int:
        """How many publishes have been numbered (tried at least once)."""
        return self._numbered

    @property
    def urgent(self) -> bool:
        """True when a stage change or an end state waits: those go out at once."""
        return any(entry.urgent for entry in self._entries)

    def add(self, update: Update) -> None:
        """Queue `update`, merged into the newest entry when that gives the same state."""
        urgent = update.stage is not UNSET or update.status is not UNSET
        newest = self._entries[-1] if self._entries else None
        if newest is not None and not newest.number and combinable(newest.update, update):
            newest.update = combine(newest.update, update)
            newest.urgent = newest.urgent or urgent
        else:
            self._entries.append(Pending(update=update, urgent=urgent))

    def take(self) -> Pending | None:
        """Remove and return the oldest entry, numbered (None when empty)."""
        if not self._entries:
            return None
        entry = self._entries.popleft()
        if not entry.number:
            self._numbered += 1
            entry.number = self._numbered
        return entry

    def put_back(self, entry: Pending) -> None:
        """Return an entry that could not be published to the front of the queue."""
        self._entries.appendleft(entry)

    def clear(self) -> int:
        """Drop everything queued; returns how many entries were dropped."""
        dropped = len(self._entries)
        self._entries.clear()
        return dropped


def combinable(first: Update, second: Update) -> bool:
    """True when `second` can be folded into `first` without changing the resulting state.

    The hub never lets progress go back while a job runs, so publishing two updates in
    turn keeps the higher of the two; merged, only the later would be applied. Merging is
    therefore limited to updates that move progress the same way (a fraction, a percent,
    chunk counts), where the merged value is simply the higher one or the summed counts.
    A stage or status change starts its own entry, and so does a reset of the chunk
    counters. After `retrying` only the next update may lower progress, so nothing joins
    a retry, and progress does not join a status change (`start` after `retrying` ends
    that allowance before any progress arrives).
    """
    if second.stage is not UNSET or second.status is not UNSET:
        return False
    if first.status is JobStatus.RETRYING:
        return False
    if isinstance(second.chunks, ChunksPatch) and second.chunks.total is not UNSET:
        return False
    first_source, second_source = _progress_source(first), _progress_source(second)
    if second_source is None:
        return True
    if first.status is not UNSET and first_source is None:
        return False
    return first_source is None or first_source == second_source


def combine(first: Update, second: Update) -> Update:
    """One update with the effect of publishing `first` then `second` (see `combinable`)."""
    if second.message is not UNSET:
        message: Any = second.message
    elif second.chunks is not UNSET:
        message = UNSET  # the hub writes "Processing chunk n/total" from the counts
    else:
        message = first.message
    return Update(
        status=first.status,
        stage=first.stage,
        stage_progress=_highest(first.stage_progress, second.stage_progress),
        progress=_highest(first.progress, second.progress),
        message=message,
        chunks=_combine_chunks(first.chunks, second.chunks),
        error=_newest(first.error, second.error),
        result=_newest(first.result, second.result),
        meta=_combine_meta(first.meta, second.meta),
        heartbeat=True if first.heartbeat is True or second.heartbeat is True else UNSET,
        attempt=_newest(first.attempt, second.attempt),
        max_attempts=_newest(first.max_attempts, second.max_attempts),
        # A worker's own ETA belongs to the progress it came with: a later move of
        # progress without one leaves the estimate to the hub (docs/api.md §1).
        eta_seconds=second.eta_seconds
        if _progress_source(second) is not None
        else _newest(first.eta_seconds, second.eta_seconds),
    )


def _progress_source(update: Update) -> str | None:
    """How an update moves progress: by percent, by fraction of the stage, or by chunks."""
    if update.progress is not UNSET:
        return "percent"
    if update.stage_progress is not UNSET:
        return "fraction"
    if update.chunks is not UNSET:
        return "chunks"
    if update.stage is not UNSET:
        return "fraction"  # entering a stage puts progress at its fraction 0
    return None


def _highest(first: float | UnsetType, second: float | UnsetType) -> float | UnsetType:
    if isinstance(first, UnsetType):
        return second
    if isinstance(second, UnsetType):
        return first
    return max(first, second)


def _newest(first: Any, second: Any) -> Any:
    return first if second is UNSET else second


def _combine_meta(
    first: dict[str, Any] | UnsetType, second: dict[str, Any] | UnsetType
) -> dict[str, Any] | UnsetType:
    if isinstance(first, UnsetType):
        return second
    if isinstance(second, UnsetType):
        return first
    return {**first, **second}


def _combine_chunks(
    first: ChunksPatch | None | UnsetType, second: ChunksPatch | None | UnsetType
) -> ChunksPatch | None | UnsetType:
    if second is UNSET:
        return first
    if second is None or first is UNSET:
        return second
    if first is None:
        # Chunks were cleared, then patched: the patch applies to empty counters.
        return ChunksPatch(
            total=_or(second.total, 0),
            completed=_or(second.completed, 0) + _or(second.add_completed, 0),
            failed=_or(second.failed, 0) + _or(second.add_failed, 0),
            current=_or(second.current, None),
        )
    assert isinstance(first, ChunksPatch) and isinstance(second, ChunksPatch)
    completed, add_completed = _counter(
        first.completed, first.add_completed, second.completed, second.add_completed
    )
    failed, add_failed = _counter(first.failed, first.add_failed, second.failed, second.add_failed)
    return ChunksPatch(
        total=_newest(first.total, second.total),
        completed=completed,
        failed=failed,
        current=_newest(first.current, second.current),
        add_completed=add_completed,
        add_failed=add_failed,
    )


def _counter(
    first_abs: int | UnsetType,
    first_add: int | UnsetType,
    second_abs: int | UnsetType,
    second_add: int | UnsetType,
) -> tuple[int | UnsetType, int | UnsetType]:
    """Absolute value and increment of one chunk counter after two patches."""
    if not isinstance(second_abs, UnsetType):
        return second_abs, second_add
    if isinstance(first_add, UnsetType) and isinstance(second_add, UnsetType):
        return first_abs, UNSET
    # Increments add up: several chunks reported within one window are all counted.
    return first_abs, _or(first_add, 0) + _or(second_add, 0)


def _or(value: Any, default: Any) -> Any:
    return default if value is UNSET else value
