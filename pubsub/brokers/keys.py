"""Where a job lives in Redis: its partition, its keys and its channels.

Jobs are spread over `PARTITIONS` partitions. Every key of a job, its channel, its
partition's index entry and its partition's every-job channel share the partition's hash
tag, so they hash to one Redis Cluster slot and one commit stays one atomic script (seq,
snapshot, history, index, publish). The tags are chosen, not numbered: bare `{0}`…`{63}`
land unevenly on the 16,384 slots, so each tag below is the first string found whose slot
falls in its partition's 1/64 of them (`tests/pubsub/test_keys.py` checks it), and any
even split of the slots between masters gives each about the same number of partitions.
This is how centrifugal/centrifuge spreads its Redis partitions too.

One layout on a single server and on a cluster: sharded pub/sub (`SPUBLISH`,
`SSUBSCRIBE`) works on a single Redis 7 as well.
"""

from __future__ import annotations

import zlib
from typing import Final

PARTITIONS: Final = 64
# PARTITION_TAGS[p]: the hash tag of partition p (see the module docstring).
PARTITION_TAGS: Final = (
    "p0-8", "p1-313", "p2-73", "p3-168", "p4-79", "p5-50", "p6-28", "p7-120",
    "p8-2", "p9-43", "p10-18", "p11-31", "p12-70", "p13-1", "p14-43", "p15-2",
    "p16-53", "p17-1", "p18-51", "p19-78", "p20-129", "p21-32", "p22-352", "p23-9",
    "p24-39", "p25-10", "p26-68", "p27-8", "p28-53", "p29-123", "p30-19", "p31-8",
    "p32-342", "p33-9", "p34-38", "p35-11", "p36-50", "p37-79", "p38-52", "p39-1",
    "p40-1", "p41-39", "p42-41", "p43-68", "p44-333", "p45-62", "p46-148", "p47-33",
    "p48-59", "p49-70", "p50-13", "p51-118", "p52", "p53-52", "p54-48", "p55-61",
    "p56-59", "p57-70", "p58-112", "p59-72", "p60-11", "p61-38", "p62-40", "p63-69",
)  # fmt: skip


def partition(job_id: str) -> int:
    """The partition a job belongs to, for its whole life."""
    return zlib.crc32(job_id.encode()) % PARTITIONS


def _prefix(part: int) -> str:
    return f"progress:{{{PARTITION_TAGS[part]}}}:"


def job_key(job_id: str) -> str:
    """Hash holding a job's `seq` and `record`."""
    return f"{_prefix(partition(job_id))}job:{job_id}"


def history_key(job_id: str) -> str:
    """Capped list of a job's retained snapshots, oldest first."""
    return f"{_prefix(partition(job_id))}history:{job_id}"


def result_key(job_id: str) -> str:
    """A job's stored result."""
    return f"{_prefix(partition(job_id))}result:{job_id}"


def milestones_key(job_id: str) -> str:
    """Hash of the milestone-gate cursors of a job's clients."""
    return f"{_prefix(partition(job_id))}milestones:{job_id}"


def writer_field(writer: str) -> str:
    """The field of a job's hash holding the number of a writer's latest update
    (`pubsub.broker.UpdateId`)."""
    return f"w:{writer}"


def job_keys(job_id: str) -> list[str]:
    """Every key of a job, in the order the Lua scripts take them."""
    return [job_key(job_id), history_key(job_id), result_key(job_id), milestones_key(job_id)]


def job_channel(job_id: str) -> str:
    """The sharded pub/sub channel of one job's events."""
    return f"{_prefix(partition(job_id))}events:{job_id}"


def index_key(part: int) -> str:
    """Sorted set of a partition's job ids, scored by creation time."""
    return f"{_prefix(part)}index"


def live_key(part: int) -> str:
    """Sorted set of a partition's jobs that can stall (queued or running, not flagged),
    scored by the time of their last update: the stall sweep reads only the quiet ones."""
    return f"{_prefix(part)}live"


def partition_channel(part: int) -> str:
    """The sharded channel carrying every event of a partition's jobs (`/api/events`)."""
    return f"{_prefix(part)}all"


# The layout before partitions (one index, a hash tag per job, plain PUBLISH), read only
# by `progress-hub migrate`.
LEGACY_INDEX_KEY: Final = "progress:jobs"


def legacy_job_keys(job_id: str) -> list[str]:
    """A job's keys in the layout before partitions, in `job_keys` order."""
    return [f"progress:{{{job_id}}}:{name}" for name in ("job", "history", "result", "milestones")]
