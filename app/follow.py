"""Following jobs over HTTP for `progress-hub watch`: stream first, poll as fallback.

The rules of static/progress-client.js, for clients without a browser (docs/dashboard.md):
stream Server-Sent Events; after three stream attempts that deliver nothing,
poll (`If-None-Match` for one job, the job list for all) with jittered backoff
on failures, and try the stream again every 15 s. Every connection starts
without Last-Event-ID, so it opens with a full snapshot: a terminal only shows
the latest state, and a stream that answers but never delivers one counts as
a failure.

After a drop, the state is read once a poll interval while waiting to reconnect
(the hub's `retry:` may ask for 15 s), and once more when the stream is back, so
that a watcher converges within one poll interval or one reconnect, whichever
comes first; the read on reconnect also drops jobs deleted meanwhile, which no
event reports (tests/app/test_follow.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

import httpx
import msgspec
import structlog
from httpx_sse import ServerSentEvent, SSEError, connect_sse

from pubsub import Snapshot
from pubsub.backoff import backoff
from pubsub.events import ACTIVE_STATUSES, SNAPSHOT_DECODER

log = structlog.get_logger(__name__)

EXIT_FAILED: Final = 1
EXIT_UNKNOWN: Final = 2
EXIT_UNREACHABLE: Final = 3
# Seconds without any answer from the hub (at start, or since its last answer) before
# `watch` gives up: a wrong or down --url ends with a reason (docs/dashboard.md).
GIVE_UP_AFTER: Final = 10.0

STREAM_FAILURES_BEFORE_POLLING: Final = 3
POLL_INTERVAL: Final = 2.0
STREAM_RETRY_AFTER: Final = 15.0
BACKOFF_BASE: Final = 1.0
BACKOFF_MAX: Final = 30.0
LIST_LIMIT: Final = 500
# Three missed heartbeats (15 s each by default) mean the stream is dead.
STREAM_TIMEOUT: Final = httpx.Timeout(10.0, read=45.0)


class JobList(msgspec.Struct, frozen=True, kw_only=True):
    """Body of `GET /api/jobs`."""

    jobs: list[Snapshot]


JOB_LIST: Final = msgspec.json.Decoder(JobList)


class WatchStopped(Exception):
    """Following cannot go on: the job is unknown, deleted, or the token is refused."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def refuse_unless_readable(
    response: httpx.Response, what: str, *, token: str | None = None
) -> None:
    """Raise WatchStopped for the answers that end following for good (docs/api.md §3)."""
    if response.status_code == 404:
        raise WatchStopped(f"{what} is unknown or has expired", EXIT_UNKNOWN)
    if response.status_code in (401, 403):
        status = response.status_code
        if token is None:
            raise WatchStopped(
                f"the hub needs a subscriber token to read {what} (HTTP {status}): pass "
                "--token (`progress-hub token --job JOB_ID` issues one)",
                EXIT_UNKNOWN,
            )
        raise WatchStopped(
            f"the token given may not read {what} (HTTP {status}): it names other jobs, has "
            "expired, or was signed with another secret",
            EXIT_UNKNOWN,
        )


def retry_delay(failures: int) -> float:
    """Seconds before retry number `failures`: the JS client's schedule (pubsub/backoff.py)."""
    return backoff(failures, BACKOFF_BASE, BACKOFF_MAX, jitter=True)


def adds_nothing(snapshot: Snapshot, shown: Snapshot | None) -> bool:
    """True when a watcher showing `shown` has nothing to take from `snapshot`: the same
    job (not deleted and made again) at a seq it showed or passed. Except for a job whose
    last writes were lost (docs/production.md, failover), which goes on reusing their
    seqs: another write at the shown seq (each write has its own `updated_at`), and an
    end, which is a job's last seq. The rule of static/progress-client.js."""
    if shown is None or snapshot.created_at != shown.created_at or snapshot.seq > shown.seq:
        return False
    if snapshot.seq == shown.seq and snapshot.updated_at != shown.updated_at:
        return False
    return not snapshot.is_terminal or shown.is_terminal


