"""How `progress-hub watch` draws jobs: rich renderables and plain lines.

The words match the dashboard's (static/format.js): "10/17, 1 failed",
"about 3 minutes left", "retrying, attempt 2/3".
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pubsub import Chunks, JobStatus, Snapshot

STATUS_STYLES: Final = {
    JobStatus.QUEUED: "dim",
    JobStatus.RUNNING: "bold blue",
    JobStatus.RETRYING: "bold yellow",
    JobStatus.COMPLETED: "bold green",
    JobStatus.FAILED: "bold red",
    JobStatus.CANCELLED: "dim",
}
MODE_STYLES: Final = {"live": "green", "polling": "cyan", "reconnecting": "yellow"}


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}{'' if count == 1 else 's'}"


def format_eta(seconds: float | None) -> str:
    """Time left in words, e.g. "about 3 minutes left"; '' when unknown."""
    if seconds is None or seconds < 0:
        return ""
    if seconds < 1:
        return "almost done"
    if seconds < 10:
        return "a few seconds left"
    if seconds < 60:
        return f"about {_plural(max(10, round(seconds / 5) * 5), 'second')} left"
    if seconds < 3570:
        return f"about {_plural(max(1, round(seconds / 60)), 'minute')} left"
    if seconds < 86400:
        hours, minutes = divmod(round(seconds / 60), 60)
        rest = f" {_plural(minutes, 'minute')}" if minutes else ""
        return f"about {_plural(hours, 'hour')}{rest} left"
    return "more than a day left"


def format_chunks(chunks: Chunks | None) -> str:
    """Chunk counters, "10/17" or "10/17, 1 failed"; '' without chunks."""
    if chunks is None or not chunks.total:
        return ""
    done = f"{chunks.completed}/{chunks.total}"
    return f"{done}, {chunks.failed} failed" if chunks.failed else done


def status_label(job: Snapshot) -> str:
    """The badge text: stalled beats running, retrying names its attempt."""
    if job.stalled and job.status in (JobStatus.RUNNING, JobStatus.QUEUED):
        return "stalled"
    if job.status is JobStatus.RETRYING and job.attempt:
        of = f"/{job.max_attempts}" if job.max_attempts else ""
        return f"retrying, attempt {job.attempt}{of}"
    return job.status.value


def _status_text(job: Snapshot) -> Text:
    style = "bold magenta" if status_label(job) == "stalled" else STATUS_STYLES[job.status]
    return Text(status_label(job), style=style)


def _bar(job: Snapshot, width: int | None) -> ProgressBar:
    style = "red" if job.status is JobStatus.FAILED else "green"
    return ProgressBar(total=100, completed=job.progress, width=width, finished_style=style)


def job_line(job: Snapshot) -> str:
    """One plain line for logs: id, status, percent, stage and message."""
    parts = [job.job_id, status_label(job), f"{int(job.progress)}%"]
    words = (job.stage_label or job.stage, job.message, format_chunks(job.chunks))
    parts += [word for word in words if word]
    if job.error:
        parts.append(f"error: {job.error}")
    return "  ".join(parts)


def render_job(job: Snapshot, mode: str) -> RenderableType:
    """The single-job screen: header, bar with percent and stage, then details."""
    header = Text.assemble(
        (job.job_id, "bold"),
        "  ",
        _status_text(job),
        "  ",
        (f"({mode})", MODE_STYLES.get(mode, "dim")),
    )
    bar = Table.grid(padding=(0, 1))
    bar.add_column(ratio=1)
    bar.add_column(justify="right", width=5)
    bar.add_column()
    bar.add_row(_bar(job, None), f"{int(job.progress)}%", job.stage_label or job.stage or "")
    details = [
        job.message,
        f"chunks {format_chunks(job.chunks)}" if job.chunks and job.chunks.total else "",
        "" if job.is_terminal else format_eta(job.eta_seconds),
    ]
    lines: list[RenderableType] = [header, bar, Text("  ·  ".join(d for d in details if d), "dim")]
    if job.error:
        lines.append(Text(job.error, "red"))
    return Group(*lines)


def _ago(updated_at: float, now: float) -> str:
    seconds = max(0.0, now - updated_at)
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    return f"{int(seconds // 3600)}h ago"


def render_jobs(jobs: Mapping[str, Snapshot], mode: str, max_rows: int) -> RenderableType:
    """The `--all` table, newest first, cut to what fits on the screen."""
    table = Table(
        title=Text.assemble("progress-hub  ", (f"({mode})", MODE_STYLES.get(mode, "dim"))),
        expand=True,
    )
    table.add_column("job", no_wrap=True, overflow="ellipsis", max_width=28)
    table.add_column("status", no_wrap=True)
    table.add_column("progress", min_width=10, ratio=1)
    table.add_column("%", justify="right", width=4)
    table.add_column("stage / message", ratio=2, overflow="ellipsis", no_wrap=True)
    table.add_column("chunks", no_wrap=True)
    table.add_column("eta", no_wrap=True)
    table.add_column("updated", justify="right", no_wrap=True)
    now = time.time()
    ordered = sorted(jobs.values(), key=lambda job: (job.created_at, job.job_id), reverse=True)
    for job in ordered[: max(1, max_rows)]:
        text = " — ".join(p for p in (job.stage_label or job.stage, job.error or job.message) if p)
        table.add_row(
            job.job_id,
            _status_text(job),
            _bar(job, None),
            f"{int(job.progress)}",
            Text(text, "red" if job.error else ""),
            format_chunks(job.chunks),
            "" if job.is_terminal else format_eta(job.eta_seconds),
            _ago(job.updated_at, now),
        )
    if len(ordered) > max_rows:
        table.caption = f"{len(ordered) - max_rows} older jobs not shown"
    return table
