"""`progress-hub watch`: follow one job, or every job, from a terminal.

app/follow.py gets the updates (streaming, with polling as fallback);
app/watch_view.py draws them; this module is the command around both.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Final

import httpx
from rich.console import Console, RenderableType
from rich.live import Live

from progress_hub.follow import (
    EXIT_FAILED,
    EXIT_UNKNOWN,
    GIVE_UP_AFTER,
    POLL_INTERVAL,
    AllWatch,
    JobWatch,
    WatchStopped,
    nothing_active,
)
from progress_hub.watch_view import job_line, render_job, render_jobs
from pubsub import JobStatus, Snapshot

EXIT_COMPLETED: Final = 0
EXIT_INTERRUPTED: Final = 130
DEFAULT_URL: Final = "http://127.0.0.1:8000"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `watch` on the `progress-hub` command line."""
    watch = sub.add_parser("watch", help="follow a job (or --all jobs) in the terminal")
    watch.add_argument("job_id", nargs="?", help="the job to follow until it ends")
    watch.add_argument("--all", action="store_true", help="a live table of every job")
    watch.add_argument("--url", default=DEFAULT_URL, help=f"the hub (default {DEFAULT_URL})")
    watch.add_argument("--token", default=None, help="subscriber token, when the hub needs one")
    watch.add_argument(
        "--poll", action="store_true", help="poll instead of streaming (for proxies that break SSE)"
    )
    watch.add_argument(
        "--interval",
        type=float,
        default=POLL_INTERVAL,
        help=f"seconds between polls while polling (default {POLL_INTERVAL:g})",
    )
    watch.add_argument(
        "--until-idle", action="store_true", help="with --all: exit once no job is active"
    )
    watch.add_argument(
        "--give-up-after",
        type=float,
        default=GIVE_UP_AFTER,
        metavar="SECONDS",
        help=f"exit 3 when the hub has not answered for this long (default {GIVE_UP_AFTER:g}; "
        "0: never)",
    )


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run `progress-hub watch`; returns the exit code."""
    out = console or Console()
    err = Console(stderr=True) if console is None else console
    if args.all == bool(args.job_id):
        err.print("progress-hub watch: give a JOB_ID or --all, not both or neither")
        return EXIT_UNKNOWN
    with httpx.Client(base_url=args.url, timeout=httpx.Timeout(10.0)) as client:
        try:
            if args.all:
                return _watch_all(client, args, out)
            return _watch_job(client, args, out, err)
        except WatchStopped as exc:
            # One line, however narrow the terminal: the reason is what the user reads.
            err.print(f"[red]progress-hub watch: {exc}[/red]", soft_wrap=True, highlight=False)
            return exc.exit_code
        except KeyboardInterrupt:
            return EXIT_COMPLETED if args.all else EXIT_INTERRUPTED


@dataclass(slots=True)
class JobScreen:
    """What `watch JOB_ID` shows: the latest snapshot and how it arrives."""

    out: Console
    snapshot: Snapshot | None = None
    mode: str = "connecting"

    def view(self) -> RenderableType:
        """The renderable Live redraws."""
        return render_job(self.snapshot, self.mode) if self.snapshot else f"({self.mode})"

    def update(self, snapshot: Snapshot) -> None:
        """Take a new snapshot; without a terminal (CI logs, pipes) print a line per stage."""
        previous = self.snapshot
        self.snapshot = snapshot
        moved_on = previous is None or (previous.stage, previous.status) != (
            snapshot.stage,
            snapshot.status,
        )
        if moved_on and not self.out.is_terminal:
            self.out.print(job_line(snapshot), highlight=False)

    def set_mode(self, mode: str) -> None:
        """Take the connection's new mode."""
        self.mode = mode


def _watch_job(client: httpx.Client, args: argparse.Namespace, out: Console, err: Console) -> int:
    screen = JobScreen(out)
    watch = JobWatch(
        client,
        args.job_id,
        screen.update,
        screen.set_mode,
        token=args.token,
        poll_only=args.poll,
        poll_interval=args.interval,
        give_up_after=args.give_up_after,
    )
    # Without a terminal Live would print its last frame again: the lines suffice.
    with Live(
        get_renderable=screen.view, console=out, refresh_per_second=4, transient=not out.is_terminal
    ):
        final = watch.follow()
    if final.status is JobStatus.COMPLETED:
        out.print(f"[green]✓ {final.job_id} completed[/green]", highlight=False)
        return EXIT_COMPLETED
    reason = f": {final.error}" if final.error else ""
    err.print(f"[red]✗ {final.job_id} {final.status.value}{reason}[/red]", highlight=False)
    return EXIT_FAILED


def _watch_all(client: httpx.Client, args: argparse.Namespace, out: Console) -> int:
    state: dict[str, str] = {"mode": "connecting"}
    watch = AllWatch(
        client,
        on_change=lambda jobs: None,
        on_mode=lambda mode: state.__setitem__("mode", mode),
        stop=nothing_active if args.until_idle else (lambda jobs: False),
        token=args.token,
        poll_only=args.poll,
        poll_interval=args.interval,
        give_up_after=args.give_up_after,
    )
    with Live(
        get_renderable=lambda: render_jobs(watch.jobs, state["mode"], out.size.height - 7),
        console=out,
        refresh_per_second=2,
    ):
        watch.follow()
    return EXIT_COMPLETED