@dataclass(slots=True)
class Connection:
    """Stream `path` while that works and call `poll_once` while it does not.

    Args:
        on_event: handles one SSE event, told how many events the same response
            delivered before it (0: the first since the stream opened); returns True
            when following is done.
        poll_once: one poll; returns True when done, raises httpx.HTTPError or
            msgspec.DecodeError on a failure worth retrying.
        on_mode: told "live", "reconnecting" or "polling" as things change.
    """

    client: httpx.Client
    path: str
    what: str
    params: dict[str, str | list[str]]
    on_event: Callable[[ServerSentEvent, int], bool]
    poll_once: Callable[[], bool]
    on_mode: Callable[[str], None]
    poll_only: bool = False
    poll_interval: float = POLL_INTERVAL
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    retry_hint: float | None = None
    token: str | None = None
    give_up_after: float = GIVE_UP_AFTER
    """Seconds without any answer from the hub before giving up (0: never)."""
    answered_at: float | None = None
    unreachable: str | None = None

    def run(self) -> None:
        """Return once a handler says done; raise WatchStopped when the hub refuses, or
        when it has not answered for `give_up_after` seconds."""
        self.answered_at = self.clock()
        failures = 0
        reconnect = False
        while True:
            if self.poll_only or failures >= STREAM_FAILURES_BEFORE_POLLING:
                until = None if self.poll_only else self.clock() + STREAM_RETRY_AFTER
                if self._poll(until):
                    return
                failures = STREAM_FAILURES_BEFORE_POLLING - 1  # one stream try, then poll again
                continue
            delivered, done = self._stream(catch_up=reconnect)
            if done:
                return
            reconnect = True
            failures = 0 if delivered else failures + 1
            self.on_mode("reconnecting")
            if self._wait(max(self.retry_hint or 0.0, retry_delay(failures))):
                return

    def _answered(self) -> None:
        self.answered_at, self.unreachable = self.clock(), None

    def _sleep_unless_gone(self, seconds: float) -> None:
        """Sleep before a retry, or raise WatchStopped once the hub is silent for too long."""
        if self.unreachable is not None and self.give_up_after > 0:
            assert self.answered_at is not None
            left = self.answered_at + self.give_up_after - self.clock()
            if left <= 0:
                raise WatchStopped(
                    f"cannot reach the hub at {self.client.base_url} for "
                    f"{self.give_up_after:g} s ({self.unreachable}): is `progress-hub serve` "
                    "running there? (--url)",
                    EXIT_UNREACHABLE,
                )
            seconds = min(seconds, left)
        self.sleep(seconds)

    def _wait(self, seconds: float) -> bool:
        """Wait `seconds` before reconnecting, reading the state each poll interval
        meanwhile (less often while reads fail); True when a read says done."""
        failures = 0
        left = seconds  # counted in what was slept, so that an injected sleep is obeyed
        while left > 0:
            pause = self.poll_interval
            if failures:
                pause = max(pause, retry_delay(failures))
            step = min(left, pause)
            self._sleep_unless_gone(step)
            left -= step
            if left <= 0:
                return False
            done = self._catch_up()
            if done is None:
                failures += 1
            elif done:
                return True
            else:
                failures = 0
        return False

    def _catch_up(self) -> bool | None:
        """One read outside the polling fallback: True when done, None when it failed."""
        try:
            done = self.poll_once()
        except (httpx.HTTPError, msgspec.DecodeError) as exc:
            if isinstance(exc, httpx.TransportError):
                self.unreachable = str(exc) or type(exc).__name__
            else:
                self._answered()
            log.debug("watch_catch_up_failed", path=self.path, error=str(exc))
            return None
        self._answered()
        return done

    def _stream(self, *, catch_up: bool = False) -> tuple[bool, bool]:
        delivered = False
        earlier = 0
        try:
            with connect_sse(
                self.client, "GET", self.path, params=self.params, timeout=STREAM_TIMEOUT
            ) as source:
                self._answered()
                refuse_unless_readable(source.response, self.what, token=self.token)
                if source.response.status_code != 200:
                    return False, False
                # Back after a drop: what the hub sends first may come late (it has
                # not subscribed yet when it answers), so read the state now too.
                if catch_up and self._catch_up():
                    return True, True
                for sse in source.iter_sse():
                    if sse.retry is not None:
                        self.retry_hint = sse.retry / 1000
                    if not sse.data:
                        continue  # a bare `retry:` block carries no event
                    self.on_mode("live")
                    if self.on_event(sse, earlier):
                        return True, True
                    earlier += 1
                    delivered = True
        except (httpx.TransportError, SSEError, msgspec.DecodeError) as exc:
            if isinstance(exc, httpx.TransportError) and not delivered:
                self.unreachable = str(exc) or type(exc).__name__
            log.debug("watch_stream_dropped", path=self.path, error=str(exc))
        return delivered, False

    def _poll(self, until: float | None) -> bool:
        failures = 0
        while until is None or self.clock() < until:
            try:
                done = self.poll_once()
            except (httpx.HTTPError, msgspec.DecodeError) as exc:
                failures += 1
                if isinstance(exc, httpx.TransportError):
                    self.unreachable = str(exc) or type(exc).__name__
                else:
                    self._answered()
                log.debug("watch_poll_failed", path=self.path, error=str(exc))
                self.on_mode("reconnecting")
                self._sleep_unless_gone(retry_delay(failures))
                continue
            self._answered()
            if done:
                return True
            failures = 0
            self.on_mode("polling")
            self.sleep(self.poll_interval)
        return False


