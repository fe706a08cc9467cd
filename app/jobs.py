"""Writes and job resources: create, publish, cancel, delete, result, history, pipelines."""

from __future__ import annotations

import time

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response

from progress_hub import metrics
from progress_hub.auth import (
    may_cancel,
    require_any_reader,
    require_canceller,
    require_publisher,
    require_reader,
)
from progress_hub.body import check_body_limits, decode_body, read_body
from progress_hub.fanout import Fanout
from progress_hub.idempotency import request_key
from progress_hub.responses import json_response
from pubsub.events import CREATE_DECODER, UPDATE_DECODER, CreateJob
from pubsub.store import JobStore, check_job_id
from pubsub.tokens import issue_token

log = structlog.get_logger(__name__)


def path_job_id(request: Request) -> str:
    """The `{job_id}` of the path, checked against the contract's pattern (400 otherwise)."""
    job_id: str = request.path_params["job_id"]
    check_job_id(job_id)
    # Every log line of this request names its job (docs/production.md: logs).
    structlog.contextvars.bind_contextvars(job_id=job_id)
    return job_id


async def create_job(request: Request) -> Response:
    """`POST /api/jobs` → 201 snapshot (with a token when subscriber auth is on)."""
    require_publisher(request)
    raw = await read_body(request)
    check_body_limits(raw)
    spec = decode_body(raw, CREATE_DECODER, empty=CreateJob())
    key = request_key(request, raw)
    store: JobStore = request.state.store
    job_id = None if spec.job_id is msgspec.UNSET else spec.job_id
    snapshot = await store.create(job_id, pipeline=spec.pipeline, meta=spec.meta, request_key=key)
    log.info("job_created", job_id=snapshot.job_id, pipeline=spec.pipeline)
    body = msgspec.structs.asdict(snapshot)
    secret = request.state.settings.subscriber_secret
    if secret is not None:
        body["token"] = issue_token(secret, [snapshot.job_id], request.state.settings.token_ttl)
    # Under the host's prefix when the hub is mounted (`root_path`, docs/production.md).
    location = f"{request.scope.get('root_path', '')}/api/jobs/{snapshot.job_id}"
    headers = {"Location": location, "ETag": f'"{snapshot.seq}"'}
    return json_response(body, status_code=201, headers=headers)


async def publish(request: Request) -> Response:
    """`POST /api/jobs/{job_id}/events` → 202 `{"job_id", "seq"}`."""
    started = time.perf_counter()
    require_publisher(request)
    job_id = path_job_id(request)
    raw = await read_body(request)
    check_body_limits(raw)
    update = decode_body(raw, UPDATE_DECODER)
    key = request_key(request, raw)
    store: JobStore = request.state.store
    fanout: Fanout = request.state.fanout
    epoch = fanout.epoch
    snapshot = await store.publish(job_id, update, request_key=key)
    # Streams opened here next start from it, even before the broker's echo arrives.
    fanout.observe(snapshot, epoch)
    metrics.EVENTS_PUBLISHED.inc()
    metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
    return json_response({"job_id": job_id, "seq": snapshot.seq}, status_code=202)


async def cancel_job(request: Request) -> Response:
    """`POST /api/jobs/{job_id}/cancel` → 202 `{"job_id", "seq"}` (docs/api.md §9)."""
    job_id = path_job_id(request)
    require_canceller(request, job_id)
    store: JobStore = request.state.store
    fanout: Fanout = request.state.fanout
    epoch = fanout.epoch
    snapshot = await store.request_cancel(job_id)
    fanout.observe(snapshot, epoch)
    return json_response({"job_id": job_id, "seq": snapshot.seq}, status_code=202)


async def access(request: Request) -> Response:
    """`GET /api/access?job=ID` → `{"can_cancel": bool}`: what this caller may do.

    The dashboard asks, to show a Cancel button only where pressing it would work: the
    answer applies the very rule of `POST /api/jobs/{job_id}/cancel` to this request.
    """
    job = request.query_params.get("job")
    if job is not None:
        check_job_id(job)
    return json_response({"can_cancel": may_cancel(request, job)})


async def delete_job(request: Request) -> Response:
    """`DELETE /api/jobs/{job_id}` → 204; its streams get `deleted` and close."""
    require_publisher(request)
    store: JobStore = request.state.store
    job_id = path_job_id(request)
    await store.delete(job_id)
    fanout: Fanout = request.state.fanout
    fanout.forget(job_id)
    return Response(status_code=204)


async def job_result(request: Request) -> Response:
    """`GET /api/jobs/{job_id}/result` → the stored result, as published."""
    job_id = path_job_id(request)
    require_reader(request, [job_id])
    store: JobStore = request.state.store
    body, content_type = await store.result(job_id)
    return Response(body, media_type=content_type)


async def job_history(request: Request) -> Response:
    """`GET /api/jobs/{job_id}/history` → `{"events": [snapshot, ...]}`, oldest first."""
    job_id = path_job_id(request)
    require_reader(request, [job_id])
    store: JobStore = request.state.store
    events = await store.history(job_id)
    return json_response(b'{"events":[' + b",".join(events) + b"]}")


async def list_pipelines(request: Request) -> Response:
    """`GET /api/pipelines` → every pipeline with its ordered stages."""
    require_any_reader(request)
    store: JobStore = request.state.store
    pipelines = [pipeline.to_json() for pipeline in store.pipelines.values()]
    return json_response({"pipelines": pipelines})
