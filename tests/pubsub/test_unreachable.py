"""The library against a broker that is not there: the first warning names the address."""

from __future__ import annotations

from structlog.testing import capture_logs

from progress_hub.embedded import free_port
from pubsub import Tracker


async def test_tracker_first_warning_names_the_broker_address_and_what_to_check() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with capture_logs() as logs:
        async with Tracker.connect(url, "lost-1", close_timeout=0.5) as job:
            await job.set(10, "Working")
    first = logs[0]
    assert first["log_level"] == "warning" and first["event"] == "broker_unavailable"
    assert first["broker"] == url
    assert f"nothing answers at {url}" in first["check"]
    assert logs[-1]["event"] == "job_updates_lost" and logs[-1]["broker"] == url


async def test_tracker_warning_never_shows_the_brokers_password() -> None:
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0?password=x"
    with capture_logs() as logs:
        async with Tracker.connect(url, "lost-2", close_timeout=0.2) as job:
            await job.set(10)
    assert "hunter2" not in repr(logs) and "password=x" not in repr(logs)
