"""Every task of a Celery app is a job: `track(app, broker_url)`, and no change to the tasks.

    app = Celery("tasks", broker="redis://127.0.0.1:6379/1")
    pubsub.celery.track(app, "redis://127.0.0.1:6379/0")

    @app.task(progress_pipeline="ocr")
    def ocr(pages: int) -> str:
        job = pubsub.celery.current_tracker()
        job.chunks(pages)
        ...

How the lifecycle maps (docs/api.md §10; docs/publishing.md, "Celery"):

- `before_task_publish`, in the process calling `.delay()`: the job (id = task id) is
  created `queued` before the message leaves, so it exists when `.delay()` returns and no
  worker can have started it yet. `after_task_publish` would be too late: a fast worker
  may already be running the task, and "queued" must never follow "running". A retry
  re-published by the worker itself is left to `task_retry`.
- `task_prerun` opens the task's `SyncTracker` in the process running it (so one per
  prefork child, made after the fork) and marks it `running`; `task_postrun` closes it.
- `task_success` → `completed`, with the return value as the result when it is text or
  JSON within 1 MiB; otherwise the job completes without a result (`has_result: false`),
  and `job_result_omitted` is logged with the reason.
- `task_failure` → `failed` with `"<ExceptionType>: <message>"`; a `JobCancelled`
  raised from a tracker call (a cancel request, docs/api.md §9) → `cancelled`.
- `task_retry` → `retrying`, attempt = request.retries + 2 of max_retries + 1. Celery's
  `Retry` is registered with `pubsub.exits`, so a `with SyncTracker(...)` block that
  `self.retry()` leaves does not fail the job either.
- `task_revoked` (in the worker's main process) → `cancelled`.

Signals whose task has no tracker in this process (the prefork parent hearing of a lost
child, a revoke) publish through a tracker opened for that one update.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Final, Unpack

import celery
import structlog
from celery import signals
from celery.exceptions import Retry

from pubsub.announce import DEFAULT_ANNOUNCE_TIMEOUT, Announcer
from pubsub.errors import JobCancelled
from pubsub.exits import register_not_failure
from pubsub.store import DEFAULT_HISTORY, DEFAULT_RETENTION
from pubsub.sync import SyncTracker, TrackerOptions
from pubsub.tasks import describe_error, storable_result, untracked

log = structlog.get_logger(__name__)

PIPELINE_OPTION: Final = "progress_pipeline"
"""The task option that names a task's pipeline: `@app.task(progress_pipeline="pdf")`."""
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
# Pools whose "threads" are greenlets: a SyncTracker's loop thread would be one too, and
# an asyncio loop run inside a greenlet blocks the hub. Not supported, said at start.
GREEN_POOLS: Final = ("gevent", "eventlet")

# The open trackers of this process, by task id: `current_tracker()` looks here.
_trackers: dict[str, SyncTracker] = {}
_fork_hook = threading.Lock()
_fork_hook_set = False


