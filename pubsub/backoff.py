"""Retrying with exponential backoff while the broker is down: when to try next, since when."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

FIRST_DELAY: Final = 0.05
MAX_DELAY: Final = 2.0


@dataclass(slots=True)
class Outage:
    """The current broker outage as one publisher sees it (none when `since` is None)."""

    since: float | None = None
    retry_at: float = 0.0
    delay: float = FIRST_DELAY

    @property
    def ongoing(self) -> bool:
        """True between a failed publish and the next successful one."""
        return self.since is not None

    def failed(self, now: float) -> bool:
        """Note a failed attempt and schedule the next; True when it starts an outage."""
        started = self.since is None
        if started:
            self.since, self.delay = now, FIRST_DELAY
        else:
            self.delay = min(self.delay * 2, MAX_DELAY)
        self.retry_at = now + self.delay
        return started

    def succeeded(self, now: float) -> float | None:
        """Note a successful publish; returns how long the outage lasted, if there was one."""
        if self.since is None:
            return None
        lasted, self.since = now - self.since, None
        return lasted
