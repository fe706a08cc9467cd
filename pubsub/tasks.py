"""What the task-framework integrations share: results, error text, the no-op tracker.

Shared by the Celery and RQ integrations (docs/api.md §10), so both store the same
results, word failures the same way, and hand out the same tracker outside a task.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pubsub.errors import PayloadTooLarge
from pubsub.merge import encode_result
from pubsub.sync import SyncTracker

_untracked: SyncTracker | None = None


def storable_result(value: Any) -> tuple[Any, str | None]:
    """`(value, None)` when it can be the job's result; `(None, reason)` when it cannot.

    A result is text or JSON within 1 MiB (docs/api.md §4). Anything else (an object
    msgspec cannot encode as JSON, or too big) is left out rather than stored as its repr:
    a repr is neither the value nor readable by the code that fetches results.
    """
    if value is None:
        return None, None
    try:
        encode_result(value)
    except PayloadTooLarge as exc:
        return None, str(exc)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        return None, f"{type(value).__name__} is not text or JSON ({exc})"
    return value, None


def describe_error(exc: BaseException | None) -> str:
    """`"<ExceptionType>: <message>"`, or the type alone when the message is empty.

    Celery hands back exceptions it could not pickle wrapped; the wrapper names the
    original type and message, and those are what a person wants to read.
    """
    if exc is None:
        return "Failed"
    name = getattr(exc, "exc_cls_name", None) or type(exc).__name__
    message = getattr(exc, "exc_msg", None) if hasattr(exc, "exc_cls_name") else str(exc)
    return f"{name}: {message}" if message else str(name)


def untracked() -> SyncTracker:
    """The shared tracker that checks calls and publishes nothing (outside any task)."""
    global _untracked
    if _untracked is None:
        _untracked = SyncTracker("memory://", None)
    return _untracked
