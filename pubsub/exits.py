"""What an exception leaving a tracker's `with` block means for its job.

An exception fails the job, except the kinds registered here: control-flow exceptions of
task frameworks that say "this attempt stops, the task goes on", such as Celery's
`Retry` (raised by `self.retry()`). `pubsub.celery.track` registers Celery's; the core
never imports a task framework. A registered exception leaves the job as it is, for the
framework's own hooks to report (docs/publishing.md, "Celery").
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
# Process-wide on purpose: the tracker that sees the exception is often opened by user
# code that knows nothing of the integration (a `with SyncTracker(...)` inside a task).
_not_failures: tuple[type[BaseException], ...] = ()


def register_not_failure(exc_type: type[BaseException]) -> None:
    """Let `exc_type` leave a tracker's block without failing the job (idempotent)."""
    global _not_failures
    if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
        raise TypeError(f"expected an exception class, got {exc_type!r}")
    with _lock:
        if exc_type not in _not_failures:
            _not_failures = (*_not_failures, exc_type)


def fails_job(exc: BaseException | None) -> bool:
    """True when `exc`, leaving a tracker's block, should fail the job.

    Only errors (`Exception`) fail it: a cancelled or interrupted worker may be retried.
    """
    return isinstance(exc, Exception) and not isinstance(exc, _not_failures)
