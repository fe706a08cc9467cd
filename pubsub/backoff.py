"""Retrying with exponential backoff: how long to wait after some failures in a row, and
the current broker outage as one retrying loop sees it (when to try next, since when).

One formula for every retry of ours: the publisher's backlog, the subscription feed and
the resync after a gap wait on `Outage` (50 ms doubling to 2 s: the broker is near, and
a worker's update should not wait long); `progress-hub watch` waits on `backoff` with
the JS client's schedule (1 s doubling to 30 s, jittered: many watchers of one hub must
not come back in step; app/follow.py, docs/dashboard.md). redis-py itself retries
nothing (pubsub/brokers/connect.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

FIRST_DELAY: Final = 0.05
MAX_DELAY: Final = 2.0


def backoff(
    failures: int, first: float = FIRST_DELAY, cap: float = MAX_DELAY, *, jitter: bool = False
) -> float:
    """Seconds to wait after `failures` failed attempts in a row (fewer than 1 count as 1):
    `first`, doubling up to `cap`; with `jitter`, anywhere in the upper half of that
    ("equal jitter"), never less than half of it."""
    # The exponent is capped: past ~30 doublings any cap is reached, and 2.0 ** n overflows.
    ceiling = min(cap, first * 2.0 ** min(max(0, failures - 1), 30))
    return ceiling / 2 + random.random() * ceiling / 2 if jitter else ceiling


@dataclass(slots=True)
class Outage:
    """The current broker outage as one publisher sees it (none when `since` is None)."""

    since: float | None = None
    retry_at: float = 0.0
    failures: int = 0
    """Failed attempts since the outage began."""

    @property
    def delay(self) -> float:
        """Seconds from the last failed attempt to the next (`backoff`)."""
        return backoff(self.failures)

    @property
    def ongoing(self) -> bool:
        """True between a failed publish and the next successful one."""
        return self.since is not None

    def failed(self, now: float) -> bool:
        """Note a failed attempt and schedule the next; True when it starts an outage."""
        started = self.since is None
        if started:
            self.since, self.failures = now, 0
        self.failures += 1
        self.retry_at = now + self.delay
        return started

    def succeeded(self, now: float) -> float | None:
        """Note a successful publish; returns how long the outage lasted, if there was one."""
        if self.since is None:
            return None
        lasted, self.since = now - self.since, None
        return lasted
