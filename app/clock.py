"""The one clock of the process: heartbeats for open streams, and the end of streams whose
token expired.

Its work per tick is the streams that are due, not every stream: streams sit in a ring of
heartbeat slots (one slot is pinged per tick, so each stream once per heartbeat, spread
evenly), and in buckets of the whole second their token expires (a heap of those seconds
says which buckets are due).
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Final

import anyio

from progress_hub import frames
from progress_hub.mailbox import Mailbox

# A token's expiry ends its stream at most this late (docs/api.md §3).
TOKEN_CHECK_INTERVAL: Final = 1.0
# Seconds of emptied buckets stay in the heap until due; past this many more than the
# buckets, the heap is rebuilt from the buckets (streams of long-lived tokens opened and
# closed one after another would otherwise push one stale second each).
STALE_DEADLINES: Final = 64


class Clock:
    """Pings every stream once per `heartbeat` and closes streams at their token's expiry."""

    def __init__(self, heartbeat: float) -> None:
        if heartbeat <= 0:
            raise ValueError(f"heartbeat must be positive, got {heartbeat}")
        # The step divides the heartbeat, so that a stream is pinged every `heartbeat`
        # seconds exactly, and it is at most TOKEN_CHECK_INTERVAL.
        slots = math.ceil(heartbeat / TOKEN_CHECK_INTERVAL)
        self.step = heartbeat / slots
        self._ring: list[set[Mailbox]] = [set() for _ in range(slots)]
        self._cursor = 0
        self._slot: dict[Mailbox, int] = {}
        self._expiring: dict[int, set[Mailbox]] = {}
        self._deadlines: list[int] = []

    def add(self, mailbox: Mailbox) -> None:
        """Heartbeat `mailbox` from one heartbeat from now on, and close it at its expiry."""
        slot = (self._cursor - 1) % len(self._ring)
        self._ring[slot].add(mailbox)
        self._slot[mailbox] = slot
        if mailbox.expires_at is not None:
            second = math.ceil(mailbox.expires_at)
            bucket = self._expiring.get(second)
            if bucket is None:
                bucket = self._expiring[second] = set()
                if len(self._deadlines) > 2 * len(self._expiring) + STALE_DEADLINES:
                    self._deadlines = list(self._expiring)
                    heapq.heapify(self._deadlines)
                else:
                    heapq.heappush(self._deadlines, second)
            bucket.add(mailbox)

    def remove(self, mailbox: Mailbox) -> None:
        """Forget `mailbox` (its stream ended)."""
        slot = self._slot.pop(mailbox, None)
        if slot is not None:
            self._ring[slot].discard(mailbox)
        if mailbox.expires_at is not None:
            second = math.ceil(mailbox.expires_at)
            bucket = self._expiring.get(second)
            if bucket is not None:
                bucket.discard(mailbox)
                if not bucket:
                    del self._expiring[second]  # its second stays in the heap, popped when due

    def footprint(self) -> dict[str, int]:
        """The size of each structure of the clock: all follow the open streams (the
        deadline heap: at most twice the buckets, plus `STALE_DEADLINES`)."""
        return {
            "clock.heartbeat_ring": sum(len(slot) for slot in self._ring),
            "clock.heartbeat_slots": len(self._slot),
            "clock.expiry_buckets": len(self._expiring),
            "clock.expiry_deadlines": len(self._deadlines),
        }

    async def run(self) -> None:
        """Tick until cancelled (owned by the fan-out's task group)."""
        while True:
            await anyio.sleep(self.step)
            self.tick(time.time())

    def tick(self, now: float) -> None:
        """Close the streams whose token expired by `now` (epoch seconds); ping one slot."""
        deadlines = self._deadlines
        while deadlines and deadlines[0] <= now:
            for mailbox in self._expiring.pop(heapq.heappop(deadlines), ()):
                mailbox.close()
        ring = self._ring
        due = ring[self._cursor]
        self._cursor = (self._cursor + 1) % len(ring)
        for mailbox in due:
            if mailbox.idle:
                mailbox.push("", frames.PING)
