"""How one update changes a job: the pure merge rules, shared by every broker.

The broker commits the merged record atomically (compare-and-set on `seq`), so these
rules run in exactly one place whatever stores the job, and a rejected update raises
before anything is written.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from msgspec import UNSET, Struct

from pubsub.errors import InvalidUpdate, JobTerminal, PayloadTooLarge
from pubsub.events import (
    ENCODER,
    MAX_RESULT_BYTES,
    Chunks,
    ChunksPatch,
    JobStatus,
    Snapshot,
    Update,
    encode_meta,
)
from pubsub.nesting import check_nesting
from pubsub.pipelines import Pipeline, PipelineRegistry

# ETA needs a little history before it means anything: at least this long running
# and this much progress observed since the run started.
ETA_MIN_SECONDS: Final = 1.0
ETA_MIN_PROGRESS: Final = 0.5

TEXT_RESULT: Final = b"t"
JSON_RESULT: Final = b"j"


class JobRecord(Struct, frozen=True, kw_only=True):
    """What the store keeps per job: the public snapshot plus the state the merge needs."""

    snapshot: Snapshot
    stage_start: float = 0.0
    stage_end: float = 100.0
    run_started_at: float | None = None
    run_started_progress: float = 0.0


RECORD_DECODER: Final = msgspec.json.Decoder(JobRecord)


def new_record(
    job_id: str, *, now: float, pipeline: Pipeline | None, meta: dict[str, Any] | None = None
) -> JobRecord:
    """The record of a job that has just been created (seq 1, queued)."""
    meta = meta or {}
    _check_meta(meta)
    snapshot = Snapshot(
        job_id=job_id,
        seq=1,
        status=JobStatus.QUEUED,
        pipeline=pipeline.name if pipeline else None,
        meta=meta,
        created_at=now,
        updated_at=now,
    )
    return JobRecord(snapshot=snapshot)


def encode_result(result: Any) -> bytes:
    """Store a result as one kind byte and its body: text stays text, anything else JSON."""
    check_nesting(result, "result")
    if isinstance(result, str):
        body = TEXT_RESULT + result.encode()
    else:
        body = JSON_RESULT + ENCODER.encode(result)
    if len(body) - 1 > MAX_RESULT_BYTES:
        raise PayloadTooLarge("result", MAX_RESULT_BYTES)
    return body


def decode_result(stored: bytes) -> tuple[bytes, str]:
    """Split a stored result into its body and content type."""
    kind, body = stored[:1], stored[1:]
    if kind == JSON_RESULT:
        return body, "application/json"
    return body, "text/plain; charset=utf-8"


def apply_update(
    record: JobRecord, update: Update, *, now: float, pipelines: PipelineRegistry
) -> JobRecord:
    """Merge `update` into `record`, giving the next seq; raise if it is not acceptable."""
    old = record.snapshot
    if old.is_terminal:
        raise JobTerminal(old.job_id, old.status)

    status = _next_status(old.status, update)
    stage, label = old.stage, old.stage_label
    stage_start, stage_end = record.stage_start, record.stage_end
    progress = old.progress
    message = old.message if update.message is UNSET else update.message

    if update.stage is not UNSET:
        stage = update.stage
        start, end, label = _stage_range(old.pipeline, update.stage, pipelines)
        stage_start, stage_end = start, end
        progress = start
        if update.message is UNSET and label:
            # As the tracker's stage(): the previous stage's last line would be stale, so
            # a new stage without a message says its label (docs/api.md §2).
            message = label
    fraction = None if update.stage_progress is UNSET else update.stage_progress

    chunks = old.chunks
    if update.chunks is not UNSET:
        chunks = None if update.chunks is None else _merge_chunks(old.chunks, update.chunks)
        if chunks is not None and chunks.total and fraction is None:
            done = chunks.completed + chunks.failed
            fraction = done / chunks.total
            if update.message is UNSET:
                message = f"Processing chunk {done}/{chunks.total}"

    if fraction is not None:
        progress = stage_start + (stage_end - stage_start) * fraction
    if update.progress is not UNSET:
        progress = update.progress
    # Progress never goes back while the job runs (docs/api.md §1); the one exception is a
    # stage restarted after `retrying`.
    if progress < old.progress and old.status is not JobStatus.RETRYING:
        progress = old.progress
    if status is JobStatus.COMPLETED:
        progress = 100.0
    # Always a float, so the wire always reads `25.0`, never `25` (docs/api.md §1).
    progress = round(float(min(max(progress, 0.0), 100.0)), 3)

    attempt = old.attempt if update.attempt is UNSET else update.attempt
    max_attempts = old.max_attempts if update.max_attempts is UNSET else update.max_attempts
    if attempt is not None and max_attempts is not None and attempt > max_attempts:
        raise InvalidUpdate(
            f"attempt {attempt} is past max_attempts {max_attempts}", field="attempt"
        )
    # Written when a retry is announced, not on every update while retrying: a heartbeat
    # must not overwrite what the pipeline said since ("Waiting 30 s before retrying").
    announced = update.status is not UNSET or update.attempt is not UNSET
    if status is JobStatus.RETRYING and announced and update.message is UNSET:
        if attempt is not None:
            message = _retry_message(attempt, max_attempts)

    error = old.error if update.error is UNSET else update.error
    if old.status is JobStatus.RETRYING and status not in (JobStatus.RETRYING, JobStatus.FAILED):
        # The retry is under way (or done): "Retrying... (2/3)" and the error that caused
        # it no longer describe the job, and `error` on a completed job would read as a
        # failure (docs/api.md §1: `error` is set when failed).
        if update.error is UNSET:
            error = None
        # Only the line the hub wrote itself, and only if nothing newer replaced it.
        retry_line = old.attempt is not None and old.message == _retry_message(
            old.attempt, old.max_attempts
        )
        if retry_line and message == old.message:
            message = label or ""
    meta = old.meta
    if update.meta is not UNSET:
        meta = {**old.meta, **update.meta}
        _check_meta(meta)

    run_started_at, run_started_progress = record.run_started_at, record.run_started_progress
    if status is JobStatus.RUNNING and (run_started_at is None or old.status is JobStatus.RETRYING):
        run_started_at, run_started_progress = now, progress

    snapshot = msgspec.structs.replace(
        old,
        seq=old.seq + 1,
        status=status,
        stage=stage,
        stage_label=label,
        progress=progress,
        message=message,
        chunks=chunks,
        attempt=attempt,
        max_attempts=max_attempts,
        eta_seconds=_eta(status, progress, now, run_started_at, run_started_progress, update),
        error=error,
        meta=meta,
        has_result=old.has_result or update.result is not UNSET,
        updated_at=now,
        stalled=False,
    )
    return JobRecord(
        snapshot=snapshot,
        stage_start=stage_start,
        stage_end=stage_end,
        run_started_at=run_started_at,
        run_started_progress=run_started_progress,
    )


def mark_stalled(record: JobRecord) -> JobRecord:
    """The record with `stalled` set: a new seq, so streams and polls both learn of it."""
    snapshot = msgspec.structs.replace(
        record.snapshot, seq=record.snapshot.seq + 1, stalled=True, eta_seconds=None
    )
    return msgspec.structs.replace(record, snapshot=snapshot)


def request_cancel(record: JobRecord) -> JobRecord:
    """The record with `cancel_requested` set (docs/api.md §9): a new seq, so streams and
    polls learn of it, and every later update keeps it (`apply_update` copies the old
    snapshot). Only the job's worker ends it; until then it keeps its status. The request
    is not news from the worker, so `updated_at` and `stalled` stay as they were."""
    old = record.snapshot
    if old.is_terminal:
        raise JobTerminal(old.job_id, old.status)
    snapshot = msgspec.structs.replace(old, seq=old.seq + 1, cancel_requested=True)
    return msgspec.structs.replace(record, snapshot=snapshot)


def _retry_message(attempt: int, max_attempts: int | None) -> str:
    of = f"/{max_attempts}" if max_attempts is not None else ""
    return f"Retrying... ({attempt}{of})"


def _next_status(current: JobStatus, update: Update) -> JobStatus:
    if update.status is not UNSET:
        return update.status
    # Work reported on a queued job, or a new stage after a retry, means it runs again.
    moved = update.stage is not UNSET or update.progress is not UNSET
    moved = moved or update.stage_progress is not UNSET or update.chunks is not UNSET
    if moved and current in (JobStatus.QUEUED, JobStatus.RETRYING):
        return JobStatus.RUNNING
    return current


def _stage_range(
    pipeline_name: str | None, key: str, pipelines: PipelineRegistry
) -> tuple[float, float, str | None]:
    if pipeline_name is None:
        # A job without a pipeline is one stage spanning the whole job.
        return 0.0, 100.0, None
    pipeline = pipelines.get(pipeline_name)
    if pipeline is None:
        raise InvalidUpdate(f"this hub does not know the job's pipeline {pipeline_name!r}")
    try:
        stage = pipeline.stage(key)
    except ValueError as exc:
        raise InvalidUpdate(str(exc), field="stage") from None
    return stage.start, stage.end, stage.label


def _merge_chunks(current: Chunks | None, patch: ChunksPatch) -> Chunks:
    base = current or Chunks()
    total = base.total if patch.total is UNSET else patch.total
    completed = base.completed if patch.completed is UNSET else patch.completed
    failed = base.failed if patch.failed is UNSET else patch.failed
    if patch.add_completed is not UNSET:
        completed += patch.add_completed
    if patch.add_failed is not UNSET:
        failed += patch.add_failed
    if total and completed + failed > total:
        raise InvalidUpdate(
            f"chunks completed ({completed}) plus failed ({failed}) exceed total ({total})",
            field="chunks",
        )
    chunk = base.current if patch.current is UNSET else patch.current
    if chunk is not None and total and chunk.index >= total:
        raise InvalidUpdate(
            f"chunk index {chunk.index} is out of range for {total} chunks", field="chunks.current"
        )
    return Chunks(total=total, completed=completed, failed=failed, current=chunk)


def _eta(
    status: JobStatus,
    progress: float,
    now: float,
    started_at: float | None,
    started_progress: float,
    update: Update,
) -> float | None:
    if status is JobStatus.COMPLETED:
        return 0.0
    if status is not JobStatus.RUNNING:
        return None
    if update.eta_seconds is not UNSET:
        # The publisher's own estimate (tqdm's rate, say) for this update: docs/api.md §1.
        return update.eta_seconds
    if started_at is None:
        return None
    elapsed, gained = now - started_at, progress - started_progress
    if elapsed < ETA_MIN_SECONDS or gained < ETA_MIN_PROGRESS:
        return None
    # Average rate over the whole run: smooth by construction, and honest about pauses.
    return round((100.0 - progress) * elapsed / gained, 1)


def _check_meta(meta: dict[str, Any]) -> None:
    check_nesting(meta, "meta")
    try:
        encode_meta(meta)
    except ValueError as exc:
        raise PayloadTooLarge("meta", 8 * 1024) from exc
