"""The KEYS of the commit and delete scripts, built once per running job.

A publish packs 21 arguments, eight of them a job's keys: building them again for every
publish cost the publish path (docs/performance.md: publish path), so the keys of the jobs
a process publishes to are kept. Only while a job runs: its last commit (it ended) or its
delete takes them out, so a process keeps nothing of a finished job (docs/performance.md,
growth per job); the bound only matters for jobs that never end here.
"""

from __future__ import annotations

from typing import Final

from pubsub.brokers import keys

SLOT_KEYS_CACHED: Final = 4096
"""Running jobs whose keys are kept, as `KNOWN_RECORDS` in `pubsub.store`."""


def build(job_id: str) -> tuple[bytes, ...]:
    """A job's script KEYS, in their order, as bytes: redis-py sends bytes as they are,
    the cheapest of its encodings."""
    part = keys.partition(job_id)
    names = [
        *keys.job_keys(job_id),
        keys.index_key(part),
        keys.job_channel(job_id),
        keys.partition_channel(part),
        keys.live_key(part),
    ]
    return tuple(name.encode() for name in names)


class SlotKeys:
    """Built KEYS by job id, at most `bound` jobs (the first kept is dropped past it)."""

    def __init__(self, bound: int = SLOT_KEYS_CACHED) -> None:
        if bound < 1:
            raise ValueError(f"bound must keep at least 1 job, got {bound}")
        self.bound = bound
        self._built: dict[str, tuple[bytes, ...]] = {}

    def get(self, job_id: str) -> tuple[bytes, ...]:
        """The keys of a job that goes on running: built once, kept."""
        built = self._built.get(job_id)
        if built is None:
            built = self._built[job_id] = build(job_id)
            if len(self._built) > self.bound:
                del self._built[next(iter(self._built))]
        return built

    def take(self, job_id: str) -> tuple[bytes, ...]:
        """The keys of a job's last command (it ended, or is deleted): no longer kept."""
        built = self._built.pop(job_id, None)
        return built if built is not None else build(job_id)

    def __len__(self) -> int:
        return len(self._built)
