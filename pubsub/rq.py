"""Every RQ job is a progress-hub job: a Queue and a Worker class, and no change to the jobs.

    # progress_rq.py, imported by producers and named to `rq worker -w`
    from pubsub.rq import ProgressQueue, ProgressWorker

    class Queue(ProgressQueue):
        progress_url = "redis://127.0.0.1:6379/0"

    class Worker(ProgressWorker):
        progress_url = "redis://127.0.0.1:6379/0"

    Queue("default", connection=redis).enqueue(ocr, 17, meta={"progress_pipeline": "ocr"})
    # $ rq worker -w progress_rq.Worker default

Why classes and not `on_success`/`on_failure`/`on_stopped` callbacks: callbacks are given
per `enqueue` call (every call site would change), and RQ has none for "started" or
"retried". A `Worker` subclass sees every job through the hooks RQ documents for
custom workers, and a `Queue` subclass sees every enqueue.

The lifecycle (docs/api.md §10):
- `Queue.enqueue_job` / `schedule_job` → the job (id = RQ's job id) is created `queued`
  before RQ stores it, if it does not exist yet, with the function and queue in `meta`.
- `perform_job`, in the work horse → the job's `SyncTracker` opens and marks it
  `running`; `current_tracker()` returns it inside the job function; it closes when the
  horse is done.
- `handle_job_success` → `completed`, the return value as the result when RQ keeps it
  (`result_ttl` not 0) and it is text or JSON within 1 MiB (otherwise no result).
- `handle_job_failure` → `failed` with `"<ExceptionType>: <message>"`; RQ's own retry
  (`Retry(max=n)`) → `retrying` with the attempt about to start, of max + 1; a job stopped
  by `send_stop_job_command` → `cancelled`; `JobCancelled` raised from a tracker call (a
  cancel request) → `cancelled`, and RQ does not retry it.
- `handle_job_retry` (a job that returned `Retry`) → `retrying`.

A job cancelled in RQ before it runs (`job.cancel()`) never reaches a worker: nothing
here hears of it, so call `pubsub.rq.cancel(job, url)` instead, which does both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Final

import structlog
from redis.client import Pipeline as RedisPipeline
from rq import Queue, SimpleWorker, Worker, get_current_job
from rq.executions import Execution
from rq.job import Job, JobStatus, Retry
from rq.registry import StartedJobRegistry
from rq.worker.base import BaseWorker

from pubsub.announce import Announcer
from pubsub.errors import JobCancelled
from pubsub.pipelines import PipelineRegistry
from pubsub.sync import SyncTracker, TrackerOptions
from pubsub.tasks import describe_error, storable_result, untracked

log = structlog.get_logger(__name__)

PIPELINE_META: Final = "progress_pipeline"
"""The `job.meta` key naming a job's pipeline: `enqueue(f, meta={"progress_pipeline": "pdf"})`."""
DEFAULT_CLOSE_TIMEOUT: Final = 5.0

# The open trackers of this process, by job id: `current_tracker()` looks here.
_trackers: dict[str, SyncTracker] = {}
_announcers: dict[tuple[str, int], Announcer] = {}


def _required_url(owner: object, url: str | None) -> str:
    if not url:
        raise ValueError(f"{type(owner).__name__} needs progress_url (the hub's Redis URL)")
    return url


class ProgressQueue(Queue):
    """An RQ `Queue` that creates each job it enqueues as a `queued` progress-hub job."""

    progress_url: ClassVar[str | None] = None
    progress_pipelines: ClassVar[PipelineRegistry | None] = None

    def enqueue_job(
        self, job: Job, pipeline: RedisPipeline | None = None, at_front: bool = False,
        unique: bool = False,
    ) -> Job:
        """Announce the job, then enqueue it as RQ does."""
        self._announce(job)
        return super().enqueue_job(job, pipeline=pipeline, at_front=at_front, unique=unique)

    def schedule_job(
        self, job: Job, datetime: datetime, pipeline: RedisPipeline | None = None,
        unique: bool = False,
    ) -> Job:
        """Announce the job, then schedule it as RQ does (`enqueue_in`, `enqueue_at`)."""
        self._announce(job)
        return super().schedule_job(job, datetime, pipeline=pipeline, unique=unique)

    def _announce(self, job: Job) -> None:
        url = _required_url(self, self.progress_url)
        key = (url, id(self.progress_pipelines))
        announcer = _announcers.get(key)
        if announcer is None:
            announcer = _announcers[key] = Announcer(url, pipelines=self.progress_pipelines)
        announcer.announce(
            job.id,
            pipeline=(job.meta or {}).get(PIPELINE_META),
            meta={"function": job.func_name, "queue": self.name},
        )


