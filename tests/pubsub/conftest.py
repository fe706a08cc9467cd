"""Fixtures for the publisher library: a job store on each broker backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pubsub.broker import open_broker
from pubsub.store import JobStore


@pytest.fixture
async def job_store(broker_url: str) -> AsyncIterator[JobStore]:
    """A job store on each backend in turn (memory, then the private Redis)."""
    broker = open_broker(broker_url)
    try:
        yield JobStore(broker)
    finally:
        await broker.aclose()