@dataclass(slots=True)
class JobWatch:
    """Follow one job until it ends; `follow()` returns its terminal snapshot."""

    client: httpx.Client
    job_id: str
    on_update: Callable[[Snapshot], None]
    on_mode: Callable[[str], None] = lambda mode: None
    token: str | None = None
    poll_only: bool = False
    poll_interval: float = POLL_INTERVAL
    sleep: Callable[[float], None] = time.sleep
    snapshot: Snapshot | None = None
    etag: str | None = None
    give_up_after: float = GIVE_UP_AFTER
    response_seq: int = 0
    """The seq of the last event the stream's current response delivered."""

    def follow(self) -> Snapshot:
        """Block until the job completes, fails or is cancelled."""
        path = f"/api/jobs/{quote(self.job_id, safe='')}"
        Connection(
            client=self.client,
            path=f"{path}/events",
            what=f"job {self.job_id}",
            params=self._params(),
            on_event=self._on_event,
            poll_once=self._poll_once,
            on_mode=self.on_mode,
            poll_only=self.poll_only,
            poll_interval=self.poll_interval,
            sleep=self.sleep,
            token=self.token,
            give_up_after=self.give_up_after,
        ).run()
        assert self.snapshot is not None, "a connection only ends on a terminal snapshot"
        return self.snapshot

    def _params(self) -> dict[str, str | list[str]]:
        return {"token": self.token} if self.token else {}

    def _accept(self, snapshot: Snapshot, *, rewound: bool = False) -> bool:
        """Show a snapshot once per seq; True when it is terminal. `rewound`: the hub said
        the job went back to this seq (a failover lost its last writes)."""
        if not rewound and adds_nothing(snapshot, self.snapshot):
            return False
        self.snapshot = snapshot
        self.on_update(snapshot)
        return snapshot.is_terminal

    def _on_event(self, sse: ServerSentEvent, earlier: int) -> bool:
        if sse.event in ("snapshot", "progress"):
            snapshot = SNAPSHOT_DECODER.decode(sse.data)
            # Within one response the hub sends a snapshot below a seq it gave only for a
            # rewound job; a response's first snapshot may trail a poll.
            rewound = sse.event == "snapshot" and earlier > 0 and snapshot.seq < self.response_seq
            self.response_seq = snapshot.seq
            return self._accept(snapshot, rewound=rewound)
        if sse.event == "deleted":
            raise WatchStopped(f"job {self.job_id} was deleted", EXIT_FAILED)
        if sse.event == "end":
            # "end" follows the terminal event; fetch it if we somehow missed it.
            return (self.snapshot is not None and self.snapshot.is_terminal) or self._poll_once()
        return False

    def _poll_once(self) -> bool:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        path = f"/api/jobs/{quote(self.job_id, safe='')}"
        response = self.client.get(path, params=self._params(), headers=headers)
        if response.status_code == 304:
            return False
        refuse_unless_readable(response, f"job {self.job_id}", token=self.token)
        response.raise_for_status()
        done = self._accept(SNAPSHOT_DECODER.decode(response.content))
        self.etag = response.headers.get("ETag")
        return done


