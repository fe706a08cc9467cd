"""Tracker calls turned into checked `Update`s, shared by `Tracker` and `SyncTracker`.

Every call is checked here, before anything is queued, so a wrong call raises
`ValueError` at the call site (docs/publishing.md) instead of being rejected by the hub later, when
no pipeline code is left to hear about it.
"""

from __future__ import annotations

import math
from typing import Any, Final

from msgspec import UNSET

from pubsub.errors import InvalidUpdate, PayloadTooLarge
from pubsub.events import (
    MAX_ERROR_CHARS,
    MAX_ETA_SECONDS,
    MAX_MESSAGE_CHARS,
    ChunkRef,
    ChunksPatch,
    JobStatus,
    Update,
    encode_meta,
)
from pubsub.merge import encode_result
from pubsub.nesting import check_nesting
from pubsub.pipelines import Pipeline, Stage

MERGE_STAGE: Final = "merge"
MAX_STAGE_KEY_CHARS: Final = 64
MAX_ATTEMPTS: Final = 1_000_000


class UpdateBuilder:
    """Checks tracker calls against the job's pipeline and builds the matching `Update`s.

    It remembers what this tracker said (the current stage, the chunk total) to check
    later calls: a chunk index is only checked against a total this tracker set.
    """

    def __init__(self, pipeline: Pipeline | None) -> None:
        self.pipeline = pipeline
        self.stage_key: str | None = None
        self.chunk_total: int | None = None

    def start(self, message: str | None) -> Update:
        """Mark the job running."""
        return Update(status=JobStatus.RUNNING, message=_message(message))

    def stage(
        self, key: str, message: str | None, expected_seconds: float | None
    ) -> tuple[Update, float | None]:
        """Enter stage `key` (saying its label by default); returns its expected duration."""
        stage = self._stage(key)
        if expected_seconds is not None and not _positive(expected_seconds):
            raise ValueError(f"expected_seconds must be a positive number, got {expected_seconds}")
        if stage is not None:
            expected_seconds = expected_seconds or stage.expected_seconds
            # The previous stage's last line would be stale: say what this stage does.
            message = stage.label if message is None else message
        self.stage_key = key
        return Update(stage=key, message=_message(message)), expected_seconds

    def merge(self, message: str | None) -> tuple[Update, float | None]:
        """Enter the pipeline's merge stage (for OCR: "Merging OCR results")."""
        return self.stage(MERGE_STAGE, message, None)

    def advance(self, fraction: float, message: str | None) -> Update:
        """Progress within the current stage, from 0 to 1."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be within 0-1, got {fraction}")
        return Update(stage_progress=float(fraction), message=_message(message))

    def set(self, percent: float, message: str | None, eta_seconds: float | None = None) -> Update:
        """An explicit overall percent, with the caller's own ETA when it has one."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be within 0-100, got {percent}")
        if eta_seconds is not None and not (math.isfinite(eta_seconds) and eta_seconds >= 0):
            raise ValueError(f"eta_seconds must be a number of seconds from 0, got {eta_seconds}")
        # Cut, never refused: an estimate from a slow start can be absurdly long.
        eta = UNSET if eta_seconds is None else round(min(eta_seconds, MAX_ETA_SECONDS), 1)
        return Update(progress=float(percent), message=_message(message), eta_seconds=eta)

    def message(self, text: str) -> Update:
        """A human line, without moving progress."""
        return Update(message=_message(text))

    def heartbeat(self) -> Update:
        """A sign of life: the job is not stalled."""
        return Update(heartbeat=True)

    def meta(self, values: dict[str, Any]) -> Update:
        """Caller metadata merged into the job's (8 KiB encoded, 32 levels deep at most)."""
        try:
            check_nesting(values, "meta")
        except InvalidUpdate as exc:
            raise ValueError(exc.reason) from None
        encode_meta(values)
        return Update(meta=values)

    def chunks(self, total: int) -> Update:
        """Start chunked work of `total` chunks, entering the pipeline's chunk stage if needed."""
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"chunk total must be a whole number of at least 1, got {total!r}")
        self.chunk_total = total
        patch = ChunksPatch(total=total, completed=0, failed=0, current=None)
        chunk_stage = self._chunk_stage()
        if chunk_stage is None:
            return Update(chunks=patch)
        self.stage_key = chunk_stage.key
        return Update(stage=chunk_stage.key, chunks=patch)

    def chunk_done(self, index: int, page_start: int | None, page_end: int | None) -> Update:
        """One chunk finished: counted in the job, atomically, whoever else reports."""
        current = self._chunk(index, page_start, page_end)
        return Update(chunks=ChunksPatch(add_completed=1, current=current))

    def chunk_failed(
        self, index: int, page_start: int | None, page_end: int | None, error: str
    ) -> Update:
        """One chunk failed; the job says which, with its pages (docs/api.md §5)."""
        current = self._chunk(index, page_start, page_end)
        pages = f" (pages {page_start}-{page_end})" if page_start is not None else ""
        text = f"Chunk {index + 1}{pages} failed: {error}"
        return Update(
            chunks=ChunksPatch(add_failed=1, current=current),
            error=text[:MAX_ERROR_CHARS],
            message=_message(text),
        )

    def retrying(self, attempt: int, max_attempts: int, reason: str | None) -> Update:
        """Attempt `attempt` of `max_attempts` is about to start; `reason` says why."""
        if not 1 <= attempt <= max_attempts <= MAX_ATTEMPTS:
            raise ValueError(
                f"attempt must be within 1-max_attempts (and max_attempts at most "
                f"{MAX_ATTEMPTS}), got {attempt} of {max_attempts}"
            )
        error = UNSET if reason is None else reason[:MAX_ERROR_CHARS]
        return Update(
            status=JobStatus.RETRYING, attempt=attempt, max_attempts=max_attempts, error=error
        )

    def complete(self, result: Any, message: str | None) -> Update:
        """Finish the job, with an optional text or JSON result (1 MiB, 32 levels at most)."""
        if result is None:
            return Update(status=JobStatus.COMPLETED, message=_message(message))
        try:
            encode_result(result)
        except InvalidUpdate as exc:
            raise ValueError(exc.reason) from None
        except PayloadTooLarge as exc:
            raise ValueError(str(exc)) from None
        return Update(status=JobStatus.COMPLETED, result=result, message=_message(message))

    def fail(self, error: str) -> Update:
        """Fail the job with a human error sentence."""
        return Update(status=JobStatus.FAILED, error=(error or "Failed")[:MAX_ERROR_CHARS])

    def cancel(self, message: str | None) -> Update:
        """Cancel the job."""
        return Update(status=JobStatus.CANCELLED, message=_message(message))

    def _stage(self, key: str) -> Stage | None:
        if self.pipeline is not None:
            return self.pipeline.stage(key)
        if not 1 <= len(key) <= MAX_STAGE_KEY_CHARS:
            raise ValueError(f"stage key must be 1-{MAX_STAGE_KEY_CHARS} characters, got {key!r}")
        return None

    def _chunk_stage(self) -> Stage | None:
        """The stage to enter for chunked work: None when already in one, or none exists."""
        if self.pipeline is None:
            return None
        chunk_stages = [stage for stage in self.pipeline.stages if stage.chunks]
        if not chunk_stages or any(stage.key == self.stage_key for stage in chunk_stages):
            return None
        return chunk_stages[0]

    def _chunk(self, index: int, page_start: int | None, page_end: int | None) -> ChunkRef:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"chunk index must be a whole number from 0, got {index!r}")
        if self.chunk_total is not None and index >= self.chunk_total:
            raise ValueError(
                f"chunk index {index} is out of range for {self.chunk_total} chunks "
                f"(indexes run from 0 to {self.chunk_total - 1})"
            )
        if (page_start is None) != (page_end is None):
            raise ValueError("give both page_start and page_end, or neither")
        if page_start is not None and page_end is not None and not 0 <= page_start <= page_end:
            raise ValueError(f"page range {page_start}-{page_end} must be increasing from 0")
        return ChunkRef(index=index, page_start=page_start, page_end=page_end)


def _message(text: str | None) -> Any:
    if text is None:
        return UNSET
    # A long message (an exception's text, say) is cut, never refused: it is for people.
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0
