"""How `progress-hub serve` tunes its own process: its garbage collector, and its memory
kept off transparent huge pages. Both measured in docs/performance.md."""

from __future__ import annotations

import ctypes
import gc
import sys
from typing import Final

import structlog

log = structlog.get_logger(__name__)

GC_YOUNG_THRESHOLD: Final = 50_000
# <linux/prctl.h>: the process and its children get no transparent huge pages.
PR_SET_THP_DISABLE: Final = 41


def tune_gc() -> None:
    """Collect garbage less often than CPython's default, for a process that holds many
    long-lived objects (every open stream) and allocates briskly (every connect).

    With the default threshold (700 allocations), a hub opening 5,000 streams ran 880
    young collections, each walking objects that live as long as their stream: 360 µs
    of CPU per connect, against 212 µs with this setting (docs/performance.md, /proc CPU
    over 5,000 connects). Garbage cycles wait a little longer, a few MB at most. `gc.freeze()` moves
    what start-up built (modules, the app) out of every later collection's way.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def keep_off_huge_pages() -> bool:
    """Ask Linux for no transparent huge pages in this process (and its children: the
    embedded server, the workers); True when it agreed.

    Where the machine's setting is `always`, the kernel backs the allocators' arenas with
    2 MiB pages, so memory the hub touched once stays resident in 2 MiB steps: over the
    12,000 jobs of `python -m bench --only growth` that read 85 and 94 B/job against
    34–46 B/job without (docs/performance.md, eighth session). Redis does the same for
    its own process (its `disable-thp` setting, on by default). Elsewhere, a no-op.
    """
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0:
        return True
    log.info("huge_pages_left_on", errno=ctypes.get_errno())
    return False
