"""The workers' machine lock (tests/machine.py): shared tests overlap, a stress test runs alone."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from tests.conditions import wait_until
from tests.machine import LOCK, TURNSTILE, machine_share


def _held(path: Path, mode: int) -> bool:
    """Whether someone holds `path` in a way that refuses `mode` now (a probe that waits not)."""
    with open(path, "a") as probe:
        try:
            fcntl.flock(probe, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def _holder(
    folder: Path, exclusive: bool, log: list[str], name: str
) -> tuple[threading.Event, Callable[[], None]]:
    """A thread that takes the lock, logs `name`, and holds it until told to let go."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with machine_share(folder, exclusive=exclusive):
            log.append(name)
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()

    def let_go() -> None:
        release.set()
        thread.join(10)

    return entered, let_go


def test_machine_share_lets_shared_holders_overlap(tmp_path: Path) -> None:
    log: list[str] = []
    with ExitStack() as holders:
        for name in ("a", "b"):
            entered, let_go = _holder(tmp_path, False, log, name)
            holders.callback(let_go)
            assert entered.wait(10), f"shared holder {name} did not get in beside the other"
    assert sorted(log) == ["a", "b"]


def test_machine_share_exclusive_waits_for_shared_and_goes_before_later_ones(
    tmp_path: Path,
) -> None:
    log: list[str] = []
    first, let_first_go = _holder(tmp_path, False, log, "shared-1")
    assert first.wait(10)
    alone, let_alone_go = _holder(tmp_path, True, log, "exclusive")
    # It waits, holding the turnstile, for the shared holder to finish.
    wait_until(lambda: _held(tmp_path / TURNSTILE, fcntl.LOCK_EX), 10, "no turnstile taken")
    assert not alone.is_set() and _held(tmp_path / LOCK, fcntl.LOCK_EX)
    # Without the turnstile it would get in now, beside the first.
    later, let_later_go = _holder(tmp_path, False, log, "shared-2")
    let_first_go()
    assert alone.wait(10), "the exclusive holder did not get in once the shared one left"
    assert not later.is_set(), "a shared holder got in beside the exclusive one"
    let_alone_go()
    assert later.wait(10), "the later shared holder did not get in after the exclusive one"
    let_later_go()
    assert log == ["shared-1", "exclusive", "shared-2"]