class ProgressWorkerMixin(BaseWorker):
    """The hooks that make every job of an RQ worker a progress-hub job (see the module)."""

    progress_url: ClassVar[str | None] = None
    progress_pipelines: ClassVar[PipelineRegistry | None] = None
    progress_options: ClassVar[TrackerOptions] = {}
    """`SyncTracker` options; `raise_on_cancel` is True and `close_timeout` 5 s unless set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress_url = _required_url(self, self.progress_url)
        self._tracker_options: TrackerOptions = {
            "raise_on_cancel": True,
            "close_timeout": DEFAULT_CLOSE_TIMEOUT,
            **self.progress_options,
        }
        if self.progress_pipelines is not None:
            self._tracker_options["pipelines"] = self.progress_pipelines
        self._errors: dict[str, BaseException] = {}
        self.push_exc_handler(self._note_exception)  # type: ignore[no-untyped-call]

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Run the job with its tracker open (in the work horse)."""
        tracker = self._open(job)
        if tracker is not None:
            _trackers[job.id] = tracker
            tracker.start()
            tracker.meta(function=job.func_name, queue=queue.name)
        try:
            return super().perform_job(job, queue, execution)
        finally:
            done = _trackers.pop(job.id, None)
            if done is not None:
                done.close()

    def handle_job_success(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry,
        execution: Execution,
    ) -> None:
        """RQ's bookkeeping, then `completed` with the result RQ kept."""
        super().handle_job_success(job, queue, started_job_registry, execution)
        keeps = job.get_result_ttl(self.default_result_ttl) != 0
        result, reason = storable_result(job.return_value() if keeps else None)
        if reason is not None:
            log.info("job_result_omitted", job_id=job.id, reason=reason)
        self._publish(job, lambda t: t.complete(result))

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        """RQ's bookkeeping (retry, stop or fail), then the same for the job."""
        exc = self._errors.pop(job.id, None)
        cancelled = isinstance(exc, JobCancelled)
        if cancelled:
            job.retries_left = None  # a person asked it to stop: not a failure to retry
        retries_left = job.retries_left or 0
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        status = job.get_status(refresh=False)
        if cancelled or status == JobStatus.STOPPED:
            why = "Cancelled on request" if cancelled else "Stopped"
            self._publish(job, lambda t: t.cancel(why))
        elif status in (JobStatus.SCHEDULED, JobStatus.QUEUED):
            error = describe_error(exc) if exc is not None else _last_line(exc_string)
            self._publish(job, lambda t: _retrying(t, retries_left, error))
        else:
            error = describe_error(exc) if exc is not None else _last_line(exc_string)
            self._publish(job, lambda t: t.fail(error))

    def handle_job_retry(
        self,
        job: Job,
        queue: Queue,
        retry: Retry,
        started_job_registry: StartedJobRegistry,
        execution: Execution,
    ) -> None:
        """A job that returned `Retry`: RQ requeues it (or fails it past `retry.max`)."""
        super().handle_job_retry(job, queue, retry, started_job_registry, execution)
        if job.get_status(refresh=False) == JobStatus.FAILED:
            self._publish(job, lambda t: t.fail(f"Gave up after {retry.max + 1} attempts"))
            return
        attempt = (job.number_of_retries or 0) + 1
        self._publish(job, lambda t: t.retrying(attempt, max(retry.max + 1, attempt)))

    def _note_exception(
        self, job: Job, exc_type: type[BaseException], exc: BaseException, tb: Any
    ) -> None:
        """RQ's exception handler hook: the exception itself, for the job's error text."""
        self._errors[job.id] = exc

    def _open(self, job: Job) -> SyncTracker | None:
        try:
            return SyncTracker(
                self._progress_url,
                job.id,
                pipeline=(job.meta or {}).get(PIPELINE_META),
                **self._tracker_options,
            )
        except ValueError as exc:  # a job id or pipeline the tracker refuses
            log.error("rq_job_untracked", job_id=job.id, reason=str(exc))
            return None

    def _publish(self, job: Job, call: Any) -> None:
        """Make `call` on the job's tracker, or on one opened for it here (main process)."""
        tracker = _trackers.get(job.id)
        if tracker is not None:
            if not tracker.ended:
                _end_call(tracker, call)
            return
        opened = self._open(job)
        if opened is not None:
            with opened:
                _end_call(opened, call)


def _end_call(tracker: SyncTracker, call: Any) -> None:
    try:
        call(tracker)
    except JobCancelled:
        # Only `retrying` raises it (end calls never do): the job stops here instead.
        tracker.cancel("Cancelled on request")


def _retrying(tracker: SyncTracker, retries_left: int, error: str) -> None:
    """Announce the attempt about to start, counted from the job's own record."""
    known = tracker.snapshot
    if known is None:
        tracker.heartbeat()  # a tracker opened just now: learn the job's attempt count
        try:
            tracker.flush(timeout=DEFAULT_CLOSE_TIMEOUT)
        except TimeoutError:
            pass
        known = tracker.snapshot
    if known is not None and known.attempt is not None and known.max_attempts is not None:
        attempt, max_attempts = known.attempt + 1, known.max_attempts
    else:
        attempt, max_attempts = 2, retries_left + 1
    tracker.retrying(attempt, max(attempt, max_attempts), error)


def _last_line(exc_string: str) -> str:
    lines = [line for line in exc_string.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "Failed"


class ProgressWorker(ProgressWorkerMixin, Worker):
    """RQ's forking `Worker`, every job published (set `progress_url` in a subclass)."""


class SimpleProgressWorker(ProgressWorkerMixin, SimpleWorker):
    """RQ's `SimpleWorker` (no fork per job), every job published."""


def current_tracker() -> SyncTracker:
    """The `SyncTracker` of the RQ job running here (a no-op one outside a job)."""
    job = get_current_job()
    tracker = _trackers.get(job.id) if job is not None else None
    return tracker if tracker is not None else untracked()


def cancel(job: Job, broker_url: str, **options: Any) -> None:
    """Cancel an RQ job that has not run yet, and its progress-hub job with it."""
    job.cancel()
    with SyncTracker(broker_url, job.id, **options) as tracker:
        tracker.cancel("Cancelled before it ran")
