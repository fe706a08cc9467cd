"""`progress-hub watch`'s followers (app/follow.py) on one job, as a test reads them."""

from __future__ import annotations

import httpx

from progress_hub import follow
from pubsub.events import Snapshot

WATCHES = ["job", "all"]
"""`watch JOB_ID` (`JobWatch`) and `watch --all` (`AllWatch`)."""


class Shown:
    """The seqs a watcher showed of one job, one per change: through `JobWatch.on_update`,
    or `AllWatch.on_change` (which is called on every event, changed or not)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.seqs: list[int] = []
        self.last: Snapshot | None = None
        self.live = False
        """The stream delivered an event: what is published from now on reaches it live
        (`watch --all` shows a list read before its stream opens)."""

    def mode(self, mode: str) -> None:
        self.live = self.live or mode == "live"

    def update(self, snapshot: Snapshot) -> None:
        if snapshot is not self.last:
            self.last = snapshot
            self.seqs.append(snapshot.seq)

    def change(self, jobs: dict[str, Snapshot]) -> None:
        if self.job_id in jobs:
            self.update(jobs[self.job_id])


def watcher(
    watch: str, client: httpx.Client, shown: Shown, poll_interval: float = follow.POLL_INTERVAL
) -> follow.JobWatch | follow.AllWatch:
    """A follower of `shown`'s job (`watch`: one of `WATCHES`) that ends once it ended
    (`watch --all`: once no job is active)."""
    if watch == "job":
        return follow.JobWatch(
            client, shown.job_id, shown.update, shown.mode, poll_interval=poll_interval
        )
    return follow.AllWatch(
        client, shown.change, shown.mode, stop=follow.nothing_active, poll_interval=poll_interval
    )
