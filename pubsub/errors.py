"""The one error hierarchy of progress-hub: raised precisely here, translated once at the edge."""

from __future__ import annotations


class ProgressError(Exception):
    """Base of every error progress-hub raises on purpose."""


class JobNotFound(ProgressError):
    """The job does not exist, or has expired."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"Job {job_id!r} does not exist or has expired.")


class NoResult(ProgressError):
    """The job exists but has no result (yet)."""

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(
            f"Job {job_id!r} has no result (it is {status}): a result is stored when the "
            "job completes with one."
        )


class JobExists(ProgressError):
    """A job with this id already exists."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"Job {job_id!r} already exists.")


class JobTerminal(ProgressError):
    """The job reached a terminal status and accepts no further updates."""

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"Job {job_id!r} is {status} and accepts no further updates.")


class JobCancelled(ProgressError):
    """Raised into pipeline code by a tracker made with `raise_on_cancel=True` once the job
    was asked to cancel (docs/api.md §9); leaving the tracker's `with` block with it
    records the job `cancelled`."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"Job {job_id!r} was asked to cancel.")


class InvalidUpdate(ProgressError):
    """An update, job id or query failed validation; nothing was changed."""

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        where = f" (at {field})" if field else ""
        super().__init__(f"{reason}{where}")


class IdempotencyKeyReused(ProgressError):
    """An `Idempotency-Key` the job holds for a different update; nothing was changed."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"Job {job_id!r} already applied an update under this Idempotency-Key, with a "
            "different body: a retry repeats the body byte for byte, and a new update "
            "takes a new key."
        )


class PayloadTooLarge(ProgressError):
    """A body, result or metadata is over its size limit."""

    def __init__(self, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        super().__init__(f"{what} is over the limit of {limit} bytes.")


class BrokerUnavailable(ProgressError):
    """The broker (Redis) cannot be reached right now; try again later."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        suffix = f": {detail}" if detail else ""
        super().__init__(f"The broker is unreachable{suffix}. Try again shortly.")


class ReplicasUnconfirmed(BrokerUnavailable):
    """An update reached its master, but fewer replicas than asked confirmed it in time:
    it is not acknowledged, and its retry is applied once (docs/api.md §8)."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        super().__init__(f"fewer than {replicas} replicas confirmed in time")

    @property
    def hint(self) -> str:
        """What to check (for the outage log lines)."""
        return (
            f"the master answers, but fewer than {self.replicas} of its replicas confirm "
            "writes: are they attached and in sync (INFO replication), and does "
            "PROGRESS_BROKER_REPLICAS ask for no more than each master has?"
        )


class AccessDenied(ProgressError):
    """The caller may not do this: no credentials (401) or the wrong ones (403)."""

    def __init__(self, reason: str, *, authenticated: bool = True) -> None:
        self.reason = reason
        self.authenticated = authenticated
        super().__init__(reason)


class Overloaded(ProgressError):
    """This hub process is at its connection limit (streams included); try again shortly."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"This hub is at its limit of {limit} open connections. Try again shortly."
        )
