"""OpenAPI components: the schemas of every body the hub reads and writes.

Request and snapshot schemas come from the msgspec structs themselves, so they cannot
drift from what the hub decodes and encodes; the rest mirror hand-built answers.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from pubsub.events import JOB_ID_PATTERN, CreateJob, JobStatus, Snapshot, Update

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A reference to `#/components/schemas/<name>`."""
    return {"$ref": f"#/components/schemas/{name}"}


def components() -> Schema:
    """Every schema of `#/components/schemas`, by name."""
    _, schemas = msgspec.json.schema_components(
        (Snapshot, Update, CreateJob), ref_template="#/components/schemas/{name}"
    )
    snapshot = schemas["Snapshot"]
    # The hub encodes every field of a snapshot, and the contract bounds a few of them.
    snapshot["required"] = sorted(snapshot["properties"])
    snapshot["properties"]["job_id"]["pattern"] = JOB_ID_PATTERN
    snapshot["properties"]["seq"]["minimum"] = 1
    snapshot["properties"]["progress"].update(minimum=0, maximum=100)
    created = copy.deepcopy(snapshot)
    created["title"] = "CreatedJob"
    created["description"] = "A new job's snapshot, with a token when subscriber auth is on."
    created["properties"]["token"] = {"type": "string"}
    stage = {
        "type": "object",
        "required": ["key", "label", "start", "end", "expected_seconds", "chunks"],
        "properties": {
            "key": {"type": "string"},
            "label": {"type": "string"},
            "start": {"type": "number", "minimum": 0, "maximum": 100},
            "end": {"type": "number", "minimum": 0, "maximum": 100},
            "expected_seconds": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "chunks": {"type": "boolean"},
        },
    }
    percent = {"type": "number", "minimum": 0, "maximum": 100}
    return {
        **schemas,
        "CreatedJob": created,
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "field": {"type": "string"},
                "status": {"$ref": "#/components/schemas/JobStatus"},
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["job_id", "seq"],
            "properties": {
                "job_id": {"type": "string", "pattern": JOB_ID_PATTERN},
                "seq": {"type": "integer", "minimum": 1},
            },
            "additionalProperties": False,
        },
        "JobList": {
            "type": "object",
            "required": ["jobs"],
            "properties": {"jobs": {"type": "array", "items": ref("Snapshot")}},
        },
        "History": {
            "type": "object",
            "required": ["events"],
            "properties": {"events": {"type": "array", "items": ref("Snapshot")}},
        },
        "Pipelines": {
            "type": "object",
            "required": ["pipelines"],
            "properties": {
                "pipelines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "stages"],
                        "properties": {
                            "name": {"type": "string"},
                            "stages": {"type": "array", "items": stage},
                        },
                    },
                }
            },
        },
        "MilestoneReached": {
            "type": "object",
            "required": ["status", "progress", "percentage", "milestone", "api_call_count"],
            "properties": {
                "status": {"const": "processing"},
                "progress": percent,
                "percentage": {"type": "integer", "minimum": 0, "maximum": 100},
                "milestone": percent,
                "api_call_count": {"type": "integer", "minimum": 1},
            },
        },
        "MilestoneFailed": {
            "type": "object",
            "required": ["status", "error", "progress", "percentage"],
            "properties": {
                "status": {"enum": [JobStatus.FAILED.value, JobStatus.CANCELLED.value]},
                "error": {"type": "string"},
                "progress": percent,
                "percentage": {"type": "integer", "minimum": 0, "maximum": 100},
            },
        },
        "StreamEnd": {
            "type": "object",
            "required": ["job_id", "seq", "status"],
            "properties": {
                "job_id": {"type": "string"},
                "seq": {"type": "integer", "minimum": 1},
                "status": ref("JobStatus"),
            },
            "additionalProperties": False,
        },
        "Access": {
            "type": "object",
            "required": ["can_cancel"],
            "properties": {"can_cancel": {"type": "boolean"}},
            "additionalProperties": False,
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
    }
