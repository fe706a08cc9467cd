"""`GET /openapi.json` describes the hub accurately: schemathesis fuzzes the live hub with it.

Every operation gets schema-valid and schema-invalid requests over real HTTP; the hub
must answer each without a 5xx, with a documented status, content type and headers, a body
that fits the documented schema, and a 4xx for every request that breaks the schema.
Generation is derandomized, so a run is reproducible, and bounded, so it stays quick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from progress_hub.embedded import EmbeddedServer
from progress_hub.main import create_app
from progress_hub.openapi import build_schema
from progress_hub.settings import Settings
from tests.hub import ThreadHub, run_hub

MAX_EXAMPLES = 25
# A stream is read for this long (its headers must come within it too): one that then
# says nothing costs this much per example, hence fewer examples for the streams. 0.1 and
# 0.2 s were missed now and then by a hub serving in a thread of this busy process.
STREAM_READ_SECONDS = 0.5
STREAM_EXAMPLES = 10
CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
OPERATIONS = [
    (method.upper(), path)
    for path, item in build_schema()["paths"].items()
    for method in item
    if method != "parameters"
]


@pytest.fixture(scope="module")
def fuzzed_hub(redis_server: EmbeddedServer) -> Iterator[ThreadHub]:
    """One hub for the whole run, seeded with jobs in every state for the fuzzer to find."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    with run_hub(Settings(broker_url=redis_server.url, heartbeat=0.5)) as hub:
        with httpx.Client(base_url=hub.url) as http:
            # "0" and "A" are where hypothesis starts: make them real jobs.
            for job_id, body in [
                ("0", {"status": "running", "progress": 30}),
                ("A", {"status": "completed", "result": "the text"}),
                ("running", {"status": "running", "progress": 60, "message": "busy"}),
                ("done", {"status": "completed", "result": {"pages": 3}}),
                ("broken", {"status": "failed", "error": "boom"}),
            ]:
                assert http.post(f"/api/jobs/{job_id}/events", json=body).status_code == 202
        yield hub


@pytest.fixture(scope="module")
def api(fuzzed_hub: ThreadHub) -> Any:
    """The hub's own OpenAPI document, loaded by schemathesis."""
    config = schemathesis.Config.from_dict(
        {"request-timeout": 2, "max-stream-events": 2, "base-url": fuzzed_hub.url}
    )
    return schemathesis.openapi.from_url(f"{fuzzed_hub.url}/openapi.json", config=config)


async def test_openapi_document_describes_exactly_the_routes_served(
    client: httpx.AsyncClient, hub: ThreadHub
) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    served = {
        (method, route.path)
        for route in create_app(hub.settings).routes
        if isinstance(route, Route) and route.include_in_schema
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert documented == served


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzzing_finds_no_server_error_nor_schema_violation(
    api: Any, fuzzed_hub: ThreadHub, method: str, path: str
) -> None:
    operation = api[path][method]
    inputs = (operation.path_parameters, operation.query, operation.headers, operation.body)
    # Without any input there is no request that breaks the schema.
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if any(inputs) else [])
    # A stream that has nothing to say stays open: read what comes in a moment, then move on.
    stream = path.endswith("/events") and method == "GET"
    timeout = STREAM_READ_SECONDS if stream else 5
    for mode in modes:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=STREAM_EXAMPLES if stream else MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            case.call_and_validate(base_url=fuzzed_hub.url, checks=CHECKS, timeout=timeout)

        run()
