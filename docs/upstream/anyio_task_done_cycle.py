"""The cyclic garbage one anyio task group leaves when its first finished task cancels the
rest (sse-starlette's `cancel_on_finish`, once per stream): docs/upstream/README.md.

    python docs/upstream/anyio_task_done_cycle.py

prints the objects `gc.collect()` finds per task group, by type, for anyio's task group
and for asyncio's own (3.11+), which leaves none.
"""

from __future__ import annotations

import asyncio
import collections
import gc
from collections.abc import Awaitable, Callable

import anyio

GROUPS = 100


async def anyio_group() -> None:
    async with anyio.create_task_group() as tg:

        async def finish() -> None:
            await anyio.sleep(0)
            tg.cancel_scope.cancel()

        tg.start_soon(finish)
        tg.start_soon(anyio.sleep_forever)
        tg.start_soon(anyio.sleep_forever)


async def asyncio_group() -> None:
    async with asyncio.TaskGroup() as tg:
        waiting = [tg.create_task(asyncio.sleep(3600)) for _ in range(2)]

        async def finish() -> None:
            await asyncio.sleep(0)
            for task in waiting:
                task.cancel()

        tg.create_task(finish())


async def main() -> None:
    gc.disable()
    groups: dict[str, Callable[[], Awaitable[None]]] = {
        "anyio": anyio_group,
        "asyncio.TaskGroup": asyncio_group,
    }
    for name, group in groups.items():
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        for _ in range(GROUPS):
            await group()
        found = gc.collect()
        kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
        print(f"{name}: {found / GROUPS:.1f} objects per group; {kinds.most_common(6)}")
        gc.set_debug(0)
        gc.garbage.clear()


if __name__ == "__main__":
    asyncio.run(main())
