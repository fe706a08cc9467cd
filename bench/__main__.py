"""`python -m bench` (`make bench`): the performance benchmark (docs/performance.md).

Starts a private Redis, then for each scenario a fresh hub (and a fresh tutorial-pattern
baseline) in its own process, drives it from subscriber fleets in other processes, and
prints one table: scenario, figure, target, pass/miss, baseline and ratio. The run is
also written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console

from bench import cluster, growth, library, profile, regimes
from bench.fleet import percentile
from bench.load import http_publish, polling
from bench.procs import raise_fd_limit, redis_server
from bench.report import RESULTS, Report, Row, attempt, render, write_json
from bench.scenarios import (
    FULL,
    Context,
    FanoutFigures,
    ManyJobsFigures,
    Sizes,
    StreamFigures,
    delivery_check,
    delivery_raw,
    fanout,
    idle_streams,
    many_jobs,
    scaling,
)
from bench.targets import BaselineTarget, HubTarget, RawFeedTarget, Target, hub_available

SCENARIOS = (
    "streams", "fanout", "many", "library", "http", "poll", "scaling", "cluster",
    "seqpub", "manyhttp", "newjobs", "idle",
)  # fmt: skip
# Run only when named with --only: each takes about a minute (docs/performance.md).
OPT_IN = ("growth",)
console = Console(width=max(150, Console().width))


async def streams_rows(
    ctx: Context, report: Report, hub: Target | None, baseline: Target | None
) -> None:
    """Memory per idle stream and connect time, at each stream count."""
    for n in ctx.sizes.stream_counts:
        ours: StreamFigures | None = None
        theirs: StreamFigures | None = None
        if hub is not None:
            ours = await attempt(
                console, f"streams {n} hub", lambda: idle_streams(ctx, hub, n), ctx.raw
            )
        if baseline is not None and n <= ctx.sizes.baseline_max_streams:
            theirs = await attempt(
                console, f"streams {n} baseline", lambda: idle_streams(ctx, baseline, n), ctx.raw
            )
        for name, fig in (("hub", ours), ("baseline", theirs)):
            if fig is not None:
                ctx.raw[f"streams_{n}_{name}"] = {
                    "connected": fig.opened.connected, "failed": fig.opened.failed,
                    "seconds": fig.opened.seconds, "alive": fig.alive,
                    "rss_kib_per_stream": fig.rss_per_stream,
                    "connect_cpu_us": fig.connect_cpu_us,
                    "wait_p50_ms": fig.opened.wait_p50_ms, "wait_p99_ms": fig.opened.wait_p99_ms,
                    "errors": fig.opened.errors,
                }  # fmt: skip
        check = f"{ours.alive}/{n} alive after heartbeats" if ours else ""
        valid = ours is not None and ours.alive == n
        report.add(
            Row(
                f"memory per idle stream @ {n:,}",
                "KiB",
                ours.rss_per_stream if ours else None,
                20,
                False,
                theirs.rss_per_stream if theirs else None,
                valid,
                check,
            )
        )
        check = f"{ours.opened.connected}/{n} snapshots" if ours else ""
        note = ""
        if ours:
            note = (f"hub {ours.connect_cpu_us:.0f} µs CPU/connect, "
                    f"p99 wait {ours.opened.wait_p99_ms:.0f} ms")  # fmt: skip
        report.add(
            Row(
                f"connect {n:,} streams",
                "s",
                ours.opened.seconds if ours else None,
                1.5 if n == 5_000 else None,
                False,
                theirs.opened.seconds if theirs else None,
                ours is not None and ours.opened.connected == n,
                check,
                note,
            )
        )


async def fanout_rows(
    ctx: Context, report: Report, hub: Target | None, baseline: Target | None
) -> None:
    """Paced latency and burst fan-out, 1 job x N subscribers."""
    ours: FanoutFigures | None = None
    theirs: FanoutFigures | None = None
    if hub is not None:
        ours = await attempt(console, "fan-out hub", lambda: fanout(ctx, hub), ctx.raw)
    if baseline is not None:
        theirs = await attempt(console, "fan-out baseline", lambda: fanout(ctx, baseline), ctx.raw)
    subs = ctx.sizes.fanout_subscribers
    for name, fig in (("hub", ours), ("baseline", theirs)):
        if fig is not None:
            ctx.raw[f"fanout_{name}"] = {
                "burst": delivery_raw(fig.burst), "burst_rate": fig.burst_rate,
                "cpu_us": fig.cpu_us,
                "paced": {r: {**delivery_raw(d), "achieved_rate": a, "cpu_us": c}
                          for r, (d, a, c) in fig.paced.items()},
            }  # fmt: skip
    targets = {20: 25.0, 100: 50.0}
    for rate in ctx.sizes.paced_rates:
        mine = ours.paced[rate][0] if ours else None
        other = theirs.paced[rate][0] if theirs else None
        p99 = percentile(mine.latencies_ns, 99) / 1e6 if mine else None
        base = percentile(other.latencies_ns, 99) / 1e6 if other else None
        note = ""
        if mine is not None and ours is not None:
            p50 = percentile(mine.latencies_ns, 50) / 1e6
            _, sent, cpu_us = ours.paced[rate]
            note = f"p50 {p50:.1f} ms, {sent:.0f} ev/s sent, hub {cpu_us:.1f} µs CPU/deliv"
        report.add(
            Row(
                f"latency p99, {subs:,} subs × {rate} ev/s",
                "ms",
                p99,
                targets.get(rate),
                False,
                base,
                bool(mine and mine.complete),
                delivery_check(mine) if mine else "",
                note,
            )
        )
    burst = ours.burst if ours else None
    report.add(
        Row(
            f"fan-out burst 1 job × {subs:,}",
            "deliv/s",
            ours.burst_rate if ours else None,
            150_000,
            True,
            theirs.burst_rate if theirs else None,
            bool(burst and burst.complete),
            delivery_check(burst) if burst else "",
        )
    )
    slowest = min(ctx.sizes.paced_rates)
    paced = ours.paced.get(slowest) if ours else None
    report.add(
        Row(
            f"hub CPU per delivery, paced {slowest} ev/s (one event per write)",
            "µs",
            paced[2] if paced else None,
            12,
            False,
            theirs.paced[slowest][2] if theirs and slowest in theirs.paced else None,
            bool(paced and paced[0].complete),
            delivery_check(paced[0]) if paced else "",
        )
    )
    report.add(
        Row(
            "server CPU per delivery, burst (coalesced writes)",
            "µs",
            ours.cpu_us if ours else None,
            6,
            False,
            theirs.cpu_us if theirs else None,
            bool(burst and burst.complete),
            "burst phase, utime+stime",
            f"uncoalesced: {paced[2]:.1f} µs (paced row)" if paced else "",
        )
    )


async def many_rows(
    ctx: Context, report: Report, feeds: list[Target], baseline: Target | None
) -> None:
    """N jobs x 1 subscriber, for each way of feeding the hub, against the baseline."""
    theirs: ManyJobsFigures | None = None
    if baseline is not None:
        theirs = await attempt(
            console, "many jobs baseline", lambda: many_jobs(ctx, baseline), ctx.raw
        )
    if theirs is not None:
        ctx.raw["many_baseline"] = many_raw(theirs)
    for feed in feeds:
        ours = await attempt(
            console, f"many jobs {feed.name}", lambda: many_jobs(ctx, feed), ctx.raw
        )
        if ours is not None:
            ctx.raw[f"many_{feed.name}"] = many_raw(ours)
        note = ""
        if ours is not None:
            note = f"{ours.publish_rate:,.0f} ev/s published, hub {ours.cpu_us:.1f} µs CPU/deliv"
        report.add(
            Row(
                f"{ctx.sizes.many_jobs:,} jobs × 1 sub, fed by {feed.name}",
                "deliv/s",
                ours.rate if ours else None,
                60_000,
                True,
                theirs.rate if theirs else None,
                bool(ours and ours.delivery.complete),
                delivery_check(ours.delivery) if ours else "",
                note,
            )
        )


def many_raw(fig: ManyJobsFigures) -> dict[str, Any]:
    """A many-jobs result for the JSON record."""
    return {
        **delivery_raw(fig.delivery),
        "rate": fig.rate,
        "cpu_us": fig.cpu_us,
        "publish_rate": fig.publish_rate,
    }


async def run(args: argparse.Namespace) -> Report:
    """Every selected scenario, hub and baseline."""
    sizes = FULL if args.full else Sizes()
    chosen = set(args.only or SCENARIOS)
    report = Report(
        command=" ".join(shlex.quote(a) for a in ["python", "-m", "bench", *sys.argv[1:]]),
        sizes={k: getattr(sizes, k) for k in sizes.__slots__},
    )
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    console.log(f"fd limit {raise_fd_limit()}, server logs in {log_dir}")
    built = hub_available()
    if not built:
        console.log("[yellow]progress_hub.main is not importable: hub scenarios are skipped[/]")
    async with redis_server() as redis_url:
        profile_dir = None
        if args.profile:
            profile_dir = RESULTS
            for old in RESULTS.glob("profile-*"):
                old.unlink()
        ctx = Context(redis_url, sizes, log_dir, report.raw, profile_dir)
        hub_target = library.hub_target(redis_url) if built else None
        http_target = HubTarget() if built else None
        baseline = None if args.no_baseline else BaselineTarget()
        if "streams" in chosen:
            await streams_rows(ctx, report, http_target, baseline)
        if "fanout" in chosen:
            await fanout_rows(ctx, report, hub_target, baseline)
        if "many" in chosen:
            feeds = [hub_target, RawFeedTarget()] if hub_target is not None else []
            await many_rows(ctx, report, feeds, baseline)
        if "library" in chosen:
            await library.library_rows(ctx, report, console)
        if "http" in chosen:
            rate = None
            if http_target is not None:
                rate = await attempt(
                    console, "http publish", lambda: http_publish(ctx, http_target), ctx.raw
                )
            report.add(
                Row(
                    "HTTP publish",
                    "req/s",
                    rate.per_second if rate else None,
                    5_000,
                    True,
                    valid=bool(rate and not rate.bad),
                    check=f"{rate.ok} × 202, {rate.bad} other" if rate else "",
                    note=f"{rate.cpu_us:.0f} µs CPU/req" if rate else "",
                )
            )
        if "poll" in chosen:
            rates = None
            if http_target is not None:
                rates = await attempt(
                    console, "polling", lambda: polling(ctx, http_target), ctx.raw
                )
            for label, code, r in (
                ("200", 200, rates[0] if rates else None),
                ("304", 304, rates[1] if rates else None),
            ):
                report.add(
                    Row(
                        f"polling GET → {label}",
                        "req/s",
                        r.per_second if r else None,
                        8_000,
                        True,
                        valid=bool(r and not r.bad),
                        check=f"{r.ok} × {code}, {r.bad} other" if r else "",
                        note=f"{r.cpu_us:.0f} µs CPU/req" if r else "",
                    )
                )
            if rates:
                report.add(
                    Row(
                        "304 CPU/req vs 200's",
                        "µs",
                        rates[1].cpu_us,
                        rates[0].cpu_us,
                        False,
                        check="304 path must be cheaper",
                    )
                )
        if built:
            await regimes.regime_rows(ctx, report, console, chosen)
        if "growth" in chosen and built:
            await growth.growth_rows(
                ctx,
                report,
                console,
                args.growth_jobs,
                args.growth_streams,
                on_cluster="cluster" in chosen,
            )
        if "scaling" in chosen and built:
            await scaling_rows(ctx, report, lambda: library.hub_target(redis_url))
        if "cluster" in chosen and built:
            await cluster.cluster_rows(ctx, report, console)
    return report


async def scaling_rows(ctx: Context, report: Report, make: Callable[[], Target]) -> None:
    """Burst fan-out over 1 then 2 hub processes sharing one Redis."""
    figures = {}
    for hubs in (1, 2):
        fig = await attempt(console, f"scaling {hubs} hub(s)", lambda: scaling(ctx, make, hubs),
                            ctx.raw)  # fmt: skip
        if fig is not None:
            figures[hubs] = fig
            ctx.raw[f"scaling_{hubs}"] = {**delivery_raw(fig.delivery), "rate": fig.rate,
                                          "cpu_us": fig.cpu_us}  # fmt: skip
    one, two = figures.get(1), figures.get(2)
    note = ""
    if one and two:
        note = (
            f"1 hub {one.rate:,.0f}/s at {one.cpu_us:.1f} µs, 2 hubs {two.rate:,.0f}/s at "
            f"{two.cpu_us:.1f} µs; 2 cores shared with Redis and the fleet"
        )
    report.add(Row("burst speed-up, 2 hubs vs 1 on one Redis", "×",
                   two.rate / one.rate if one and two and one.rate else None, None, True,
                   valid=bool(one and two and one.delivery.complete and two.delivery.complete),
                   check=delivery_check(two.delivery) if two else "", note=note))  # fmt: skip


def summarise_profiles(folder: Path) -> Path:
    """Summarise every profile-*.txt in folder into profile-summary.md."""
    parts = []
    for raw in sorted(folder.glob("profile-*.txt")):
        parts.append(profile.render(profile.summarise(raw), raw.stem))
    out = folder / "profile-summary.md"
    out.write_text("\n".join(parts))
    return out


def quiet_library_logs() -> None:
    """The library logs every publish at debug; the bench publishes hundreds of thousands."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def main() -> None:
    """Parse flags, run, print the table and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--full", action="store_true", help="the sizes named in docs/performance.md"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS + OPT_IN,
        help="run only this scenario (repeatable)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the tutorial app")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    parser.add_argument(
        "--growth-jobs",
        type=int,
        default=growth.MEASURED_JOBS,
        help="jobs the growth scenario follows after its warm-up, RSS read every "
        f"{growth.READING_EVERY:,}; past {growth.MEASURED_JOBS:,}, a second row gives the "
        f"growth over the last {growth.MEASURED_JOBS:,}",
    )
    parser.add_argument(
        "--growth-streams",
        type=int,
        default=0,
        help="also this many streams to one finished job (per connection, no new job)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the servers during connect, paced, burst and many-jobs phases",
    )
    args = parser.parse_args()
    import uvloop

    quiet_library_logs()
    report = uvloop.run(run(args))
    render(report, console)
    path = write_json(report, args.json)
    console.print(f"written {path}")
    if args.profile:
        summary = summarise_profiles(RESULTS)
        console.print(f"profiles summarised in {summary}")


if __name__ == "__main__":
    main()