@dataclass(slots=True)
class AllWatch:
    """Follow every job on `/api/events` until `stop(jobs)` says so (or forever)."""

    client: httpx.Client
    on_change: Callable[[dict[str, Snapshot]], None]
    on_mode: Callable[[str], None] = lambda mode: None
    stop: Callable[[dict[str, Snapshot]], bool] = lambda jobs: False
    token: str | None = None
    poll_only: bool = False
    poll_interval: float = POLL_INTERVAL
    jobs: dict[str, Snapshot] = field(default_factory=dict)
    listed: bool = False
    give_up_after: float = GIVE_UP_AFTER
    responses: int = 0
    """The stream's responses so far, counted at the first event of each."""
    shown_in: dict[str, int] = field(default_factory=dict)
    """The response whose event each job's shown state came from (0: a list read)."""

    def follow(self) -> None:
        """Block until `stop` returns True after a change."""
        # A full list first, so `stop` judges whole tables and an idle hub ends at once.
        try:
            if self._poll_once():
                return
        except (httpx.HTTPError, msgspec.DecodeError) as exc:
            log.debug("watch_list_failed", error=str(exc))
        params: dict[str, str | list[str]] = {"token": self.token} if self.token else {}
        Connection(
            client=self.client,
            path="/api/events",
            what="the job stream",
            params=params,
            on_event=self._on_event,
            poll_once=self._poll_once,
            on_mode=self.on_mode,
            poll_only=self.poll_only,
            poll_interval=self.poll_interval,
            token=self.token,
            give_up_after=self.give_up_after,
        ).run()

    def _accept(self, snapshot: Snapshot, response: int = 0, *, rewound: bool = False) -> None:
        """Show a snapshot once per seq (`response`: the one it came in, 0 for a read);
        `rewound`: the hub said the job went back to this seq (a failover lost its last
        writes)."""
        if not rewound and adds_nothing(snapshot, self.jobs.get(snapshot.job_id)):
            return
        self.jobs[snapshot.job_id] = snapshot
        self.shown_in[snapshot.job_id] = response

    def _forget(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self.shown_in.pop(job_id, None)

    def _changed(self) -> bool:
        self.on_change(self.jobs)
        return self.stop(self.jobs)

    def _on_event(self, sse: ServerSentEvent, earlier: int) -> bool:
        if earlier == 0:
            self.responses += 1
        snapshot = SNAPSHOT_DECODER.decode(sse.data)
        if sse.event == "deleted":
            self._forget(snapshot.job_id)
        else:
            # Within one response the hub sends a job's snapshot below a seq it gave that
            # job only for a rewound job (app/delivery.py, the dashboards' resync); a
            # response's opening snapshot may trail a list read.
            current = self.jobs.get(snapshot.job_id)
            rewound = (
                sse.event == "snapshot"
                and current is not None
                and self.shown_in.get(snapshot.job_id) == self.responses
                and snapshot.created_at == current.created_at
                and snapshot.seq < current.seq
            )
            self._accept(snapshot, self.responses, rewound=rewound)
        if sse.event == "snapshot" and not self.listed:
            # Opening snapshots come one by one, newest first: without a full list
            # to update, `stop` would judge a half-loaded table.
            self.on_change(self.jobs)
            return False
        return self._changed()

    def _poll_once(self) -> bool:
        params: dict[str, str | int] = {"limit": LIST_LIMIT}
        if self.token:
            params["token"] = self.token
        response = self.client.get("/api/jobs", params=params)
        refuse_unless_readable(response, "the job list", token=self.token)
        response.raise_for_status()
        page = JOB_LIST.decode(response.content).jobs
        if len(page) < LIST_LIMIT:
            # A short page is everything there is: what is missing was deleted or expired.
            names = {job.job_id for job in page}
            for gone in [job_id for job_id in self.jobs if job_id not in names]:
                self._forget(gone)
        for snapshot in page:
            self._accept(snapshot)
        self.listed = True
        return self._changed()


def nothing_active(jobs: dict[str, Snapshot]) -> bool:
    """True when no job is queued, running or retrying."""
    return not any(job.status in ACTIVE_STATUSES for job in jobs.values())
