"""`progress-hub migrate`: move jobs from the layout before partitions to today's, and list
live jobs for the stall sweep.

Before partitions every job had its own hash tag (`progress:{<id>}:job`, ...) and one
sorted set indexed them all (`progress:jobs`); today a job's keys carry its partition's tag
and each partition has its own index (`pubsub/brokers/keys.py`, docs/production.md
"Upgrading the key layout"). The move is one Lua script per job, so it is atomic per job:
an interrupted run leaves every job either wholly old or wholly moved, and running the
command again finishes the rest. `RENAME` keeps each key's value and its TTL, so seq,
record, history, result, milestone cursors and retention come through unchanged.

The old layout never ran on a Redis Cluster (it needs keys of many slots in one script),
so this runs on a single Redis only, and refuses a cluster: migrate first, then move the
data to a cluster if you want one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import redis

from pubsub.brokers import keys
from pubsub.events import STALLABLE_STATUSES
from pubsub.merge import RECORD_DECODER

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_CONFIG: Final = 2
BATCH: Final = 500
# A legacy job hash, and nothing of the partitioned layout (whose names end in `:<id>`,
# and ids hold no `}`).
LEGACY_JOB_PATTERN: Final = "progress:{*}:job"

MOVED: Final = 1
GONE: Final = 0
CONFLICT: Final = -1

# KEYS[1..4]: the job's legacy keys, KEYS[5..8]: its partitioned keys (`keys.job_keys`
# order), KEYS[9]: the legacy index, KEYS[10]: its partition's index.
# ARGV[1]: the job id, ARGV[2]: its creation time when the legacy index lacks it.
MOVE_JOB_SCRIPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- Expired (the index outlives its jobs until retention forgets them): drop the rest.
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('ZREM', KEYS[9], ARGV[1])
  return 0
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return -1
end
local score = redis.call('ZSCORE', KEYS[9], ARGV[1]) or ARGV[2]
for i = 1, 4 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 4])
  else
    redis.call('DEL', KEYS[i + 4])
  end
end
redis.call('ZADD', KEYS[10], score, ARGV[1])
redis.call('ZREM', KEYS[9], ARGV[1])
return 1
"""


