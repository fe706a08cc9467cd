"""`python -m bench.heapsites`: the C allocation sites that keep what a hub grows by.

heaptrack (Debian's `heaptrack` package, with `gdb`) is attached to a `progress-hub
serve` after the growth bench's warm-up (bench/growth.py), records while `--jobs` more
jobs are followed once each, and is detached once the hub holds no stream again. What
it then reports as leaked was allocated inside that window and is still held: the
growth, by C call stack, plus whatever a bounded cache turned over (its new entries
are counted, the old ones it freed were allocated before the window and are not). Run
it with two window sizes and diff them (`heaptrack_print -d small.zst -f large.zst`)
to keep only what scales with the jobs; docs/performance.md (growth per job) has the
figures.

pymalloc takes its 1 MiB arenas with `mmap`, which heaptrack does not see: objects of
up to 512 bytes show only with `--malloc` (`PYTHONMALLOC=malloc` in the hub), which
changes the process measured (every object in glibc's heap).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
from pathlib import Path

from bench.growth import WARM_UP_JOBS, Client, complete_job, create_job, follow_all, rss_settled
from bench.procs import Server, flush_redis, redis_server
from bench.targets import HubTarget

INJECT_DEADLINE = 60.0
GDB_STOP = (
    "gdb", "--batch-silent", "-n", "-iex", "set auto-solib-add off",
    "-ex", "sharedlibrary libheaptrack_inject",
    "-ex", "call (void) heaptrack_stop()",
    "-ex", "detach",
)  # fmt: skip


async def _attach(pid: int, out: Path) -> asyncio.subprocess.Process:
    """heaptrack injected into `pid`, recording to `out`.zst; returns once it records."""
    tracer = await asyncio.create_subprocess_exec(
        "heaptrack", "-o", str(out), "-p", str(pid),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert tracer.stdout is not None
    async with asyncio.timeout(INJECT_DEADLINE):
        while b"injection finished" not in (line := await tracer.stdout.readline()):
            if not line:
                raise RuntimeError(f"heaptrack exited before it attached to {pid}")
    return tracer


async def _detach(pid: int, tracer: asyncio.subprocess.Process) -> None:
    """Stop the recording in the process (it runs on), then let heaptrack finish writing."""
    stop = await asyncio.create_subprocess_exec(
        *GDB_STOP[:1], "-p", str(pid), *GDB_STOP[1:],
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await stop.wait()
    await tracer.communicate()


async def record(jobs: int, warm_up: int, one_job: bool, out: Path) -> tuple[int, int]:
    """Warm a hub up, record `jobs` jobs (or streams to one finished job) under heaptrack;
    the hub's RSS before and after the window."""
    async with redis_server() as redis_url:
        await flush_redis(redis_url)
        async with HubTarget().server(redis_url, out.parent) as srv:
            finished = await _finished_job(srv) if one_job else None
            await follow_all(srv.port, "warm", warm_up, finished)
            before = await rss_settled(srv)
            tracer = await _attach(srv.proc.pid, out)
            await follow_all(srv.port, "grow", jobs, finished)
            after = await rss_settled(srv)
            await _detach(srv.proc.pid, tracer)
    return before, after


async def _finished_job(srv: Server) -> str:
    http = Client(srv.port)
    try:
        await create_job(http, "finished")
        await complete_job(http, "finished")
    finally:
        await http.aclose()
    return "finished"


def main() -> None:
    """Parse flags, record, write `OUT.zst` and the leaks report `OUT.txt`."""
    parser = argparse.ArgumentParser(prog="python -m bench.heapsites", description=__doc__)
    parser.add_argument("--jobs", type=int, default=6_000, help="jobs in the recorded window")
    parser.add_argument("--warm-up", type=int, default=WARM_UP_JOBS, help="jobs before it")
    parser.add_argument("--one-job", action="store_true", help="streams to one finished job")
    parser.add_argument("--malloc", action="store_true", help="PYTHONMALLOC=malloc in the hub")
    parser.add_argument("--out", type=Path, required=True, help="output path, no suffix")
    parser.add_argument("--peaks", type=int, default=25, help="leak sites printed")
    args = parser.parse_args()
    for tool in ("heaptrack", "heaptrack_print", "gdb"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (apt-get install heaptrack gdb)")
    if args.malloc:
        os.environ["PYTHONMALLOC"] = "malloc"  # the hub's, not this process's (read at start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import uvloop

    before, after = uvloop.run(record(args.jobs, args.warm_up, args.one_job, args.out))
    report = subprocess.run(
        ["heaptrack_print", "-f", f"{args.out}.zst", "-l", "-p", "0", "-a", "0", "-T", "0",
         "-n", str(args.peaks)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    head = (
        f"window: {args.jobs:,} {'streams to one finished job' if args.one_job else 'jobs'} "
        f"after {args.warm_up:,}; PYTHONMALLOC={'malloc' if args.malloc else 'pymalloc'}; "
        f"RSS {before // 1024:,} -> {after // 1024:,} KiB "
        f"({(after - before) / args.jobs:+.0f} B each)\n"
    )
    Path(f"{args.out}.txt").write_text(head + report)
    print(head, end="")
    print(f"leaks report: {args.out}.txt")


if __name__ == "__main__":
    main()