class CeleryTracking:
    """The signal handlers `track()` connected for one Celery app; `untrack()` removes them."""

    def __init__(
        self,
        app: celery.Celery,
        broker_url: str,
        *,
        announce_timeout: float = DEFAULT_ANNOUNCE_TIMEOUT,
        **options: Unpack[TrackerOptions],
    ) -> None:
        self.app = app
        self.broker_url = broker_url
        # Tasks stop at their next tracker call on a cancel request (docs/api.md §9).
        self.options: TrackerOptions = {
            "close_timeout": DEFAULT_CLOSE_TIMEOUT,
            "raise_on_cancel": True,
            **options,
        }
        self.announcer = Announcer(
            broker_url,
            pipelines=options.get("pipelines"),
            history=options.get("history", DEFAULT_HISTORY),
            retention=options.get("retention", DEFAULT_RETENTION),
            timeout=announce_timeout,
        )
        self.wait_timeout = announce_timeout
        self.enabled = True
        self._handlers = [
            (signals.before_task_publish, self._on_publish),
            (signals.task_prerun, self._on_prerun),
            (signals.task_success, self._on_success),
            (signals.task_failure, self._on_failure),
            (signals.task_retry, self._on_retry),
            (signals.task_revoked, self._on_revoked),
            (signals.task_postrun, self._on_postrun),
            (signals.worker_init, self._on_worker_init),
        ]
        for signal, handler in self._handlers:
            signal.connect(handler, weak=False)

    def untrack(self) -> None:
        """Disconnect every handler: tasks stop being jobs (open trackers close at postrun)."""
        for signal, handler in self._handlers:
            signal.disconnect(handler)

    def _ours(self, task: Any) -> bool:
        return self.enabled and getattr(task, "app", None) is self.app

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        pool = str(getattr(sender, "pool_cls", "")).lower()
        if any(green in pool for green in GREEN_POOLS):
            self.enabled = False
            log.error(
                "celery_pool_unsupported",
                pool=pool,
                detail="progress tracking is off in this worker: use prefork or threads",
            )

    def _on_publish(
        self,
        sender: str | None = None,
        headers: dict[str, Any] | None = None,
        routing_key: str | None = None,
        declare: list[Any] | None = None,
        **_: Any,
    ) -> None:
        if not self.enabled or not headers or not headers.get("id"):
            return  # protocol 1 messages carry no headers; Celery 4+ sends protocol 2
        if headers.get("retries"):
            return  # re-published by `self.retry()`: `task_retry` reports it
        name = sender or headers.get("task") or ""
        task = self.app.tasks.get(name)
        if task is None:
            # Not a task of this app (another app of the process, or `send_task` of a
            # task defined only in the workers): the job appears when the task starts.
            return
        queue = next((q.name for q in declare or () if getattr(q, "name", None)), routing_key)
        self.announcer.announce(
            headers["id"],
            pipeline=getattr(task, PIPELINE_OPTION, None),
            meta={"task": name, "queue": queue},
        )

    def _on_prerun(self, task_id: str = "", task: Any = None, **_: Any) -> None:
        if not self._ours(task) or not task_id:
            return
        request = task.request
        delivery = request.delivery_info or {}
        try:
            tracker = SyncTracker(
                self.broker_url,
                task_id,
                pipeline=getattr(task, PIPELINE_OPTION, None),
                **self.options,
            )
        except ValueError as exc:  # a task id or pipeline the tracker refuses
            log.error("celery_task_untracked", task_id=task_id, reason=str(exc))
            return
        _trackers[task_id] = tracker
        tracker.start()
        tracker.meta(task=task.name, queue=delivery.get("routing_key"))
        if delivery.get("redelivered"):
            self._resume(task_id, tracker)

    def _resume(self, task_id: str, tracker: SyncTracker) -> None:
        """A redelivered task (acks_late, worker lost) carries on with its job, if active.

        An active job simply runs again (its progress holds until this run passes it). A
        job already ended (the lost worker finished it before the message was acked) is
        left as it ended: this duplicate run gets an untracked tracker.
        """
        try:
            tracker.flush(timeout=self.wait_timeout)
        except TimeoutError:
            return  # Redis is slow or down: keep tracking, the tracker will catch up
        if tracker.ended:
            tracker.close()
            _trackers[task_id] = untracked()
            log.info("celery_redelivered_job_already_ended", task_id=task_id)

    def _on_success(self, sender: Any = None, result: Any = None, **_: Any) -> None:
        if not self._ours(sender):
            return
        tracker = _trackers.get(sender.request.id)
        if tracker is None or tracker.ended:
            return
        stored, reason = storable_result(result)
        if reason is not None:
            log.info("job_result_omitted", job_id=sender.request.id, reason=reason)
        tracker.complete(stored)

    def _on_failure(
        self,
        sender: Any = None,
        task_id: str = "",
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        if not self._ours(sender) or not task_id:
            return
        if is_cancel(exception):
            self._end(task_id, lambda job: job.cancel("Cancelled on request"))
        else:
            error = describe_error(exception)
            self._end(task_id, lambda job: job.fail(error))

    def _on_retry(
        self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any
    ) -> None:
        if not self._ours(sender) or request is None or not request.id:
            return
        attempt = int(request.retries or 0) + 2
        max_retries = sender.max_retries
        # Unlimited retries (max_retries=None) have no "of m": the attempt stands for both.
        max_attempts = attempt if max_retries is None else max(int(max_retries) + 1, attempt)
        cause = getattr(reason, "exc", None)
        text = describe_error(cause) if isinstance(cause, BaseException) else str(reason)
        self._end(request.id, lambda job: job.retrying(attempt, max_attempts, text))

    def _on_revoked(
        self,
        sender: Any = None,
        request: Any = None,
        terminated: bool = False,
        expired: bool = False,
        **_: Any,
    ) -> None:
        if not self.enabled or request is None or not getattr(request, "id", None):
            return
        if sender is not None and getattr(sender, "app", self.app) is not self.app:
            return
        why = "Expired before it ran" if expired else "Revoked"
        why += " (terminated)" if terminated else ""
        self._end(request.id, lambda job: job.cancel(why))

    def _on_postrun(self, task_id: str = "", **_: Any) -> None:
        tracker = _trackers.pop(task_id, None)
        if tracker is not None:
            tracker.close()

    def _end(self, task_id: str, call: Callable[[SyncTracker], None]) -> None:
        """Make `call` on the task's tracker, or on one opened for it here and now."""
        tracker = _trackers.get(task_id)
        if tracker is not None:
            if not tracker.ended:
                _call_anyway(tracker, call)
            return
        try:
            with SyncTracker(self.broker_url, task_id, **self.options) as job:
                _call_anyway(job, call)
        except ValueError as exc:
            log.error("celery_task_untracked", task_id=task_id, reason=str(exc))


def _call_anyway(tracker: SyncTracker, call: Callable[[SyncTracker], None]) -> None:
    """Make the call; a retry announced after a cancel request cancels the job instead."""
    try:
        call(tracker)
    except JobCancelled:
        # End calls never raise it (docs/api.md §9); `retrying` does: the person asked
        # for the job to stop, so it stops here rather than waiting for the next attempt.
        tracker.cancel("Cancelled on request")


def is_cancel(exc: BaseException | None) -> bool:
    """True for `pubsub.JobCancelled`, also as Celery's wrapper of an unpicklable one."""
    if isinstance(exc, JobCancelled):
        return True
    return getattr(exc, "exc_cls_name", None) == JobCancelled.__name__


def track(
    celery_app: celery.Celery,
    broker_url: str,
    *,
    announce_timeout: float = DEFAULT_ANNOUNCE_TIMEOUT,
    **options: Unpack[TrackerOptions],
) -> CeleryTracking:
    """Make every task of `celery_app` a job on `broker_url` (the hub's Redis).

    Call it where the app is defined, so producers and workers both run it.

    Args:
        announce_timeout: how long `.delay()` waits, at most, for the job to be created.
        options: `SyncTracker` options for the tasks' trackers: `pipelines` (resolves
            `progress_pipeline` names; built-ins by default), `raise_on_cancel` (True
            here), `cancel_poll_interval`, `coalesce`, `close_timeout` (5 s here),
            `history`, `retention`.
    """
    global _fork_hook_set
    register_not_failure(Retry)
    with _fork_hook:
        if not _fork_hook_set:
            # A child of the prefork pool must never use a tracker of its parent.
            os.register_at_fork(after_in_child=_forget_after_fork)
            _fork_hook_set = True
    return CeleryTracking(celery_app, broker_url, announce_timeout=announce_timeout, **options)


def current_tracker() -> SyncTracker:
    """The `SyncTracker` of the task running in this thread (a no-op one outside a task)."""
    task = celery.current_task
    request_id = getattr(getattr(task, "request", None), "id", None) if task else None
    tracker = _trackers.get(request_id) if request_id else None
    return tracker if tracker is not None else untracked()


def _forget_after_fork() -> None:
    _trackers.clear()
