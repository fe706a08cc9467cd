"""The wire model: job snapshots, the updates that change them, and the broker envelope.

Every event is a full snapshot of one job (state, not delta), so any single event is
enough to render it (docs/api.md §1). All wire types are frozen msgspec Structs that refuse
unknown fields, decoded by typed decoders built once, so bad input fails at the door with
a message that names the field.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Final

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

JOB_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_JOB_ID_RE: Final = re.compile(JOB_ID_PATTERN)

MAX_MESSAGE_CHARS: Final = 1000
MAX_ERROR_CHARS: Final = 4000
MAX_META_BYTES: Final = 8 * 1024
MAX_RESULT_BYTES: Final = 1024 * 1024
MAX_ETA_SECONDS: Final = 10_000_000


class JobStatus(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for the statuses after which a job accepts no update."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: Final = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATUSES: Final = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING})
# docs/api.md §1: only a queued or running job stalls; a retrying one is waiting on purpose.
STALLABLE_STATUSES: Final = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

JobId = Annotated[str, Meta(pattern=JOB_ID_PATTERN)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Count = Annotated[int, Meta(ge=0)]
Attempt = Annotated[int, Meta(ge=1, le=1_000_000)]
Message = Annotated[str, Meta(max_length=MAX_MESSAGE_CHARS)]
ErrorText = Annotated[str, Meta(max_length=MAX_ERROR_CHARS)]
StageKey = Annotated[str, Meta(min_length=1, max_length=64)]
Seconds = Annotated[float, Meta(ge=0, le=MAX_ETA_SECONDS)]


class ChunkRef(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The chunk being worked on, with its page range when the work is paged."""

    index: Count
    page_start: Count | None = None
    page_end: Count | None = None


class Chunks(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Counters of chunked work inside a stage."""

    total: Count = 0
    completed: Count = 0
    failed: Count = 0
    current: ChunkRef | None = None


class Snapshot(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The full state of one job at one seq (docs/api.md §1)."""

    job_id: str
    seq: int
    status: JobStatus
    pipeline: str | None = None
    stage: str | None = None
    stage_label: str | None = None
    progress: float = 0.0
    message: str = ""
    chunks: Chunks | None = None
    attempt: int | None = None
    max_attempts: int | None = None
    eta_seconds: float | None = None
    error: str | None = None
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    has_result: bool = False
    created_at: float
    updated_at: float
    stalled: bool = False
    cancel_requested: bool = False
    """Someone asked to cancel the job (docs/api.md §9); its worker has not ended it yet."""

    @property
    def is_terminal(self) -> bool:
        """True once the job accepts no further updates."""
        return self.status.is_terminal


class ChunksPatch(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A change to a job's chunk counters: absolute values, increments, or both.

    `add_completed`/`add_failed` are increments applied to the stored counts, so several
    worker processes reporting chunks of one job keep the counts exact.
    """

    total: Count | UnsetType = UNSET
    completed: Count | UnsetType = UNSET
    failed: Count | UnsetType = UNSET
    current: ChunkRef | None | UnsetType = UNSET
    add_completed: Count | UnsetType = UNSET
    add_failed: Count | UnsetType = UNSET


class Update(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One publish: any subset of the fields a pipeline may change (docs/api.md §2)."""

    status: JobStatus | UnsetType = UNSET
    stage: StageKey | UnsetType = UNSET
    stage_progress: Fraction | UnsetType = UNSET
    progress: Percent | UnsetType = UNSET
    message: Message | UnsetType = UNSET
    chunks: ChunksPatch | None | UnsetType = UNSET
    error: ErrorText | None | UnsetType = UNSET
    result: Any | UnsetType = UNSET
    meta: dict[str, Any] | UnsetType = UNSET
    heartbeat: bool | UnsetType = UNSET
    attempt: Attempt | None | UnsetType = UNSET
    max_attempts: Attempt | None | UnsetType = UNSET
    eta_seconds: Seconds | UnsetType = UNSET


class CreateJob(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Body of `POST /api/jobs`."""

    job_id: JobId | UnsetType = UNSET
    pipeline: str | None = None
    meta: dict[str, Any] = msgspec.field(default_factory=dict)


class EventKind(enum.StrEnum):
    """What an envelope on the broker channel announces."""

    PROGRESS = "progress"
    DELETED = "deleted"


class Envelope(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What travels on the broker channel: one event kind and the job's snapshot."""

    event: EventKind
    snapshot: Snapshot


SNAPSHOT_DECODER: Final = msgspec.json.Decoder(Snapshot)
ENVELOPE_DECODER: Final = msgspec.json.Decoder(Envelope)
UPDATE_DECODER: Final = msgspec.json.Decoder(Update)
CREATE_DECODER: Final = msgspec.json.Decoder(CreateJob)
ENCODER: Final = msgspec.json.Encoder()


def encode_envelope(event: EventKind, snapshot_json: bytes) -> bytes:
    """The `Envelope` of an already encoded snapshot, without encoding it a second time."""
    return b'{"event":"%s","snapshot":%s}' % (event.value.encode(), snapshot_json)


def is_valid_job_id(job_id: str) -> bool:
    """True when `job_id` matches the contract's pattern."""
    return _JOB_ID_RE.fullmatch(job_id) is not None


def encode_meta(meta: dict[str, Any]) -> bytes:
    """Encode caller metadata, refusing anything over the contract's 8 KiB."""
    encoded = ENCODER.encode(meta)
    if len(encoded) > MAX_META_BYTES:
        raise ValueError(f"meta is {len(encoded)} bytes encoded; the limit is {MAX_META_BYTES}")
    return encoded
