"""tqdm's progress bar, also published to a job: `tqdm(iterable, tracker=job)` and `trange`.

    with SyncTracker.connect(url, job_id) as job:
        for page in tqdm(pages, tracker=job, desc="OCR"):
            recognise(page)
        job.complete()

What it publishes (docs/api.md §10): the percent (when tqdm knows the total), the message
`"{desc}: {n}/{total} ({rate} {unit}/s)"` (without a total, the count alone and no
percent), and `eta_seconds` from tqdm's own smoothed rate. Publishing is its own: it
counts the items itself and keeps going with `disable=True` or a bar that tqdm redraws
rarely; it calls the tracker at most once per `interval` (the tracker's coalescing
window by default), and the final state (the exact count) when the bar closes.

The loop is taken to be the job's work: it sets the job's percent. Pass
`advance_stage=True` when the loop is the work of the current pipeline stage, to move
progress within the stage instead (the hub then estimates the job's ETA itself).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from tqdm import tqdm as std_tqdm

from pubsub.errors import JobCancelled
from pubsub.publisher import DEFAULT_COALESCE_SECONDS
from pubsub.sync import SyncTracker

T = TypeVar("T")

__all__ = ["tqdm", "trange"]


if TYPE_CHECKING:
    _Bar = std_tqdm
else:
    # tqdm's class is generic in its stubs only; at run time it takes no type argument.
    class _Bar(std_tqdm, Generic[T]):
        pass


class tqdm(_Bar[T]):  # noqa: N801 - named like the class it stands in for
    """A `tqdm.tqdm` that also publishes its progress through a `SyncTracker`."""

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *args: Any,
        tracker: SyncTracker | None = None,
        advance_stage: bool = False,
        interval: float = DEFAULT_COALESCE_SECONDS,
        **kwargs: Any,
    ) -> None:
        """The arguments of `tqdm.tqdm`, plus where and how to publish.

        Args:
            tracker: the job's tracker; None draws the bar and publishes nothing.
            advance_stage: the loop is the current stage's work (`advance`), not the job's.
            interval: seconds between tracker calls while the loop runs.
        """
        if not interval >= 0:
            raise ValueError(f"interval must be a number of seconds from 0, got {interval}")
        self._tracker = tracker
        self._advance_stage = advance_stage
        self._interval = interval
        self._count = 0.0
        self._iterating = False
        self._started = time.monotonic()
        self._last_call = -float("inf")
        self._closed_publish = False
        super().__init__(cast(Iterable[T], iterable), *args, **kwargs)
        self._count = float(self.n)  # `initial`

    def __iter__(self) -> Iterator[T]:
        if self._tracker is None:
            yield from super().__iter__()
            return
        self._iterating = True
        try:
            for item in super().__iter__():
                yield item
                # Counted once the loop body is done with it, as tqdm counts.
                self._count += 1
                self._maybe_publish()
        finally:
            self._iterating = False

    def update(self, n: float | None = 1) -> bool | None:
        """Advance by `n` (manual use: `bar.update(5)`), publishing when due."""
        if not self._iterating and n:
            self._count += n  # inside `__iter__` the items are counted already
        drawn = super().update(n)
        if not self._iterating:
            self._maybe_publish()
        return drawn

    def reset(self, total: float | None = None) -> None:
        """Count again from 0 (tqdm's `reset`); the job's percent holds until the new count
        passes it, as progress never decreases while a job runs (docs/api.md §1)."""
        super().reset(total)
        self._count = 0.0
        self._started = time.monotonic()

    def close(self) -> None:
        """Close the bar and publish the exact final count (once)."""
        try:
            super().close()
        finally:
            if self._tracker is not None and not self._closed_publish:
                self._closed_publish = True
                # Closing runs in `finally` blocks (a loop left by `break` or an error) and
                # in `__del__`: a cancel request raises from the loop's next tracker call,
                # not from here, and a bar outliving its tracker (closed) says nothing.
                with contextlib.suppress(JobCancelled, RuntimeError):
                    self._publish()

    def _maybe_publish(self) -> None:
        now = time.monotonic()
        if now - self._last_call >= self._interval:
            self._last_call = now
            self._publish()

    def _publish(self) -> None:
        tracker = self._tracker
        if tracker is None or tracker.ended:
            return
        count, total = self._count, self.total
        rate = self._rate()
        unit = getattr(self, "unit", "it")
        shown = _number(count)
        text = f"{shown}/{_number(total)}" if total else f"{shown} {unit}"
        if rate is not None:
            text += f" ({rate:,.1f} {unit}/s)"
        desc = getattr(self, "desc", "")  # a disabled bar has none
        if desc:
            text = f"{desc.rstrip(': ')}: {text}"
        if not total:
            tracker.message(text)
            return
        fraction = min(max(count / total, 0.0), 1.0)
        if self._advance_stage:
            tracker.advance(fraction, text)
            return
        eta = (total - count) / rate if rate and count < total else None
        tracker.set(100.0 * fraction, text, eta_seconds=0.0 if count >= total else eta)

    def _rate(self) -> float | None:
        """tqdm's own smoothed rate; the plain average while tqdm has none (disabled bar)."""
        rate = None if self.disable else self.format_dict.get("rate")
        if rate:
            return float(rate)
        elapsed = time.monotonic() - self._started
        return self._count / elapsed if self._count and elapsed > 0 else None


def trange(*args: int, tracker: SyncTracker | None = None, **kwargs: Any) -> tqdm[int]:
    """`tqdm(range(*args), ...)`, published like `tqdm`."""
    return tqdm(range(*args), tracker=tracker, **kwargs)


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
