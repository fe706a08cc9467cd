"""The cluster scenario: one Redis node against a 3-master Redis Cluster (docs/api.md §8).

Two loads, each on both layouts, fed through the library as workers feed the hub:
- many jobs fanned out (`Sizes.many_jobs` jobs × 1 subscriber, `many_events` each):
  the hub's CPU per delivery, and each Redis process's CPU per commit it served;
- library publish from one process (`library_events` updates over 256 jobs, no hub
  streams): commits per second, and Redis CPU per commit on each shard.

Redis CPU comes from /proc (utime+stime) of each server process, found by `INFO server`
(`process_id`), read just around the load, and divided by the commits that landed on
that server (each job's slot says which). The cluster has no replicas here: on a 2-core
machine a replica's CPU would be taken from the masters it is measured against.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.crc import key_slot
from rich.console import Console

from bench.library import LibraryTarget, PublishRate
from bench.procs import proc_stat
from bench.report import Report, Row, attempt
from bench.scenarios import Context, ManyJobsFigures, delivery_check, many_jobs
from bench.targets import RawFeedTarget, Target
from pubsub.brokers import keys
from tests.cluster import RedisCluster, running_cluster

CLUSTER_MASTERS = 3
PUBLISH_JOBS = 256
PUBLISH_WORKERS = 64
MANY_WORKERS = 32


@dataclass(frozen=True, slots=True)
class Shard:
    """One Redis server process: where it listens, its pid, and the slots it serves."""

    port: int
    pid: int


@dataclass(frozen=True, slots=True)
class ShardCpu:
    """One shard's CPU over a load, and the commits it served."""

    port: int
    cpu: float
    commits: int

    @property
    def us_per_commit(self) -> float:
        """Microseconds of Redis CPU per commit this shard served."""
        return self.cpu * 1e6 / self.commits if self.commits else 0.0


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the jobs live: a name, a URL, its shards and which shard holds each slot."""

    name: str
    url: str
    shards: list[Shard]
    slot_ports: list[int] | None  # None: one node holds every slot

    def port_of(self, job_id: str) -> int:
        """The shard holding `job_id`."""
        if self.slot_ports is None:
            return self.shards[0].port
        return self.slot_ports[key_slot(keys.job_key(job_id).encode())]

    @contextmanager
    def measured(self, commits_per_job: dict[str, int], out: list[ShardCpu]) -> Iterator[None]:
        """Fill `out` with each shard's CPU over the block and the commits it served."""
        served = dict.fromkeys((shard.port for shard in self.shards), 0)
        for job_id, count in commits_per_job.items():
            served[self.port_of(job_id)] += count
        before = {shard.port: proc_stat(shard.pid).cpu for shard in self.shards}
        yield
        for shard in self.shards:
            cpu = proc_stat(shard.pid).cpu - before[shard.port]
            out.append(ShardCpu(shard.port, cpu, served[shard.port]))


def shard_of(url: str) -> Shard:
    """The server behind `url` (any Redis: `INFO server` names its process)."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    return Shard(port=int(info["tcp_port"]), pid=int(info["process_id"]))


def single_layout(url: str) -> Layout:
    """The bench's own Redis, as one node."""
    return Layout("1 node", url, [shard_of(url)], None)


def cluster_layout(cluster: RedisCluster) -> Layout:
    """The cluster's masters as shards."""
    shards = [shard_of(node.url) for node in cluster.master_nodes()]
    return Layout(f"{CLUSTER_MASTERS}-master cluster", cluster.url, shards, cluster.slot_ports())


@dataclass(slots=True)
class LayoutFigures:
    """Both loads on one layout."""

    many: ManyJobsFigures | None = None
    many_shards: list[ShardCpu] = dataclasses.field(default_factory=list)
    raw: ManyJobsFigures | None = None
    raw_shards: list[ShardCpu] = dataclasses.field(default_factory=list)
    publish: PublishRate | None = None
    publish_shards: list[ShardCpu] = dataclasses.field(default_factory=list)


async def many_jobs_on(
    ctx: Context, layout: Layout, shards: list[ShardCpu], target: Target
) -> ManyJobsFigures:
    """`bench.scenarios.many_jobs` fed by `target`, with Redis CPU per shard beside it."""
    return await many_jobs(
        ctx,
        target,
        MANY_WORKERS,
        redis_url=layout.url,
        measured=lambda jobs, events: layout.measured(dict.fromkeys(jobs, events), shards),
    )


