"""`GET /openapi.json`: the OpenAPI 3.1 description of the hub, built from the wire model.

Schemas of bodies live in `app.components`. An event stream's schema describes one event
(OpenAPI 3.1 has no `itemSchema`; this is how tools such as schemathesis read it). The test
suite fuzzes the live hub against this document (tests/app/test_openapi.py).
"""

from __future__ import annotations

from functools import cache
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from progress_hub.auth import require_any_reader
from progress_hub.body import MAX_BODY_BYTES
from progress_hub.components import Schema, components, ref
from progress_hub.limits import MAX_HEADER_BYTES
from progress_hub.polling import CLIENT_RE, MAX_LIST_LIMIT, MAX_MILESTONES
from progress_hub.responses import json_response
from progress_hub.sse import MAX_FILTER_JOBS
from pubsub.events import JOB_ID_PATTERN

VERSION: Final = "0.1.0"


def _json(schema: Schema, description: str, headers: Schema | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(description: str) -> Schema:
    return _json(ref("Error"), description)


_RETRY_AFTER: Final = {
    "Retry-After": {
        "description": "Seconds to wait before trying again (jittered)",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_ETAG: Final = {
    "ETag": {
        "description": 'The snapshot\'s seq, quoted: `"<seq>"`',
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
    }
}
_UNAVAILABLE: Final = _json(
    ref("Error"), "The broker is unreachable, or this hub is at its connection limit", _RETRY_AFTER
)
_COMMON: Final = {
    "431": _error("Request headers over " + str(MAX_HEADER_BYTES) + " bytes"),
    "503": _UNAVAILABLE,
}
_READ: Final = {**_COMMON, "403": _error("No subscriber token, or one that does not allow this")}
_WRITE: Final = {
    **_COMMON,
    "401": _error("No publish key given"),
    "403": _error("Wrong publish key, or not loopback while no key is configured"),
}
_JOB: Final = {"400": _error("Invalid job id or query"), "404": _error("Unknown or expired job")}

_JOB_ID_PARAM: Final = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
}
_IDEMPOTENCY_KEY_PARAM: Final = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "The caller's name for this request (a UUID, say): repeated as it "
    "was, after a 503 or a lost answer, it is applied once. A job keeps its last 64 keys.",
    "schema": {"type": "string", "pattern": '^"?[!#-~]{1,255}"?$'},
}
_TOKEN_PARAM: Final = {
    "name": "token",
    "in": "query",
    "description": "Subscriber token, for clients that cannot set `Authorization`",
    "schema": {"type": "string"},
}
_READERS: Final[list[Schema]] = [{"subscriberToken": []}, {"subscriberTokenQuery": []}, {}]
_WRITERS: Final[list[Schema]] = [{"publishKey": []}, {}]
_CANCELLERS: Final[list[Schema]] = [{"publishKey": []}, *_READERS]

_SSE_EVENT_NAMES: Final = ["snapshot", "progress", "end", "deleted"]


def _event_stream(description: str, *, resumable: bool) -> Schema:
    """An event stream; its schema describes one event (data is a snapshot, or `end`)."""
    event: Schema = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {
                "enum": _SSE_EVENT_NAMES if resumable else ["snapshot", "progress", "deleted"]
            },
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [ref("Snapshot"), ref("StreamEnd")]}
                if resumable
                else ref("Snapshot"),
            },
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }
    return {
        "description": description,
        "headers": {
            "Cache-Control": {"required": True, "schema": {"type": "string", "const": "no-cache"}},
            "X-Accel-Buffering": {"required": True, "schema": {"type": "string", "const": "no"}},
        },
        "content": {"text/event-stream": {"schema": event}},
    }


