"""Subscriber fleets: processes holding many SSE streams, driven over stdin/stdout.

`python -m bench.fleet --port P` runs one fleet; it reads one JSON command per line and
answers each with one JSON line. `Fleet` is the orchestrator's handle on one or more such
processes (several when one process would run out of file descriptors).

Commands: `open` (n more streams, answered once all have their snapshot), `arm` (the next
event index every stream must reach), `wait` (until all armed streams reach it or the
timeout), `close`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from array import array
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import proc_stat, python, raise_fd_limit
from bench.sse import SseStream, Tally, stream_request

STREAMS_PER_PROCESS = 9_500  # under the 20,000 descriptor hard limit seen on this machine


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[rank])


class FleetProcess:
    """The child side: streams and a tally, commanded through stdin."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: list[SseStream] = []
        self.tally = Tally()

    async def open(
        self, n: int, offset: int, jobs: int, prefix: str, concurrency: int, timeout: float
    ) -> dict[str, Any]:
        """Open n streams, stream i watching job `prefix + (offset+i) % jobs`."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        waits: list[int] = []

        async def one(i: int) -> None:
            request = stream_request(f"{prefix}{(offset + i) % jobs}", self.port)
            async with gate:
                stream = SseStream(self.tally, request)
                try:
                    await loop.create_connection(lambda: stream, "127.0.0.1", self.port)
                    await asyncio.wait_for(stream.ready, timeout)
                except (OSError, TimeoutError) as exc:
                    if len(errors) < 3:
                        errors.append(repr(exc))
                    if stream.transport is not None:
                        stream.transport.close()
                    return
                self.streams.append(stream)
                waits.append(stream.ready_ns - stream.started_ns)

        start = time.monotonic_ns()
        await asyncio.gather(*(one(i) for i in range(n)))
        end = time.monotonic_ns()
        return {
            "connected": len(waits),
            "failed": n - len(waits),
            "errors": errors,
            "start_ns": start,
            "end_ns": end,
            "waits_ns": sorted(waits),
        }

    def arm(self, final: int, record: bool) -> dict[str, Any]:
        """Reset the tally: from now on every live stream must reach index `final`."""
        old = self.tally
        tally = Tally(final=final, record=record)
        live = [s for s in self.streams if not s.closed]
        for stream in self.streams:
            stream.tally = tally
            stream.finished = stream.closed or stream.last >= final
        tally.expected = sum(final - s.last for s in live if s.last < final)
        tally.remaining = sum(1 for s in live if not s.finished)
        tally.armed = True
        if tally.remaining == 0:
            tally.done.set()
        self.tally = tally
        old.latencies = array("q")
        return {"armed": len(live), "expected": tally.expected}

    async def wait(self, timeout: float, latency_path: str | None) -> dict[str, Any]:
        """Wait for every armed stream to reach the final index, then report."""
        tally = self.tally
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.done.wait(), timeout)
        tally.armed = False
        if latency_path is not None:
            with open(latency_path, "wb") as out:
                tally.latencies.tofile(out)
        return {
            "delivered": tally.delivered, "expected": tally.expected, "gaps": tally.gaps,
            "disorder": tally.disorder, "first_ns": tally.first_ns, "last_ns": tally.last_ns,
            "unfinished": tally.remaining, "closed": sum(1 for s in self.streams if s.closed),
            "latencies": len(tally.latencies),
        }  # fmt: skip

    def close(self) -> dict[str, Any]:
        """Close every stream."""
        for stream in self.streams:
            if stream.transport is not None:
                stream.transport.close()
        count = len(self.streams)
        self.streams.clear()
        return {"closed": count}

    async def serve(self) -> None:
        """Answer commands from stdin until `close` or end of input."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**24)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            name = cmd.pop("cmd")
            if name == "open":
                reply = await self.open(**cmd)
            elif name == "arm":
                reply = self.arm(**cmd)
            elif name == "wait":
                reply = await self.wait(**cmd)
            elif name == "close":
                reply = self.close()
            else:
                raise ValueError(f"unknown fleet command {name!r}")
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
            if name == "close":
                return


@dataclass(slots=True)
class Opened:
    """Streams opened by one `Fleet.open` call."""

    connected: int
    failed: int
    seconds: float
    wait_p50_ms: float
    wait_p99_ms: float
    errors: list[str]


@dataclass(slots=True)
class Delivery:
    """What the fleet received between `arm` and the end of `wait`."""

    delivered: int
    expected: int
    gaps: int
    disorder: int
    first_ns: int
    last_ns: int
    unfinished: int
    closed: int
    latencies_ns: list[int] = field(default_factory=list)
    client_cpu: float = 0.0

    @property
    def complete(self) -> bool:
        """Every event reached every subscriber, in order, none twice."""
        return (
            self.delivered == self.expected
            and self.gaps == 0
            and self.disorder == 0
            and self.unfinished == 0
        )

    @property
    def latest_state(self) -> bool:
        """Every subscriber ended on the final event (conflation allowed, no reordering)."""
        return self.unfinished == 0 and self.disorder == 0


