"""Running a piece of a test in a plain thread of its own, and hearing what went wrong there."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_in_thread(target: Callable[..., Any], *args: Any, timeout: float, what: str) -> None:
    """Run `target(*args)` in a new thread (no event loop there), wait at most `timeout`
    seconds, and re-raise in the caller whatever it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:  # handed to the test thread, which re-raises it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{what} did not finish within {timeout} s"
    if errors:
        raise errors[0]
