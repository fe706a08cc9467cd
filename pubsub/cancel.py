"""How a tracker learns that its job was asked to cancel (docs/api.md §9).

Two ways, neither a poll per event: every publish (or heartbeat) is answered with the
committed snapshot, which carries `cancel_requested`; and while the job is silent, one
read of the job every `interval` seconds. Each answer from the hub pushes that read back,
so a busy tracker never reads at all, and a silent one reads once per interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from pubsub.events import Snapshot

DEFAULT_CANCEL_POLL_SECONDS: Final = 2.0


def check_poll_interval(interval: float | None) -> float:
    """The poll interval in seconds (`math.inf` for never); `ValueError` unless positive."""
    if interval is None:
        return math.inf
    if not interval > 0:
        raise ValueError(f"cancel_poll_interval must be a positive number of seconds: {interval}")
    return float(interval)


@dataclass(slots=True)
class CancelWatch:
    """Whether the job was asked to cancel, and when a silent tracker should look."""

    interval: float
    requested: bool = False
    next_read: float = math.inf

    def heard(self, snapshot: Snapshot, now: float) -> bool:
        """Note an answer of the hub; True when it is the first to carry the request."""
        self.next_read = now + self.interval
        if snapshot.cancel_requested and not self.requested:
            self.requested = True
            return True
        return False

    def start(self, now: float) -> None:
        """Begin the silent-job reads, the first one `interval` from now."""
        self.next_read = now + self.interval

    def due(self, now: float) -> bool:
        """True when the tracker should read the job: silent for `interval`, not yet told."""
        return not self.requested and now >= self.next_read

    @property
    def next_due(self) -> float:
        """When the next read falls due (`math.inf`: never, the request is known)."""
        return math.inf if self.requested else self.next_read
