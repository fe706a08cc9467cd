"""Where the server's time goes: py-spy samples of a phase, summarised per function.

`python -m bench --profile` records the server during the connect, paced and burst
phases into bench/results/profile-*.txt (raw collapsed stacks) and prints the top
functions by own time and by inclusive time. Coroutine stacks resumed by the event loop
appear as separate roots in py-spy's output; inclusive time counts a function once per
sample wherever it appears, so it stays meaningful across those roots.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SAMPLE_RATE = 997  # Hz; prime, so it does not beat with the heartbeat ticker


def py_spy() -> str | None:
    """The py-spy binary next to the interpreter or on PATH (None: not installed)."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def recording(pid: int, out: Path | None) -> Iterator[None]:
    """Sample process pid with py-spy while the block runs (no-op when out is None)."""
    binary = py_spy()
    if out is None or binary is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE),
           "--format", "raw", "--output", str(out), "--nonblocking"]  # fmt: skip
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


@dataclass(frozen=True, slots=True)
class Summary:
    """Share of samples per function: own time (leaf) and inclusive time."""

    samples: int
    own: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]


def _name(frame: str) -> str:
    # py-spy raw frames read "function (path/to/file.py:line)".
    func, _, where = frame.partition(" (")
    if not where:
        return func
    return f"{func} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def summarise(path: Path, top: int = 25) -> Summary:
    """Read a py-spy raw file into the top functions by own and inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = [_name(f) for f in stack.split(";")]
        own[names[-1]] += n
        for name in set(names):
            inclusive[name] += n

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in counter.most_common(top)] if total else []

    return Summary(total, share(own), share(inclusive))


def render(summary: Summary, title: str) -> str:
    """A plain-text table of a summary."""
    lines = [f"## {title}: {summary.samples} samples", "", "own time:"]
    lines += [f"  {100 * s:5.1f}%  {name}" for name, s in summary.own]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * s:5.1f}%  {name}" for name, s in summary.inclusive]
    return "\n".join(lines) + "\n"