class Fleet:
    """The orchestrator's handle on the fleet processes subscribing to one server."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs
        self.sizes = [0] * len(procs)

    @classmethod
    @contextlib.asynccontextmanager
    async def run(cls, port: int | Sequence[int], processes: int = 1) -> AsyncIterator[Fleet]:
        """Start `processes` fleet processes against 127.0.0.1:port; stop them at the end.

        With several ports (several servers sharing one Redis), process k subscribes to
        ports[k % len(ports)], so streams split evenly across the servers.
        """
        raise_fd_limit()
        ports = [port] if isinstance(port, int) else list(port)
        processes = max(processes, len(ports))
        procs = [
            await asyncio.create_subprocess_exec(
                python(), "-m", "bench.fleet", "--port", str(ports[k % len(ports)]),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=2**24,
            )
            for k in range(processes)
        ]  # fmt: skip
        fleet = cls(procs)
        try:
            yield fleet
        finally:
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(fleet._ask(proc, {"cmd": "close"}), 10)
                    if proc.returncode is None:
                        proc.kill()
                    await proc.wait()

    def cpu(self) -> float:
        """CPU seconds used so far by the fleet processes (to tell if the client bounds a run)."""
        return sum(proc_stat(p.pid).cpu for p in self.procs)

    async def _ask(self, proc: asyncio.subprocess.Process, cmd: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fleet process exited ({proc.returncode}) during {cmd['cmd']}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def open(
        self, n: int, jobs: int, prefix: str, concurrency: int = 256, timeout: float = 30.0
    ) -> Opened:
        """Open n streams spread over the processes; job (i % jobs) for global stream i."""
        per = [
            n // len(self.procs) + (1 if k < n % len(self.procs) else 0)
            for k in range(len(self.procs))
        ]
        offset = sum(self.sizes)
        cmds = []
        for k, count in enumerate(per):
            cmds.append(
                {
                    "cmd": "open",
                    "n": count,
                    "offset": offset,
                    "jobs": jobs,
                    "prefix": prefix,
                    "timeout": timeout,
                    "concurrency": max(1, concurrency // len(self.procs)),
                }
            )
            offset += count
        replies = await asyncio.gather(*(self._ask(p, c) for p, c in zip(self.procs, cmds)))
        waits = sorted(w for r in replies for w in r["waits_ns"])
        for k, reply in enumerate(replies):
            self.sizes[k] += reply["connected"]
        start = min(r["start_ns"] for r in replies)
        end = max(r["end_ns"] for r in replies)
        return Opened(
            connected=sum(r["connected"] for r in replies),
            failed=sum(r["failed"] for r in replies),
            seconds=(end - start) / 1e9,
            wait_p50_ms=percentile(waits, 50) / 1e6,
            wait_p99_ms=percentile(waits, 99) / 1e6,
            errors=[e for r in replies for e in r["errors"]],
        )

    async def arm(self, final: int, record: bool = False) -> int:
        """Expect every stream to reach event index `final`; returns deliveries expected."""
        replies = await asyncio.gather(
            *(self._ask(p, {"cmd": "arm", "final": final, "record": record}) for p in self.procs)
        )
        return sum(int(r["expected"]) for r in replies)

    async def wait(self, timeout: float, latencies: bool = False) -> Delivery:
        """Wait until every armed stream has its final event (or timeout) and merge reports."""
        paths: list[str | None] = []
        for _ in self.procs:
            if latencies:
                fd, path = tempfile.mkstemp(prefix="bench-lat-")
                os.close(fd)
                paths.append(path)
            else:
                paths.append(None)
        replies = await asyncio.gather(*(
            self._ask(p, {"cmd": "wait", "timeout": timeout, "latency_path": path})
            for p, path in zip(self.procs, paths)
        ))  # fmt: skip
        values = array("q")
        for written in paths:
            if written is not None:
                values.frombytes(Path(written).read_bytes())
                os.unlink(written)
        firsts = [r["first_ns"] for r in replies if r["first_ns"]]
        return Delivery(
            delivered=sum(r["delivered"] for r in replies),
            expected=sum(r["expected"] for r in replies),
            gaps=sum(r["gaps"] for r in replies),
            disorder=sum(r["disorder"] for r in replies),
            first_ns=min(firsts) if firsts else 0,
            last_ns=max(r["last_ns"] for r in replies),
            unfinished=sum(r["unfinished"] for r in replies),
            closed=sum(r["closed"] for r in replies),
            latencies_ns=sorted(values),
        )


def main() -> None:
    """Entry point of one fleet process."""
    parser = argparse.ArgumentParser(description="SSE subscriber fleet (driven by stdin)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_fd_limit()
    import uvloop

    uvloop.run(FleetProcess(args.port).serve())


if __name__ == "__main__":
    main()
