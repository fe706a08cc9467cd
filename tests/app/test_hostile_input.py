"""Hostile input over HTTP: every bad body or query gets a 4xx that names the problem,
never a 500, and changes nothing (docs/api.md §2)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pubsub.nesting import MAX_DEPTH
from tests.hub import spawn_hub

TOO_DEEP = "nests more than 32 levels deep"
DEPTHS = [MAX_DEPTH + 1, 1000, 30_000]


def arrays(depth: int) -> bytes:
    """JSON arrays nested `depth` deep (`[[]]` is 2)."""
    return b"[" * depth + b"]" * depth


def meta_body(depth: int) -> bytes:
    """A body whose `meta` nests `depth` deep: its own object, then arrays."""
    return b'{"meta": {"x": ' + arrays(depth - 1) + b"}}"


def result_body(depth: int) -> bytes:
    return b'{"result": ' + arrays(depth) + b"}"


def _refused(response: httpx.Response, says: str) -> None:
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]


async def test_meta_and_result_at_the_depth_limit_are_stored(client: httpx.AsyncClient) -> None:
    for body in (meta_body(MAX_DEPTH), result_body(MAX_DEPTH)):
        response = await client.post("/api/jobs/deep-ok/events", content=body)
        assert response.status_code == 202, response.text
    assert (await client.get("/api/jobs/deep-ok/result")).content == arrays(MAX_DEPTH)
    meta = (await client.get("/api/jobs/deep-ok")).json()["meta"]
    assert json.dumps(meta["x"]).replace(" ", "").encode() == arrays(MAX_DEPTH - 1)


@pytest.mark.parametrize("depth", DEPTHS)
async def test_deep_meta_or_result_is_a_400_and_changes_nothing(
    client: httpx.AsyncClient, depth: int
) -> None:
    await client.post("/api/jobs/deep-1/events", json={"progress": 10})
    before = (await client.get("/api/jobs/deep-1")).json()
    for body in (meta_body(depth), result_body(depth)):
        assert len(body) <= 64 * 1024, "within the body limit: depth is the only problem"
        _refused(await client.post("/api/jobs/deep-1/events", content=body), TOO_DEEP)
    _refused(
        await client.post("/api/jobs", content=meta_body(depth)[:-1] + b', "job_id": "deep-2"}'),
        TOO_DEEP,
    )
    assert (await client.get("/api/jobs/deep-1")).json() == before
    assert (await client.get("/api/jobs/deep-2")).status_code == 404


async def test_deep_result_over_64_kib_is_a_400_not_a_crash(client: httpx.AsyncClient) -> None:
    # Past 64 KiB the hub weighs `result` apart from the rest, which decodes the body:
    # the depth must be refused before that.
    body = result_body(300_000)
    assert 64 * 1024 < len(body) <= 1024 * 1024
    _refused(await client.post("/api/jobs/deep-3/events", content=body), TOO_DEEP)


async def test_attempt_past_max_attempts_is_a_400(client: httpx.AsyncClient) -> None:
    await client.post("/api/jobs", json={"job_id": "attempts-1"})
    response = await client.post(
        "/api/jobs/attempts-1/events", json={"attempt": 5, "max_attempts": 3}
    )
    _refused(response, "attempt 5 is past max_attempts 3")
    response = await client.post(
        "/api/jobs/attempts-1/events", json={"status": "retrying", "attempt": 2, "max_attempts": 3}
    )
    assert response.status_code == 202
    # Against the stored max_attempts too.
    _refused(await client.post("/api/jobs/attempts-1/events", json={"attempt": 4}), "past max")
    assert (await client.get("/api/jobs/attempts-1")).json()["attempt"] == 2


# ---------------------------------------------------------------------------------------
# Property: arbitrary JSON anywhere, against a live `progress-hub serve`.

PUBLISH_FIELDS = [
    "status", "stage", "stage_progress", "progress", "message", "chunks", "error",
    "result", "meta", "heartbeat", "attempt", "max_attempts",
]  # fmt: skip
CREATE_FIELDS = ["job_id", "pipeline", "meta"]
QUERIES = {
    "/api/jobs": ["status", "limit", "token"],
    "/api/jobs/{job}": ["token"],
    "/api/jobs/{job}/history": ["token"],
    "/api/jobs/{job}/result": ["token"],
    "/api/jobs/{job}/milestone": ["client", "milestones", "token"],
    "/api/jobs/{job}/events": ["last_event_id", "token"],
    "/api/events": ["job", "token"],
}

ODD_TEXT = st.sampled_from(
    ["", " ", "\x00", "\ud800", "😀" * 40, "running", "ocr", "-1", "1e309", "NaN", "x" * 1001]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
    | ODD_TEXT
)
# `json.dumps` recurses, so a deep value is drawn as a placeholder string that `encode`
# swaps for the nested arrays themselves: as deep as a 64 KiB body allows.
DEEP = st.integers(MAX_DEPTH - 1, 30_000).map(lambda depth: f"{DEEP_MARK}{depth}{DEEP_MARK}")
DEEP_MARK = "\x00deep\x00"
DEEP_PLACEHOLDER = re.compile(rb'"\\u0000deep\\u0000(\d+)\\u0000deep\\u0000"')


def json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Any JSON value built from `leaves`."""
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )


