"""Announcing queued jobs from the processes that enqueue them (Celery, RQ producers).

A producer (a web request calling `.delay()`) announces a job once and moves on, so a
tracker per job (its own connection, its own backlog) would cost far more than the one
write it makes. An `Announcer` keeps one connection per process, on a loop thread of its
own (the producer may be async code with a loop of its own running), and creates the job
only if it does not exist yet: a worker that already started it, or a retry re-published
by the worker itself, is never set back to `queued`.

A broker outage never reaches the producer: the announcement waits at most `timeout`
seconds, is logged and dropped, and the next ones are skipped for `quiet_after_outage`
seconds so a down Redis costs enqueuers nothing; the worker's first update creates the
job anyway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from typing import Any, Final

import structlog

from pubsub.broker import open_broker
from pubsub.errors import BrokerUnavailable, InvalidUpdate, JobExists, PayloadTooLarge
from pubsub.pipelines import PipelineRegistry
from pubsub.store import DEFAULT_HISTORY, DEFAULT_RETENTION, JobStore

log = structlog.get_logger(__name__)

DEFAULT_ANNOUNCE_TIMEOUT: Final = 2.0
DEFAULT_QUIET_AFTER_OUTAGE: Final = 5.0


class Announcer:
    """Creates queued jobs, if absent, from a producer process; thread- and fork-safe."""

    def __init__(
        self,
        broker_url: str,
        *,
        pipelines: PipelineRegistry | None = None,
        history: int = DEFAULT_HISTORY,
        retention: int = DEFAULT_RETENTION,
        timeout: float = DEFAULT_ANNOUNCE_TIMEOUT,
        quiet_after_outage: float = DEFAULT_QUIET_AFTER_OUTAGE,
    ) -> None:
        if not timeout > 0 or not quiet_after_outage >= 0:
            raise ValueError("timeout must be above 0 s and quiet_after_outage from 0 s")
        self.broker_url = broker_url
        self._pipelines = pipelines
        self._history, self._retention = history, retention
        self._timeout, self._quiet = timeout, quiet_after_outage
        self._lock = threading.Lock()
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: JobStore | None = None
        self._quiet_until = 0.0
        # A lock held by another thread at fork time would stay held in the child.
        os.register_at_fork(after_in_child=self._forget_after_fork)

    def announce(
        self, job_id: str, *, pipeline: str | None = None, meta: dict[str, Any] | None = None
    ) -> bool:
        """Create `job_id` as `queued` unless it exists; True when this call created it.

        Waits for Redis to confirm (so the job exists when the caller's enqueue returns),
        at most the announcer's `timeout`; never raises for a broker outage.
        """
        if time.monotonic() < self._quiet_until:
            return False
        loop, store = self._running()
        future = asyncio.run_coroutine_threadsafe(
            store.create(job_id, pipeline=pipeline, meta=meta), loop
        )
        try:
            future.result(self._timeout)
        except JobExists:
            return False
        except (BrokerUnavailable, concurrent.futures.TimeoutError) as exc:
            future.cancel()
            self._quiet_until = time.monotonic() + self._quiet
            log.warning("job_announce_skipped", job_id=job_id, error=str(exc) or "timeout")
            return False
        except (InvalidUpdate, PayloadTooLarge) as exc:
            # A pipeline this process does not know, meta over 8 KiB: the worker's tracker
            # will say so where the task's author looks; enqueueing goes on.
            log.error("job_announce_rejected", job_id=job_id, reason=str(exc))
            return False
        return True

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1

    def _running(self) -> tuple[asyncio.AbstractEventLoop, JobStore]:
        """This process's loop and store, started on first use (again after a fork)."""
        with self._lock:
            if self._pid != os.getpid() or self._loop is None or self._store is None:
                # A parent's loop thread does not exist in a forked child: start afresh,
                # leaving the parent's connection alone (its socket is the parent's).
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="progress-announcer", daemon=True
                )
                thread.start()
                self._loop, self._pid = loop, os.getpid()
                self._store = JobStore(
                    open_broker(self.broker_url),
                    self._pipelines,
                    history=self._history,
                    retention=self._retention,
                )
            return self._loop, self._store
