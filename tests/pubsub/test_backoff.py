"""pubsub/backoff.py: the one backoff formula, and the outage schedule built on it."""

from __future__ import annotations

import pytest

from pubsub.backoff import FIRST_DELAY, MAX_DELAY, Outage, backoff


def test_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    assert [backoff(n) for n in range(9)] == [0.05, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert backoff(10**9, 1.0, 30.0) == 30.0  # no overflow, however long it failed


@pytest.mark.parametrize("failures", [1, 2, 5, 6, 100])
def test_jittered_backoff_stays_in_the_upper_half_of_its_delay(failures: int) -> None:
    ceiling = backoff(failures, 1.0, 30.0)
    delays = [backoff(failures, 1.0, 30.0, jitter=True) for _ in range(200)]
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 1, "jittered: many clients do not retry in step"


def test_an_outage_backs_off_until_a_success_and_the_next_starts_over() -> None:
    outage = Outage()
    assert outage.failed(10.0) is True and outage.retry_at == 10.0 + FIRST_DELAY
    assert [outage.failed(11.0) for _ in range(8)] == [False] * 8
    assert (outage.delay, outage.retry_at) == (MAX_DELAY, 11.0 + MAX_DELAY)
    assert outage.succeeded(12.5) == 2.5 and not outage.ongoing
    assert outage.succeeded(13.0) is None
    assert outage.failed(20.0) is True and outage.delay == FIRST_DELAY
