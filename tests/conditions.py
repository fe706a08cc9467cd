"""Waiting on a condition with a deadline, for async tests (never a fixed sleep)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

POLL_INTERVAL = 0.01


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float, message: str
) -> T:
    """Call `probe` until `accept` takes its answer; fail with `message` after `timeout` s."""
    try:
        with anyio.fail_after(timeout):
            while True:
                value = await probe()
                if accept(value):
                    return value
                await anyio.sleep(POLL_INTERVAL)
    except TimeoutError:
        raise AssertionError(f"{message} (within {timeout} s)") from None
