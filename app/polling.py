"""The polling fallback: snapshot with ETag/304, the job list, and the milestone gate."""

from __future__ import annotations

import re
from typing import Final

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from progress_hub.auth import require_reader
from progress_hub.body import whole_number
from progress_hub.jobs import path_job_id
from progress_hub.responses import json_response
from pubsub.errors import InvalidUpdate, JobNotFound
from pubsub.events import ENCODER, JobStatus, Snapshot
from pubsub.store import JobStore

DEFAULT_MILESTONES: Final = (25.0, 50.0, 75.0, 100.0)
MAX_MILESTONES: Final = 100
MAX_LIST_LIMIT: Final = 500
CLIENT_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def etag_matches(header: str | None, etag: str) -> bool:
    """True when an `If-None-Match` header names `etag` (RFC 9110 §13.1.2, weak compare)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


async def get_job(request: Request) -> Response:
    """`GET /api/jobs/{job_id}` → snapshot with `ETag: "<seq>"`; 304 when unchanged."""
    job_id = path_job_id(request)
    require_reader(request, [job_id])
    store: JobStore = request.state.store
    if_none_match = request.headers.get("if-none-match")
    if if_none_match:
        # The 304 path reads only the seq: a poller that is up to date costs no decoding.
        etag = f'"{await store.seq(job_id)}"'
        if etag_matches(if_none_match, etag):
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    snapshot = await store.get(job_id)
    headers = {"ETag": f'"{snapshot.seq}"', "Cache-Control": "no-cache"}
    return json_response(ENCODER.encode(snapshot), headers=headers)


async def list_jobs(request: Request) -> Response:
    """`GET /api/jobs?status=running&limit=50` → `{"jobs": [...]}`, newest first."""
    require_reader(request)
    statuses: list[JobStatus] = []
    for raw in request.query_params.getlist("status"):
        for name in raw.split(","):
            try:
                statuses.append(JobStatus(name.strip()))
            except ValueError:
                known = ", ".join(s.value for s in JobStatus)
                raise InvalidUpdate(f"unknown status {name!r} (known: {known})", field="status")
    limit = whole_number(request.query_params.get("limit", "50"))
    if limit is None or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidUpdate(
            f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}", field="limit"
        )
    store: JobStore = request.state.store
    jobs = await store.list_jobs(status=statuses, limit=limit)
    return json_response({"jobs": jobs})


def _milestones(raw: str | None) -> list[float]:
    if raw is None or not raw.strip():
        return list(DEFAULT_MILESTONES)
    parts = raw.split(",")
    if len(parts) > MAX_MILESTONES:
        raise InvalidUpdate(f"at most {MAX_MILESTONES} milestones", field="milestones")
    values: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise InvalidUpdate(f"milestone {part!r} is not a number", field="milestones") from None
        if not 0 <= value <= 100:
            raise InvalidUpdate(f"milestone {part!r} is outside 0-100", field="milestones")
        values.append(value)
    return sorted(set(values))


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value


async def milestone_gate(request: Request) -> Response:
    """`GET /api/jobs/{job_id}/milestone?client=&milestones=` — one milestone per call."""
    job_id = path_job_id(request)
    require_reader(request, [job_id])
    client = request.query_params.get("client", "default")
    if not CLIENT_RE.fullmatch(client):
        raise InvalidUpdate("client must be 1-128 letters, digits or ._:-", field="client")
    milestones = _milestones(request.query_params.get("milestones"))
    store: JobStore = request.state.store
    snapshot, reached, calls = await store.gate_milestone(job_id, client, milestones)
    if snapshot.status is JobStatus.COMPLETED:
        return PlainTextResponse(await _completed_text(store, snapshot))
    if snapshot.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return json_response(
            {
                "status": str(snapshot.status),
                "error": snapshot.error or snapshot.message or str(snapshot.status),
                "progress": _number(snapshot.progress),
                "percentage": round(snapshot.progress),
            },
            status_code=400,
        )
    if reached is None:
        return Response(status_code=204)
    return json_response(
        {
            "status": "processing",
            "progress": _number(snapshot.progress),
            "percentage": round(snapshot.progress),
            "milestone": _number(reached),
            "api_call_count": calls,
        }
    )


async def _completed_text(store: JobStore, snapshot: Snapshot) -> str:
    """The text a completed job answers the gate with: its result, else its last message."""
    if snapshot.has_result:
        try:
            body, _ = await store.result(snapshot.job_id)
        except JobNotFound:  # expired between the two reads
            return snapshot.message
        return body.decode("utf-8", errors="replace")
    return snapshot.message
