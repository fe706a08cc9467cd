"""The bench's output: one rich table and `bench/results/latest.json`."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
T = TypeVar("T")


async def attempt(
    console: Console, label: str, run: Callable[[], Awaitable[T]], raw: dict[str, Any]
) -> T | None:
    """Run one scenario for one target; a failure is logged and recorded, not fatal."""
    console.log(f"[bold]{escape(label)}[/] …")
    start = time.monotonic()
    # Other work on a shared machine moves absolute figures: keep the load beside them.
    raw.setdefault("loadavg", {})[label] = os.getloadavg()[0]
    try:
        result = await run()
    except (RuntimeError, OSError, TimeoutError, ValueError) as exc:
        console.log(f"[red]{escape(label)} failed:[/] {escape(repr(exc))}")
        raw.setdefault("errors", {})[label] = repr(exc)
        return None
    console.log(f"{escape(label)} done in {time.monotonic() - start:.1f}s")
    return result


@dataclass(slots=True)
class Row:
    """One figure of one scenario, with its target and the baseline's figure.

    Args:
        higher_is_better: direction of the target and of the ratio.
        valid: False when delivery was incomplete, so the figure cannot count.
        check: what was verified, e.g. "100000/100000 delivered".
    """

    scenario: str
    unit: str
    figure: float | None
    target: float | None
    higher_is_better: bool
    baseline: float | None = None
    valid: bool = True
    check: str = ""
    note: str = ""

    @property
    def passed(self) -> bool | None:
        """Met the target (None when there is no target or no figure)."""
        if self.target is None or self.figure is None:
            return None
        if not self.valid:
            return False
        if self.higher_is_better:
            return self.figure >= self.target
        return self.figure <= self.target

    @property
    def ratio(self) -> float | None:
        """How many times better than the baseline (>1: the hub is better)."""
        if self.figure is None or self.baseline is None or not self.figure or not self.baseline:
            return None
        if self.higher_is_better:
            return self.figure / self.baseline
        return self.baseline / self.figure


@dataclass(slots=True)
class Report:
    """Everything a run produced."""

    command: str
    sizes: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(self, row: Row) -> None:
        """Record a row."""
        self.rows.append(row)


def fmt(value: float | None) -> str:
    """A figure with a sensible number of digits."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def machine() -> dict[str, Any]:
    """Facts about this machine for the record."""
    mem_kib = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
        "loadavg_at_end": os.getloadavg(),
        "python": sys.version.split()[0], "platform": platform.platform(),
    }  # fmt: skip


def render(report: Report, console: Console) -> None:
    """Print the table."""
    table = Table(title="progress-hub bench (ratio > 1: hub better than the tutorial pattern)")
    for name, justify in [
        ("scenario", "left"),
        ("hub", "right"),
        ("target", "right"),
        ("", "center"),
        ("baseline", "right"),
        ("ratio", "right"),
        ("check", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        passed = row.passed
        mark = {True: "[green]pass[/]", False: "[red]miss[/]", None: ""}[passed]
        sign = "≥" if row.higher_is_better else "≤"
        target = f"{sign} {fmt(row.target)}" if row.target is not None else ""
        ratio = f"{row.ratio:.1f}×" if row.ratio is not None else ""
        check = row.check + (f" ({row.note})" if row.note else "")
        table.add_row(
            escape(f"{row.scenario} [{row.unit}]"),
            fmt(row.figure),
            target,
            mark,
            fmt(row.baseline),
            ratio,
            escape(check),
        )
    console.print(table)


def write_json(report: Report, path: Path | None = None) -> Path:
    """Write the run as JSON (bench/results/latest.json by default)."""
    path = path or RESULTS / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in report.rows:
        item = asdict(row)
        item["passed"] = row.passed
        item["ratio"] = row.ratio
        rows.append(item)
    data = {
        "command": report.command,
        "machine": machine(),
        "sizes": report.sizes,
        "started": report.started,
        "seconds": round(time.time() - report.started, 1),
        "rows": rows,
        "raw": report.raw,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