@dataclass(slots=True)
class MigrationReport:
    """What one run did."""

    moved: int = 0
    gone: int = 0
    listed: int = 0
    """Jobs that can stall, entered in their partition's live index."""
    conflicts: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the terminal."""
        line = (
            f"progress-hub migrate: {self.moved} jobs moved to the partitioned layout, "
            f"{self.gone} expired index entries dropped, {self.listed} live jobs listed "
            f"for the stall sweep"
        )
        if self.conflicts:
            shown = ", ".join(self.conflicts[:10])
            line += (
                f"; {len(self.conflicts)} jobs exist in both layouts and were left as they "
                f"are (the partitioned copy is the one the hub serves): {shown}"
            )
        return line


class ClusterRefused(RuntimeError):
    """The URL names a Redis Cluster, where the old layout never lived."""

    def __init__(self) -> None:
        super().__init__(
            "this is a Redis Cluster; the layout before partitions only ever ran on a "
            "single Redis: run migrate there, before moving the data to a cluster"
        )


class Migration:
    """Moves every legacy job of one single Redis; `run()` may be called any number of times."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.move_job = client.register_script(MOVE_JOB_SCRIPT)

    def check_single(self) -> None:
        """Raise `ClusterRefused` when the server is a cluster node."""
        info: dict[str, Any] = self.client.info("cluster")
        if int(info.get("cluster_enabled", 0)):
            raise ClusterRefused()

    def run(self) -> MigrationReport:
        """Move the jobs the legacy index lists, then any legacy job hash it missed."""
        self.check_single()
        report = MigrationReport()
        for page in self._index_pages():
            self._move(page, report)
        for page in self._orphan_pages():
            self._move(page, report)
        for part in range(keys.PARTITIONS):
            self._list_live(part, report)
        return report

    def _list_live(self, part: int, report: MigrationReport) -> None:
        """Enter a partition's queued and running jobs in its live index, which the stall
        sweep reads (jobs written before it existed); `GT` keeps a later update's score."""
        cursor = 0
        while True:
            cursor, entries = self.client.zscan(keys.index_key(part), cursor, count=BATCH)
            ids = [_text(member) for member, _ in entries]
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(keys.job_key(job_id), "record")
            live: dict[str, float] = {}
            for job_id, raw in zip(ids, pipe.execute() if ids else [], strict=True):
                try:
                    snapshot = RECORD_DECODER.decode(raw).snapshot if raw else None
                except msgspec.DecodeError:
                    snapshot = None
                if snapshot and snapshot.status in STALLABLE_STATUSES and not snapshot.stalled:
                    live[job_id] = snapshot.updated_at
            if live:
                self.client.zadd(keys.live_key(part), live, gt=True)
                report.listed += len(live)
            if cursor == 0:
                return

    def _index_pages(self) -> Iterable[list[tuple[str, float]]]:
        """The legacy index, a page at a time (ZSCAN returns every member present throughout,
        so removing moved ones while scanning skips none)."""
        cursor = 0
        while True:
            cursor, entries = self.client.zscan(keys.LEGACY_INDEX_KEY, cursor, count=BATCH)
            if entries:
                yield [(_text(member), float(score)) for member, score in entries]
            if cursor == 0:
                return

    def _orphan_pages(self) -> Iterable[list[tuple[str, float]]]:
        """Legacy job hashes with no index entry (the old layout wrote the index by a
        separate command after the commit, so one could miss it); their records say when
        they were created."""
        prefix, suffix = len("progress:{"), len("}:job")
        cursor = 0
        while True:
            cursor, names = self.client.scan(cursor, match=LEGACY_JOB_PATTERN, count=BATCH)
            ids = [_text(name)[prefix:-suffix] for name in names]
            if ids:
                yield [(job_id, self._created_at(job_id)) for job_id in ids]
            if cursor == 0:
                return

    def _created_at(self, job_id: str) -> float:
        raw = self.client.hget(keys.legacy_job_keys(job_id)[0], "record")
        try:
            return RECORD_DECODER.decode(raw).snapshot.created_at if raw else 0.0
        except msgspec.DecodeError:
            return 0.0

    def _move(self, page: Sequence[tuple[str, float]], report: MigrationReport) -> None:
        """One pipelined round trip for a page of jobs, one atomic script per job."""
        pipe = self.client.pipeline(transaction=False)
        for job_id, created_at in page:
            script_keys = [
                *keys.legacy_job_keys(job_id),
                *keys.job_keys(job_id),
                keys.LEGACY_INDEX_KEY,
                keys.index_key(keys.partition(job_id)),
            ]
            self.move_job(keys=script_keys, args=[job_id, repr(created_at)], client=pipe)
        for (job_id, _), outcome in zip(page, pipe.execute(), strict=True):
            if outcome == MOVED:
                report.moved += 1
            elif outcome == GONE:
                report.gone += 1
            elif job_id not in report.conflicts:
                report.conflicts.append(job_id)


def _text(value: bytes | str | float) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `migrate` subcommand's flags."""
    migrate = sub.add_parser(
        "migrate", help="move jobs from the key layout before partitions (single Redis only)"
    )
    migrate.add_argument(
        "--broker-url",
        default=os.environ.get("PROGRESS_BROKER_URL"),
        help="the single Redis to migrate (default: PROGRESS_BROKER_URL)",
    )


def run(args: argparse.Namespace) -> int:
    """Run `progress-hub migrate`; print what it did."""
    if not args.broker_url:
        print("progress-hub migrate: set --broker-url or PROGRESS_BROKER_URL", file=sys.stderr)
        return EXIT_BAD_CONFIG
    client = redis.Redis.from_url(args.broker_url)
    try:
        report = Migration(client).run()
    except ClusterRefused as exc:
        print(f"progress-hub migrate: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except redis.RedisError as exc:
        print(f"progress-hub migrate: {exc} (safe to run again)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()
    print(report.summary())
    return EXIT_OK