def _job_paths() -> Schema:
    json_body = {"application/json": {"schema": ref("Update")}}
    return {
        "/api/jobs": {
            "get": {
                "summary": "List jobs, newest first",
                "security": _READERS,
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "description": "Only jobs in these statuses (repeat, or comma-separate)",
                        "schema": {"type": "array", "items": ref("JobStatus")},
                        "style": "form",
                        "explode": True,
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
                    },
                    _TOKEN_PARAM,
                ],
                "responses": {
                    **_READ,
                    "200": _json(ref("JobList"), "Jobs"),
                    "400": _error("Unknown status or bad limit"),
                },
            },
            "post": {
                "summary": "Create a job",
                "description": "Under an Idempotency-Key, a body with no job_id names the "
                "job after a digest of the key, so that a retry finds the job it made.",
                "security": _WRITERS,
                "parameters": [_IDEMPOTENCY_KEY_PARAM],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref("CreateJob")}},
                },
                "responses": {
                    **_WRITE,
                    "201": _json(ref("CreatedJob"), "Created", {"ETag": _ETAG["ETag"]}),
                    "400": _error("Invalid body, job id or pipeline"),
                    "409": _error("A job with this id exists"),
                    "413": _error(f"Body over {MAX_BODY_BYTES} bytes, or meta over 8 KiB"),
                    "422": _error("The Idempotency-Key was used for another body"),
                },
            },
        },
        "/api/jobs/{job_id}": {
            "parameters": [_JOB_ID_PARAM],
            "get": {
                "summary": "Poll a job's snapshot",
                "security": _READERS,
                "parameters": [
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                    _TOKEN_PARAM,
                ],
                "responses": {
                    **_READ,
                    **_JOB,
                    "200": _json(ref("Snapshot"), "The snapshot", _ETAG),
                    "304": {"description": "Not modified", "headers": _ETAG},
                },
            },
            "delete": {
                "summary": "Delete a job; its streams get `deleted` and close",
                "security": _WRITERS,
                "responses": {**_WRITE, **_JOB, "204": {"description": "Deleted"}},
            },
        },
        "/api/jobs/{job_id}/events": {
            "parameters": [_JOB_ID_PARAM],
            "get": {
                "summary": "Follow a job as Server-Sent Events",
                "description": (
                    "`retry:` first, then `snapshot` (or the events after Last-Event-ID as "
                    "`progress`), live `progress` events, and `end` after a terminal one. "
                    "Past the connection limit or in a broker outage: 200 with only a "
                    "jittered `retry:`, then a close."
                ),
                "security": _READERS,
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "The last seq received; anything but a whole number "
                        "counts as none (a snapshot first).",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "description": "Like the Last-Event-ID header, for clients that "
                        "cannot set it.",
                        "schema": {"type": "string"},
                    },
                    _TOKEN_PARAM,
                ],
                "responses": {
                    **{k: v for k, v in _READ.items() if k != "503"},
                    **_JOB,
                    "200": _event_stream("The job's events", resumable=True),
                    "204": {"description": "Finished, and the client has its last event"},
                },
            },
            "post": {
                "summary": "Publish an update (creates the job if unknown)",
                "security": _WRITERS,
                "parameters": [_IDEMPOTENCY_KEY_PARAM],
                "requestBody": {"required": True, "content": json_body},
                "responses": {
                    **_WRITE,
                    "202": _json(ref("Accepted"), "Accepted (or held already, under its key)"),
                    "400": _error("Malformed JSON, unknown field, wrong type, bad value, stage"),
                    "409": _error("The job is terminal"),
                    "422": _error("The Idempotency-Key was used for another body"),
                    "413": _error("Body over 64 KiB, result over 1 MiB, or meta over 8 KiB"),
                },
            },
        },
        "/api/jobs/{job_id}/cancel": {
            "parameters": [_JOB_ID_PARAM],
            "post": {
                "summary": "Ask the job's worker to cancel it (docs/api.md §9)",
                "description": "The snapshot gains `cancel_requested: true` (a new seq; asking "
                "again changes nothing); the job stays as it is until its worker ends it.",
                "security": _CANCELLERS,
                "parameters": [_TOKEN_PARAM],
                "responses": {
                    **_COMMON,
                    **_JOB,
                    "202": _json(ref("Accepted"), "Requested"),
                    "401": _error("Neither the publish key nor a token given"),
                    "403": _error(
                        "Wrong key or token, a token without the cancel right, or "
                        "not loopback while neither key nor secret is configured"
                    ),
                    "409": _error("The job is terminal"),
                },
            },
        },
        "/api/jobs/{job_id}/history": {
            "parameters": [_JOB_ID_PARAM],
            "get": {
                "summary": "Retained events of a job, oldest first",
                "security": _READERS,
                "parameters": [_TOKEN_PARAM],
                "responses": {**_READ, **_JOB, "200": _json(ref("History"), "Events")},
            },
        },
        "/api/jobs/{job_id}/result": {
            "parameters": [_JOB_ID_PARAM],
            "get": {
                "summary": "A job's result, as published",
                "security": _READERS,
                "parameters": [_TOKEN_PARAM],
                "responses": {
                    **_READ,
                    **_JOB,
                    "200": {
                        "description": "The result: text, or JSON",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/json": {"schema": {}},
                        },
                    },
                },
            },
        },
        "/api/jobs/{job_id}/milestone": {
            "parameters": [_JOB_ID_PARAM],
            "get": {
                "summary": "Milestone gate: one reached milestone per call and client",
                "security": _READERS,
                "parameters": [
                    {
                        "name": "client",
                        "in": "query",
                        "schema": {"type": "string", "pattern": f"^{CLIENT_RE.pattern}$"},
                    },
                    {
                        "name": "milestones",
                        "in": "query",
                        "description": f"Comma-separated percents (at most {MAX_MILESTONES})",
                        "schema": {"type": "string"},
                    },
                    _TOKEN_PARAM,
                ],
                "responses": {
                    **_READ,
                    **_JOB,
                    "200": {
                        "description": "A milestone reached; once completed, the result text",
                        "content": {
                            "application/json": {"schema": ref("MilestoneReached")},
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "204": {"description": "The client's next milestone is not reached"},
                    "400": _json(
                        {"anyOf": [ref("MilestoneFailed"), ref("Error")]},
                        "The job failed or was cancelled, or a bad query",
                    ),
                },
            },
        },
    }


def _other_paths() -> Schema:
    return {
        "/api/events": {
            "get": {
                "summary": "Every job's events, for dashboards",
                "security": _READERS,
                "parameters": [
                    {
                        "name": "job",
                        "in": "query",
                        "description": "Only these jobs (an id no job can have matches nothing)",
                        "schema": {
                            "type": "array",
                            "items": {"type": "string"},
                            "maxItems": MAX_FILTER_JOBS,
                        },
                        "style": "form",
                        "explode": True,
                    },
                    _TOKEN_PARAM,
                ],
                "responses": {
                    **{k: v for k, v in _READ.items() if k != "503"},
                    "200": _event_stream(
                        "Snapshots of every (or each filtered) job", resumable=False
                    ),
                    "400": _error("A bad job filter"),
                },
            }
        },
        "/api/access": {
            "get": {
                "summary": "What this caller may do: may it cancel (this job)?",
                "parameters": [
                    {
                        "name": "job",
                        "in": "query",
                        "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
                    },
                    _TOKEN_PARAM,
                ],
                "responses": {
                    "431": _COMMON["431"],
                    "200": _json(ref("Access"), "The caller's rights"),
                    "400": _error("Invalid job id"),
                },
            }
        },
        "/api/pipelines": {
            "get": {
                "summary": "Pipelines and their ordered stages",
                "security": _READERS,
                "parameters": [_TOKEN_PARAM],
                "responses": {**_READ, "200": _json(ref("Pipelines"), "Pipelines")},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: 200 while the process lives",
                "responses": {"431": _COMMON["431"], "200": _json(ref("Status"), "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 200 only while the broker answers",
                "security": _READERS,
                "parameters": [_TOKEN_PARAM],
                "responses": {**_READ, "200": _json(ref("Status"), "Ready")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": _READERS,
                "parameters": [_TOKEN_PARAM],
                "responses": {
                    **{k: v for k, v in _READ.items() if k != "503"},
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": _READERS,
                "parameters": [_TOKEN_PARAM],
                "responses": {
                    **{k: v for k, v in _READ.items() if k != "503"},
                    "200": _json({"type": "object"}, "OpenAPI 3.1"),
                },
            }
        },
    }


@cache
def build_schema() -> Schema:
    """The whole OpenAPI document (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "progress-hub",
            "version": VERSION,
            "description": "Real-time job progress over Server-Sent Events (docs/api.md).",
        },
        "paths": {**_job_paths(), **_other_paths()},
        "components": {
            "schemas": components(),
            "securitySchemes": {
                "publishKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "PROGRESS_PUBLISH_KEY; without one, loopback clients only",
                },
                "subscriberToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from POST /api/jobs or `progress-hub token`",
                },
                "subscriberTokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }


async def openapi_schema(request: Request) -> Response:
    """`GET /openapi.json`."""
    require_any_reader(request)
    return json_response(build_schema())
