"""The cluster fixture itself: a real cluster whose keys spread over three masters."""

from __future__ import annotations

import redis
from redis.crc import key_slot

from tests.cluster import RedisCluster


def test_cluster_fixture_serves_keys_from_every_master(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    client = redis.RedisCluster.from_url(cluster_url)
    try:
        for index in range(30):
            client.set(f"key-{index}", index)
        assert [int(client.get(f"key-{index}") or -1) for index in range(30)] == list(range(30))
        owners = {
            redis_cluster.master_of_slot(key_slot(f"key-{i}".encode())).port for i in range(30)
        }
    finally:
        client.close()
    assert len(redis_cluster.master_nodes()) == 3
    assert owners == {node.port for node in redis_cluster.master_nodes()}

