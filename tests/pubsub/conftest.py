"""Fixtures for the publisher library: a job store on each broker backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pubsub.store import JobStore
from tests.conftest import store_on


@pytest.fixture
async def job_store(broker_url: str) -> AsyncIterator[JobStore]:
    """A job store on each backend in turn (memory, then the private Redis)."""
    async with store_on(broker_url) as store:
        yield store
