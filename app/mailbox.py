"""A stream's mailbox: the frames waiting to be written, bounded and conflating."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from progress_hub import metrics

# A stream that falls this many frames behind has its backlog conflated to the latest
# frame per job: every event is a full snapshot, so the latest one loses no state.
MAX_PENDING_FRAMES: Final = 64


@dataclass(slots=True, eq=False)
class Mailbox:
    """The frames of one open stream, written by that stream's own task (`next_frames`).

    Producers (the fan-out, the clock) only append and wake the task; a stream that is
    behind gets everything queued as one write.
    """

    job_id: str | None
    """The job this stream follows; None for the every-job feed."""
    jobs: frozenset[str] | None = None
    """For the every-job feed: only these jobs (None: all)."""
    expires_at: float | None = None
    """When the stream's token expires (epoch seconds); None: never."""
    last_seq: int = 0
    closed: bool = False
    # A list, not a deque: frames are only appended and taken all at once, and an empty
    # deque allocates a 64-slot block per idle stream (docs/performance.md, memory).
    _frames: list[tuple[str, int, bytes]] = field(default_factory=list)
    # A bare loop future, not anyio.Event: anyio.Event() looks up the async backend on
    # every construction, and a stream waits once per delivery (docs/performance.md).
    _wakeup: asyncio.Future[None] | None = None

    def push(self, job_id: str, frame: bytes, *, seq: int = 0, final: bool = False) -> None:
        """Queue a frame (of `seq`, when it is one job's event); `final` ends the stream."""
        if self.closed:
            return
        frames = self._frames
        frames.append((job_id, seq, frame))
        if len(frames) > MAX_PENDING_FRAMES:
            self._conflate()
        if final:
            self.closed = True
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def start_after(self, seq: int) -> None:
        """Resume live delivery after `seq`: drop what was queued up to it while loading."""
        self.last_seq = max(self.last_seq, seq)
        self.drop_covered({self.job_id or "": seq})

    def drop_covered(self, seqs: Mapping[str, int]) -> None:
        """Drop the queued events that an opening read covers: those of a job whose
        snapshot there (`seqs`, by job id) is as new. Frames without a seq always stay."""
        if self._frames:
            self._frames = [
                item for item in self._frames if item[1] == 0 or item[1] > seqs.get(item[0], 0)
            ]

    def close(self) -> None:
        """End the stream after what is already queued."""
        self.closed = True
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wants(self, job_id: str) -> bool:
        """True when this every-job stream shows `job_id`."""
        return self.jobs is None or job_id in self.jobs

    @property
    def idle(self) -> bool:
        """True when nothing waits to be written."""
        return not self._frames

    async def next_frames(self) -> bytes | None:
        """Everything queued, as one write; None once the stream is over."""
        while not self._frames:
            if self.closed:
                return None
            waiter = self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._wakeup = None
        frames = self._frames
        batch = frames[0][2] if len(frames) == 1 else b"".join(item[2] for item in frames)
        frames.clear()
        return batch

    def _conflate(self) -> None:
        latest: dict[str, tuple[str, int, bytes]] = {}
        for item in self._frames:
            latest.pop(item[0], None)
            latest[item[0]] = item
        self._frames = list(latest.values())
        metrics.FRAMES_CONFLATED.inc()
