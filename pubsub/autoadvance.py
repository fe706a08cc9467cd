"""Time-based auto-advance: progress inside a stage that only knows how long it should take.

A stage entered with an expected duration moves toward its end on a timer, about 90% of
the way at the expected time, then slower and slower, never arriving: the stage's end is
for the pipeline's real "done" (docs/publishing.md). The tracker's sender task drives the timer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

CEILING: Final = 0.99
RATE: Final = math.log(10)  # 1 - e^-RATE = 0.9 of the ceiling at the expected time
TICKS_PER_DURATION: Final = 50
MIN_TICK: Final = 0.1
MAX_TICK: Final = 1.0
MIN_STEP: Final = 0.002  # smaller moves are not worth a publish


def fraction_at(elapsed: float, expected: float) -> float:
    """How far into its stage auto-advance is after `elapsed` of `expected` seconds (< 1)."""
    return CEILING * (1 - math.exp(-RATE * elapsed / expected))


@dataclass(slots=True)
class AutoAdvance:
    """The auto-advance of one stage: when it started, and what it published last."""

    started: float
    expected: float
    next_tick: float
    fraction: float = 0.0

    @property
    def interval(self) -> float:
        """Seconds between ticks: smooth for short stages, unhurried for long ones."""
        return min(max(self.expected / TICKS_PER_DURATION, MIN_TICK), MAX_TICK)

    def tick(self, now: float) -> float | None:
        """The fraction to publish at `now`, or None when it is not yet time or not worth it."""
        if now < self.next_tick:
            return None
        self.next_tick = now + self.interval
        fraction = round(fraction_at(now - self.started, self.expected), 4)
        if fraction - self.fraction < MIN_STEP:
            return None
        self.fraction = fraction
        return fraction