SHALLOW = json_values(SCALARS)
JSON_VALUES = json_values(SCALARS | DEEP)


def bodies(fields: list[str]) -> st.SearchStrategy[Any]:
    """Objects with any subset of `fields` (and sometimes an unknown one) set to anything."""
    known = st.fixed_dictionaries({}, optional={field: JSON_VALUES for field in fields})
    extra = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=1)
    return st.tuples(known, extra).map(lambda pair: {**pair[1], **pair[0]}) | JSON_VALUES


def encode(value: Any) -> bytes:
    """`value` as JSON, with each deep placeholder replaced by arrays nested that deep."""
    text = json.dumps(value).encode()
    return DEEP_PLACEHOLDER.sub(lambda match: arrays(int(match[1])), text)


def query_values() -> st.SearchStrategy[str]:
    # A URL carries UTF-8: a lone surrogate cannot even be sent (JSON bodies escape it).
    text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
    odd = ODD_TEXT.filter(lambda value: value != "\ud800")
    return SHALLOW.map(json.dumps) | text | odd


@pytest.fixture(scope="module")
def live_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client of a `progress-hub serve` child whose log must show no error at the end."""
    log = tmp_path_factory.mktemp("hostile") / "hub.log"
    with spawn_hub({"PROGRESS_BROKER_URL": "memory://"}, "--log-json", log=log) as hub:
        with httpx.Client(base_url=hub.url, timeout=10) as http:
            yield http
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]
    for line in text.splitlines():
        if line.startswith("{"):
            assert json.loads(line).get("level") != "error", line


FRESH = itertools.count()


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    publish=bodies(PUBLISH_FIELDS),
    create=bodies(CREATE_FIELDS),
    path=st.sampled_from(sorted(QUERIES)),
    query=st.data(),
)
def test_hub_answers_arbitrary_json_with_a_4xx_and_changes_nothing(
    live_hub: httpx.Client, publish: Any, create: Any, path: str, query: st.DataObject
) -> None:
    """Bodies and queries of anything: never a 5xx, and a refused update changes nothing.

    Schema-shaped fuzzing (schemathesis, tests/app/test_openapi.py) rarely leaves the
    schema's types; this draws any JSON at every field, nested past the depth limit.
    """
    http, job = live_hub, f"fuzz-{next(FRESH)}"
    assert http.post("/api/jobs", json={"job_id": job}).status_code == 201
    before = http.get(f"/api/jobs/{job}").json()
    response = http.post(f"/api/jobs/{job}/events", content=encode(publish))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert "error" in response.json()
        assert http.get(f"/api/jobs/{job}").json() == before, "a refused update changed it"

    response = http.post("/api/jobs", content=encode(create))
    assert response.status_code < 500, response.text

    names = query.draw(st.lists(st.sampled_from(QUERIES[path]), min_size=1, max_size=3))
    params = httpx.QueryParams([(name, query.draw(query_values())) for name in names])
    with http.stream("GET", path.format(job=job), params=params) as answer:
        assert answer.status_code < 500, answer.read()
