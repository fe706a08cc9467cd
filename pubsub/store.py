"""The job store: snapshots, history, seq, results and milestone cursors on any broker.

Every write is read → merge (`pubsub.merge`) → compare-and-set commit. When another
writer committed in between, the broker hands back the fresh record and the merge runs
again on it, so concurrent publishers never lose an update nor reorder seqs.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import structlog

from pubsub.broker import Broker, Commit, RequestKey, UpdateId
from pubsub.errors import (
    BrokerUnavailable,
    InvalidUpdate,
    JobExists,
    JobNotFound,
    JobTerminal,
    NoResult,
)
from pubsub.events import (
    ENCODER,
    STALLABLE_STATUSES,
    EventKind,
    JobStatus,
    Snapshot,
    Update,
    encode_envelope,
    is_valid_job_id,
)
from pubsub.merge import (
    RECORD_DECODER,
    JobRecord,
    apply_update,
    decode_result,
    encode_result,
    mark_stalled,
    new_record,
    request_cancel,
)
from pubsub.pipelines import PipelineRegistry

log = structlog.get_logger(__name__)

DEFAULT_HISTORY: Final = 1000
DEFAULT_RETENTION: Final = 3600
# An active job that hears nothing for a day is abandoned; it expires like a finished one.
ACTIVE_TTL: Final = 86_400
MAX_MILESTONE_CLIENTS: Final = 1000
PRUNE_BATCH: Final = 100
# Each failed compare-and-set means another writer got in first; past this many the job
# is under a write storm no publisher should be part of.
MAX_COMMIT_ATTEMPTS: Final = 200
# Records this store committed last, kept to save a read on the next publish of the job;
# only jobs still running (a finished one is dropped with its last commit).
KNOWN_RECORDS: Final = 4096
# Jobs read (or scanned for stalls) per round trip.
READ_BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class Replay:
    """What a subscriber resuming after `Last-Event-ID` gets before live events."""

    snapshot: Snapshot
    missed: list[bytes] | None
    """The snapshots after the client's id, oldest first; None when history does not reach."""


