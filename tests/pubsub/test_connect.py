"""What an outage is called (`pubsub.brokers.connect.outage_detail`), for the errors
redis-py raises: the real ones are met in tests/app/test_tls_cluster.py; here each kind
is raised the way redis-py chains it, so that a refusal of ours is never taken for one."""

from __future__ import annotations

import ssl

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from pubsub.brokers.connect import address_of, outage_detail, translated_outage_at
from pubsub.errors import BrokerUnavailable


def _during(error: BaseException, handled: BaseException) -> BaseException:
    """`error` as raised while handling `handled` (redis-py's ConnectionError of an SSL
    error: implicit chaining)."""
    error.__context__ = handled
    return error


def _unverified() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate in certificate chain"
    return error


def _cluster_unreachable(cause: BaseException) -> BaseException:
    """What redis-py's cluster client raises when no startup node answers: `from` it."""
    error = RedisClusterException("Redis Cluster cannot be connected.")
    error.__cause__ = cause
    return error


REFUSED = (
    "the TLS certificate of 10.0.0.1:7000 was refused (self-signed certificate in "
    "certificate chain): ssl_ca_certs in the broker URL must name the CA that signed it, "
    "and the URL a host it was made for"
)


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (RedisConnectionError("Error 111 connecting"), "ConnectionError"),
        (_during(RedisConnectionError("Error 1 connecting"), _unverified()), REFUSED),
        (_cluster_unreachable(RedisConnectionError("Error 111")), "ConnectionError"),
        (_cluster_unreachable(_during(RedisConnectionError("Error 1"), _unverified())), REFUSED),
        # A refusal of the cluster client's own (keys of two slots, say): no outage.
        (RedisClusterException("Keys in request don't hash to the same slot"), None),
        (ValueError("not an outage"), None),
    ],
    ids=["refused", "tls", "cluster-refused", "cluster-tls", "cluster-own-refusal", "other"],
)
def test_outage_detail_names_the_cause_redis_py_chained(
    error: BaseException, detail: str | None
) -> None:
    assert outage_detail(error, "10.0.0.1:7000") == detail


async def test_translated_outage_raises_broker_unavailable_naming_its_address() -> None:
    url = "rediss://user:secret@10.0.0.1:7000/0?ssl_ca_certs=/ca.crt"
    with pytest.raises(BrokerUnavailable) as raised:
        async with translated_outage_at(address_of(url)):
            raise _cluster_unreachable(_during(RedisConnectionError("Error 1"), _unverified()))
    assert raised.value.detail == REFUSED
    assert "secret" not in str(raised.value)
