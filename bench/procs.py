"""Child processes of a bench run: a private Redis, the servers under test, /proc readings.

Every process started here is stopped by the context manager that started it, so an
interrupted run leaves nothing behind (docs/performance.md: "sets itself up").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from progress_hub.embedded import EmbeddedServer, stop_process

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
START_DEADLINE = 20.0


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard limit; return the new soft limit.

    Children inherit it, so the hub, Redis and the fleets can all hold many sockets.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True, slots=True)
class ProcStat:
    """CPU time (seconds, user+system) and resident memory (bytes) of a process tree."""

    cpu: float
    rss: int


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(OSError):
        for task in task_dir.iterdir():
            with contextlib.suppress(OSError):
                kids.extend(int(c) for c in (task / "children").read_text().split())
    return kids


def proc_stat(pid: int) -> ProcStat:
    """utime+stime from /proc/PID/stat and RSS from /proc/PID/statm, summed over descendants."""
    cpu = 0.0
    rss = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            statm = Path(f"/proc/{current}/statm").read_text()
        except OSError:
            continue
        # Field 2 (comm) may contain spaces: split after its closing parenthesis.
        fields = stat.rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        rss += int(statm.split()[1]) * PAGE_SIZE
        todo.extend(_children(current))
    return ProcStat(cpu=cpu, rss=rss)


async def wait_port(port: int, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until something accepts TCP connections on loopback:port, or fail at deadline."""
    end = time.monotonic() + deadline
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} at start")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(f"nothing listening on port {port} after {deadline}s") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    stop_process(proc, signal.SIGINT, grace)


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """A private, non-persistent Redis on a free port (the hub's own `EmbeddedServer`)."""
    server = EmbeddedServer(extra_args=["--maxclients", "19000"])
    # Started on this (the main) thread, on purpose: the server is tied to the thread
    # that forks it (see app.embedded), and a start takes milliseconds.
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


async def flush_redis(url: str) -> None:
    """Drop every key so each scenario starts from an empty store."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


@dataclass(slots=True)
class Server:
    """A server under test running in its own process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def stat(self) -> ProcStat:
        """CPU and RSS of the server process (and any children it forked)."""
        return proc_stat(self.proc.pid)


@contextlib.asynccontextmanager
async def server_process(
    name: str, cmd: Sequence[str], port: int, env: dict[str, str], log_path: Path
) -> AsyncIterator[Server]:
    """Run cmd (which must listen on 127.0.0.1:port); yield it once it accepts; stop it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    try:
        await wait_port(port, START_DEADLINE, proc)
        yield Server(name=name, port=port, proc=proc)
    finally:
        _stop(proc)


def python() -> str:
    """The interpreter running the bench (the project venv under `make bench`)."""
    return sys.executable