class JobStore:
    """Jobs on a broker: create, publish, read, replay, delete, list, gate milestones."""

    def __init__(
        self,
        broker: Broker,
        pipelines: PipelineRegistry | None = None,
        *,
        history: int = DEFAULT_HISTORY,
        retention: int = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if history < 1:
            raise ValueError(f"history must keep at least 1 event, got {history}")
        if retention < 1:
            raise ValueError(f"retention must be at least 1 second, got {retention}")
        self.broker = broker
        self.pipelines = pipelines if pipelines is not None else PipelineRegistry()
        self.history_len = history
        self.retention = retention
        self._clock = clock
        self._known: dict[str, JobRecord] = {}

    async def create(
        self,
        job_id: str | None = None,
        *,
        pipeline: str | None = None,
        meta: dict[str, Any] | None = None,
        request_key: RequestKey | None = None,
    ) -> Snapshot:
        """Create a job (a random id when none is given); `JobExists` if it already exists.

        With a `request_key`, a job this request's earlier try created is no `JobExists`:
        its current snapshot is returned. A keyed create that names no job is named after
        the key (`RequestKey.key`), so that its retry finds the job the first try made.
        """
        if job_id is None:
            job_id = request_key.key if request_key is not None else secrets.token_hex(8)
        check_job_id(job_id)
        try:
            resolved = self.pipelines.resolve(pipeline)
        except ValueError as exc:
            raise InvalidUpdate(str(exc), field="pipeline") from None
        record = new_record(job_id, now=self._clock(), pipeline=resolved, meta=meta)
        committed, held = await self.broker.commit(
            self._commit(record, expected_seq=0, request_key=request_key)
        )
        if not committed:
            raise JobExists(job_id)
        if held is not None:
            return RECORD_DECODER.decode(held).snapshot
        # Its first update then commits against this record: one round trip, no read.
        self._remember(record)
        # No log line here: producers create jobs too (`pubsub.announce`, one per
        # `.delay()`), and an unconfigured structlog prints every line; the hub logs it.
        return record.snapshot

    async def publish(
        self,
        job_id: str,
        update: Update,
        *,
        pipeline: str | None = None,
        update_id: UpdateId | None = None,
        request_key: RequestKey | None = None,
    ) -> Snapshot:
        """Apply `update` to a job, creating it (with `pipeline`) if it does not exist.

        `update_id` (a tracker's) or `request_key` (an HTTP caller's) makes a retry of an
        update in doubt safe: a job that holds it already is not changed again, and its
        current snapshot is returned (its end included: the retry of a job's last update
        is not refused as an update to a finished job).
        """
        check_job_id(job_id)
        # The record this store committed last is usually still current: start from it and
        # save a read. A stale one only costs a failed compare-and-set, which hands back
        # the current record (or None for a job deleted since).
        cached = self._known.pop(job_id, None)
        record = cached if cached is not None else await self._load(job_id)
        result = None if update.result is msgspec.UNSET else encode_result(update.result)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            expected = record.snapshot.seq if record else 0
            if record is None:
                try:
                    resolved = self.pipelines.resolve(pipeline)
                except ValueError as exc:
                    raise InvalidUpdate(str(exc), field="pipeline") from None
                # Seq 0 is never published: the creation and the first update are one event.
                record = new_record(job_id, now=self._clock(), pipeline=resolved)
                record = msgspec.structs.replace(
                    record, snapshot=msgspec.structs.replace(record.snapshot, seq=0)
                )
            try:
                merged = apply_update(record, update, now=self._clock(), pipelines=self.pipelines)
            except (JobTerminal, InvalidUpdate) as exc:
                if isinstance(exc, JobTerminal) and cached is not None:
                    # Only the stored record decides that a job is over.
                    cached, record = None, await self._load(job_id)
                    continue
                # A retry of an update the job holds already may not apply a second time
                # (the last chunk counted again is past the total; the end, to an ended
                # job): then it is answered as held, not refused.
                held = await self._held(record, update_id, request_key)
                if held is None:
                    raise
                return held
            committed, current = await self.broker.commit(
                self._commit(
                    merged,
                    expected_seq=expected,
                    result=result,
                    update_id=update_id,
                    request_key=request_key,
                )
            )
            if committed and current is not None:
                # An earlier attempt of this update was stored; its answer was lost.
                return RECORD_DECODER.decode(current).snapshot
            if committed:
                # No log line here: this is the hot path of every worker, and an
                # unconfigured structlog prints every level (the hub counts publishes).
                if not merged.snapshot.is_terminal:
                    self._remember(merged)
                # A finished job's record is not kept: it would save no read (a publish
                # to it reloads, above) and would hold every finished job up to the
                # bound (docs/performance.md, growth per job).
                return merged.snapshot
            cached = None
            record = RECORD_DECODER.decode(current) if current else None
        raise BrokerUnavailable(f"job {job_id!r} is under too many concurrent writes")

    async def _held(
        self, record: JobRecord, update_id: UpdateId | None, request_key: RequestKey | None
    ) -> Snapshot | None:
        """The stored snapshot of a finished job that holds this update already (the
        job's end, whose first answer was lost), else None."""
        if update_id is None and request_key is None:
            return None
        # No job is at seq -1: the commit only asks commit.lua's first question, whether
        # the job holds the update (and, with replicas, waits for them to confirm it).
        probe = self._commit(record, expected_seq=-1, update_id=update_id, request_key=request_key)
        committed, current = await self.broker.commit(probe)
        return RECORD_DECODER.decode(current).snapshot if committed and current else None

    async def forget_writer(self, job_id: str, writer: str) -> None:
        """Drop what a job keeps of a writer's updates (`UpdateId`), once it has closed:
        a job published to by a tracker per task (one per chunk, say) would otherwise keep
        an entry per tracker until it expires."""
        check_job_id(job_id)
        await self.broker.forget_writer(job_id, writer)

    async def request_cancel(self, job_id: str) -> Snapshot:
        """Ask a job's worker to cancel it (docs/api.md §9): its snapshot gains
        `cancel_requested`. Asking again changes nothing and returns the current snapshot;
        `JobNotFound` if unknown, `JobTerminal` once it has ended."""
        check_job_id(job_id)
        record = await self._load(job_id)
        for _ in range(MAX_COMMIT_ATTEMPTS):
            if record is None:
                raise JobNotFound(job_id)
            if record.snapshot.cancel_requested and not record.snapshot.is_terminal:
                return record.snapshot
            merged = request_cancel(record)
            committed, current = await self.broker.commit(
                self._commit(merged, expected_seq=record.snapshot.seq)
            )
            if committed:
                self._remember(merged)
                log.info("job_cancel_requested", job_id=job_id, seq=merged.snapshot.seq)
                return merged.snapshot
            record = RECORD_DECODER.decode(current) if current else None
        raise BrokerUnavailable(f"job {job_id!r} is under too many concurrent writes")

    def _remember(self, record: JobRecord) -> None:
        known = self._known
        known[record.snapshot.job_id] = record
        if len(known) > KNOWN_RECORDS:
            del known[next(iter(known))]  # the least recently published

    def footprint(self) -> dict[str, int]:
        """The size of the store's one per-job structure, its record cache (jobs still
        running, at most `KNOWN_RECORDS`)."""
        return {"store.known_records": len(self._known)}

    async def seq(self, job_id: str) -> int:
        """A job's current seq, without reading its record; `JobNotFound` if unknown."""
        check_job_id(job_id)
        seq = await self.broker.load_seq(job_id)
        if seq is None:
            raise JobNotFound(job_id)
        return seq

    async def get(self, job_id: str) -> Snapshot:
        """The current snapshot of a job; `JobNotFound` if unknown or expired."""
        record = await self._load(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record.snapshot

    async def get_many(self, job_ids: Sequence[str]) -> list[Snapshot]:
        """The current snapshots of the jobs that exist among `job_ids`, in their order,
        read in batches of `READ_BATCH` (one round trip each)."""
        found: list[Snapshot] = []
        for first in range(0, len(job_ids), READ_BATCH):
            batch = job_ids[first : first + READ_BATCH]
            for raw in await self.broker.load_many(batch):
                if raw is not None:
                    found.append(RECORD_DECODER.decode(raw).snapshot)
        return found

    async def replay(
        self, job_id: str, last_seq: int | None, *, current: Snapshot | None = None
    ) -> Replay:
        """The snapshot and the retained events after `last_seq`, for a resuming stream.

        Args:
            last_seq: the last seq the client has; None for a new client (no replay).
            current: the job's snapshot when the caller knows it is current (a hub that
                follows the job's events), saving the read.
        """
        snapshot = current if current is not None else await self.get(job_id)
        if last_seq is None:
            return Replay(snapshot=snapshot, missed=None)
        missing = snapshot.seq - last_seq
        if missing <= 0:
            return Replay(snapshot=snapshot, missed=[] if missing == 0 else None)
        events = await self.broker.history(job_id, missing)
        # The history may have been trimmed, or the job written since we read it; only an
        # exact, gap-free run of seqs last_seq+1..seq is a valid replay.
        if len(events) != missing or _seq_of(events[0]) != last_seq + 1:
            return Replay(snapshot=snapshot, missed=None)
        return Replay(snapshot=snapshot, missed=events)

    async def history(self, job_id: str) -> list[bytes]:
        """Every retained snapshot of a job, oldest first."""
        await self.get(job_id)
        return await self.broker.history(job_id, self.history_len)

    async def result(self, job_id: str) -> tuple[bytes, str]:
        """A job's result body and content type; `NoResult` when the job has none (yet),
        `JobNotFound` when there is no such job."""
        check_job_id(job_id)
        stored = await self.broker.result(job_id)
        if stored is None:
            raise NoResult(job_id, (await self.get(job_id)).status)
        return decode_result(stored)

    async def delete(self, job_id: str) -> None:
        """Delete a job; its open streams receive `deleted`."""
        self._known.pop(job_id, None)
        snapshot = await self.get(job_id)
        envelope = encode_envelope(EventKind.DELETED, ENCODER.encode(snapshot))
        if not await self.broker.delete(job_id, envelope):
            raise JobNotFound(job_id)
        log.info("job_deleted", job_id=job_id)

    async def list_jobs(
        self, *, status: Sequence[JobStatus] = (), limit: int = 50
    ) -> list[Snapshot]:
        """Jobs newest first, optionally only those in `status`; prunes expired ids."""
        wanted = set(status)
        found: list[Snapshot] = []
        # Unfiltered, a page of `limit` ids suffices unless some expired; a status filter
        # skips some, so it reads ahead (each page is one pipelined read per node).
        start, page = 0, max(limit * 2 if wanted else limit, 100)
        while len(found) < limit:
            ids = await self.broker.recent_jobs(start, start + page - 1)
            if not ids:
                break
            records = await self.broker.load_many(ids)
            expired = [job_id for job_id, raw in zip(ids, records, strict=True) if raw is None]
            await self.broker.forget(expired)
            for raw in records:
                if raw is not None:
                    snapshot = RECORD_DECODER.decode(raw).snapshot
                    if not wanted or snapshot.status in wanted:
                        found.append(snapshot)
            start += page - len(expired)
        return found[:limit]

    async def prune_index(self, *, batch: int = PRUNE_BATCH, max_batches: int = 10) -> int:
        """Drop expired jobs from the job index, oldest first; returns how many were dropped.

        Job keys expire by themselves; their ids in the index only go when someone lists
        past them. The hub calls this on a timer so the index never grows without bound.
        """
        dropped = 0
        for _ in range(max_batches):
            ids = await self.broker.recent_jobs(-batch, -1)
            records = await self.broker.load_many(ids)
            expired = [job_id for job_id, raw in zip(ids, records, strict=True) if raw is None]
            await self.broker.forget(expired)
            dropped += len(expired)
            # Expired ids gather at the old end; a batch with none means we are done.
            if not expired or len(ids) < batch:
                break
        return dropped

    async def gate_milestone(
        self, job_id: str, client: str, milestones: Sequence[float]
    ) -> tuple[Snapshot, float | None, int]:
        """One milestone-gate call: the job, the milestone now reached (if any), call count."""
        snapshot = await self.get(job_id)
        try:
            step = await self.broker.advance_milestone(
                job_id, client, sorted(milestones), snapshot.progress, MAX_MILESTONE_CLIENTS
            )
        except ValueError as exc:
            raise InvalidUpdate(str(exc), field="client") from None
        return snapshot, step.milestone, step.calls

    async def mark_stalled(self, stall_after: float) -> list[str]:
        """Flag queued and running jobs silent for `stall_after` seconds; returns the ids
        newly flagged.

        Only the live index is read (the jobs that can stall, by their last update), so
        a sweep costs what the quiet jobs cost, not what every job kept costs: pages of
        `READ_BATCH`, one round trip for the ids and one for their records each. A
        flagged job leaves the live index, so the next page holds the next ones.
        """
        cutoff = self._clock() - stall_after
        flagged: list[str] = []
        while True:
            ids = await self.broker.quiet_jobs(cutoff, READ_BATCH)
            records = await self.broker.load_many(ids)
            gone = [job_id for job_id, raw in zip(ids, records, strict=True) if raw is None]
            await self.broker.forget(gone)  # expired while quiet: their entries stayed
            settled = len(gone)
            for raw in records:
                if raw is not None and (job_id := await self._flag_if_quiet(raw, cutoff)):
                    flagged.append(job_id)
                    settled += 1
            # A page that settled nothing holds only entries a later commit will move (or,
            # during a rolling upgrade, entries of jobs that an older hub ended: they leave
            # with the job's keys); reading it again would find them again.
            if len(ids) < READ_BATCH or not settled:
                return flagged

    async def _flag_if_quiet(self, raw: bytes, cutoff: float) -> str | None:
        """Flag the job of `raw` stalled if it still is quiet; its id when flagged."""
        seen = _LIVENESS_DECODER.decode(raw).snapshot
        if seen.stalled or seen.status not in STALLABLE_STATUSES or seen.updated_at > cutoff:
            return None
        record = RECORD_DECODER.decode(raw)
        stalled = mark_stalled(record)
        # Losing this race means the job was just updated: it is not stalled after all.
        committed, _ = await self.broker.commit(
            self._commit(stalled, expected_seq=record.snapshot.seq)
        )
        if not committed:
            return None
        log.info("job_stalled", job_id=seen.job_id, seq=stalled.snapshot.seq)
        return seen.job_id

    async def _load(self, job_id: str) -> JobRecord | None:
        raw = await self.broker.load(job_id)
        return RECORD_DECODER.decode(raw) if raw is not None else None

    def _commit(
        self,
        record: JobRecord,
        *,
        expected_seq: int,
        result: bytes | None = None,
        update_id: UpdateId | None = None,
        request_key: RequestKey | None = None,
    ) -> Commit:
        snapshot = record.snapshot
        snapshot_json = ENCODER.encode(snapshot)
        ttl = self.retention if snapshot.is_terminal else ACTIVE_TTL
        return Commit(
            job_id=snapshot.job_id,
            expected_seq=expected_seq,
            record=ENCODER.encode(record),
            snapshot=snapshot_json,
            envelope=encode_envelope(EventKind.PROGRESS, snapshot_json),
            ttl=ttl,
            history_len=self.history_len,
            created_at=snapshot.created_at,
            result=result,
            quiet_since=(
                snapshot.updated_at
                if snapshot.status in STALLABLE_STATUSES and not snapshot.stalled
                else None
            ),
            final=snapshot.is_terminal,
            update_id=update_id,
            request_key=request_key,
        )


def check_job_id(job_id: str) -> None:
    """Raise `InvalidUpdate` unless `job_id` matches the contract's pattern."""
    if not is_valid_job_id(job_id):
        raise InvalidUpdate(
            "job id must be 1-128 characters of letters, digits and ._:- starting with a "
            "letter or digit",
            field="job_id",
        )


class _Liveness(msgspec.Struct):
    job_id: str
    status: JobStatus
    updated_at: float
    stalled: bool = False


class _RecordLiveness(msgspec.Struct):
    snapshot: _Liveness


_LIVENESS_DECODER: Final = msgspec.json.Decoder(_RecordLiveness)


class _SeqOnly(msgspec.Struct):
    seq: int


_SEQ_DECODER: Final = msgspec.json.Decoder(_SeqOnly)


def _seq_of(snapshot_json: bytes) -> int:
    return _SEQ_DECODER.decode(snapshot_json).seq