async def library_publish_on(ctx: Context, layout: Layout, shards: list[ShardCpu]) -> PublishRate:
    """`bench.library.library_publish` (a hub runs, no streams), Redis CPU per shard beside."""
    target = LibraryTarget(layout.url)
    ids = [f"lib{i}" for i in range(PUBLISH_JOBS)]
    per_job = max(1, ctx.sizes.library_events // PUBLISH_JOBS)
    async with target.server(layout.url, ctx.log_dir):
        await target.create_jobs(ids)

        async def worker(mine: Sequence[str]) -> None:
            for index in range(1, per_job + 1):
                for job in mine:
                    await target.publish(job, index, per_job)

        with layout.measured(dict.fromkeys(ids, per_job), shards):
            start = time.monotonic()
            await asyncio.wait_for(
                asyncio.gather(*(worker(ids[w::PUBLISH_WORKERS]) for w in range(PUBLISH_WORKERS))),
                timeout=60 + ctx.sizes.library_events / 1_000,
            )
            seconds = time.monotonic() - start
    return PublishRate(per_job * PUBLISH_JOBS, seconds, PUBLISH_WORKERS)


async def measure(ctx: Context, console: Console, layout: Layout) -> LayoutFigures:
    """Both loads on `layout`, each from an empty store."""
    figures = LayoutFigures()
    label = f"cluster scenario, {layout.name}"
    await asyncio.to_thread(_flush, layout)
    figures.many = await attempt(
        console, f"{label}: many jobs",
        lambda: many_jobs_on(ctx, layout, figures.many_shards, LibraryTarget(layout.url)),
        ctx.raw,
    )  # fmt: skip
    await asyncio.to_thread(_flush, layout)
    figures.raw = await attempt(
        console, f"{label}: many jobs, raw SPUBLISH",
        lambda: many_jobs_on(
            ctx, layout, figures.raw_shards, RawFeedTarget(cluster=layout.slot_ports is not None)
        ),
        ctx.raw,
    )  # fmt: skip
    await asyncio.to_thread(_flush, layout)
    figures.publish = await attempt(
        console, f"{label}: library publish",
        lambda: library_publish_on(ctx, layout, figures.publish_shards), ctx.raw,
    )  # fmt: skip
    return figures


def _flush(layout: Layout) -> None:
    for shard in layout.shards:
        client = redis.Redis(host="127.0.0.1", port=shard.port)
        try:
            client.flushall()
        finally:
            client.close()


def _per_shard(shards: list[ShardCpu]) -> str:
    return ", ".join(f"{s.us_per_commit:.0f}" for s in shards) + " µs Redis CPU/commit"


def _raw(figures: LayoutFigures) -> dict[str, object]:
    many, publish, raw = figures.many, figures.publish, figures.raw
    return {
        "raw": None if raw is None else {
            "rate": raw.rate, "hub_cpu_us": raw.cpu_us, "publish_rate": raw.publish_rate,
            "complete": raw.delivery.complete,
        },
        "raw_shards": [dataclasses.asdict(s) for s in figures.raw_shards],
        "many": None if many is None else {
            "rate": many.rate, "hub_cpu_us": many.cpu_us, "publish_rate": many.publish_rate,
            "complete": many.delivery.complete,
        },
        "many_shards": [dataclasses.asdict(s) for s in figures.many_shards],
        "publish": None if publish is None else {
            "events": publish.events, "seconds": publish.seconds,
            "per_second": publish.per_second,
        },
        "publish_shards": [dataclasses.asdict(s) for s in figures.publish_shards],
    }  # fmt: skip


def add_rows(report: Report, name: str, figures: LayoutFigures, jobs: int) -> None:
    """The rows of one layout."""
    many, publish = figures.many, figures.publish
    report.add(
        Row(
            f"cluster: {jobs:,} jobs × 1 sub, library, {name}",
            "deliv/s",
            many.rate if many else None,
            None,
            True,
            valid=bool(many and many.delivery.complete),
            check=delivery_check(many.delivery) if many else "",
            note=f"{many.publish_rate:,.0f} commits/s; {_per_shard(figures.many_shards)}"
            if many
            else "",
        )
    )
    report.add(
        Row(
            f"cluster: hub CPU per delivery, {name}",
            "µs",
            many.cpu_us if many else None,
            None,
            False,
            valid=bool(many and many.delivery.complete),
            check="many-jobs phase, utime+stime of the hub",
        )
    )
    raw = figures.raw
    report.add(
        Row(
            f"cluster: {jobs:,} jobs × 1 sub, raw SPUBLISH, {name}",
            "deliv/s",
            raw.rate if raw else None,
            None,
            True,
            valid=bool(raw and raw.delivery.complete),
            check=delivery_check(raw.delivery) if raw else "",
            note=f"hub {raw.cpu_us:.1f} µs CPU/deliv; "
            + ", ".join(f"{s.us_per_commit:.1f}" for s in figures.raw_shards)
            + " µs Redis CPU/SPUBLISH"
            if raw
            else "",
        )
    )
    report.add(
        Row(
            f"cluster: library publish (1 process), {name}",
            "ev/s",
            publish.per_second if publish else None,
            None,
            True,
            check=f"{publish.events} updates committed" if publish else "",
            note=_per_shard(figures.publish_shards) if publish else "",
        )
    )


async def cluster_rows(ctx: Context, report: Report, console: Console) -> None:
    """The scenario: one node (the bench's Redis), then a fresh 3-master cluster."""
    single = await measure(ctx, console, single_layout(ctx.redis_url))
    ctx.raw["cluster_single"] = _raw(single)
    add_rows(report, "1 node", single, ctx.sizes.many_jobs)
    # Started from this (the main) thread: servers are tied to the thread that forks them.
    with running_cluster(masters=CLUSTER_MASTERS, replicas=0, node_timeout_ms=5000) as cluster:
        layout = cluster_layout(cluster)
        sharded = await measure(ctx, console, layout)
    ctx.raw["cluster_sharded"] = _raw(sharded)
    add_rows(report, layout.name, sharded, ctx.sizes.many_jobs)
