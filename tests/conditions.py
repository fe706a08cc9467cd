"""Waiting on a condition with a deadline: the one way tests wait (never a fixed sleep).

`eventually` is for async tests, `wait_until` for sync tests and threads. Both poll,
fail with an `AssertionError` that says what did not happen and within how long, and
take an `interval` for probes that cost something (an HTTP request, a metrics scrape).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

import anyio

T = TypeVar("T")

POLL_INTERVAL = 0.01


def _failure(message: str, timeout: float) -> AssertionError:
    return AssertionError(f"{message} (within {timeout} s)")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    timeout: float,
    message: str,
    interval: float = POLL_INTERVAL,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    accept: Callable[[T], bool],
    timeout: float,
    message: str,
    interval: float = POLL_INTERVAL,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    accept: Callable[[Any], bool],
    timeout: float,
    message: str,
    interval: float = POLL_INTERVAL,
) -> Any:
    """Call `probe` (async or not) until `accept` takes its answer, which is returned;
    fail with `message` after `timeout` s."""
    try:
        with anyio.fail_after(timeout):
            while True:
                value = probe()
                if inspect.isawaitable(value):
                    value = await value
                if accept(value):
                    return value
                await anyio.sleep(interval)
    except TimeoutError:
        raise _failure(message, timeout) from None


def wait_until(
    condition: Callable[[], object], timeout: float, message: str, interval: float = POLL_INTERVAL
) -> None:
    """Block until `condition()` is true; fail with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise _failure(message, timeout)
        time.sleep(interval)
