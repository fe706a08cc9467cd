"""The key layout: partitions spread evenly over Redis Cluster slots, one slot per job."""

from __future__ import annotations

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from pubsub.brokers import keys


def test_partition_tags_land_in_their_own_share_of_the_slots() -> None:
    share = REDIS_CLUSTER_HASH_SLOTS // keys.PARTITIONS
    slots = [key_slot(tag.encode()) for tag in keys.PARTITION_TAGS]
    assert len(keys.PARTITION_TAGS) == keys.PARTITIONS
    assert [slot // share for slot in slots] == list(range(keys.PARTITIONS))


@pytest.mark.parametrize("job_id", ["a", "report-42", "x" * 128, "job:1.2_3"])
def test_keys_channel_and_index_of_a_job_share_one_slot(job_id: str) -> None:
    part = keys.partition(job_id)
    names = [
        *keys.job_keys(job_id),
        keys.job_channel(job_id),
        keys.index_key(part),
        keys.partition_channel(part),
    ]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert len(set(names)) == len(names)
