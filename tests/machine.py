"""Sharing the machine between pytest-xdist workers: a test that loads it on purpose runs alone.

`make test` runs the suite in two workers (`pytest -n 2`). A `stress` test puts its own
artificial load on the machine (spinning processes, many restarts) and judges the product
under exactly that load, and an `alone` test bounds a lag under a flood it makes itself; a
test of the other worker beside them would add load they did not choose, and would itself
run on a machine its deadlines were not meant for. So every test of a worker holds a
readers-writer lock of the run while it runs: shared for ordinary tests, exclusive for
`stress` and `alone` ones.

The lock is two `flock` files in the directory that the run's workers share
(https://pytest-xdist.readthedocs.io/en/stable/how-to.html, "Making session-scoped fixtures
execute only once"). The turnstile is what makes it fair: a stress test takes it first and
keeps it, so the other worker cannot take the shared lock again ahead of the waiting stress
test; it goes on as soon as the test running there ends.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TURNSTILE = "machine.turnstile"
LOCK = "machine.lock"


@contextmanager
def machine_share(folder: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the run's machine lock in `folder` for the block: alone if `exclusive`."""
    with open(folder / TURNSTILE, "a") as turnstile, open(folder / LOCK, "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
