"""Nesting depth of `meta` and `result`: measured without recursion, refused before storing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pubsub.errors import InvalidUpdate, JobNotFound
from pubsub.events import Update
from pubsub.nesting import MAX_DEPTH, json_nests_deeper, value_nests_deeper
from pubsub.store import JobStore
from tests.pubsub.test_calls import nested

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=60,
)


def depth_of(value: Any) -> int:
    """The depth by the definition, recursively (fine for the small values used here)."""
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


@settings(max_examples=150, derandomize=True, deadline=None)
@given(value=JSON_VALUES, limit=st.integers(0, 6))
def test_raw_and_value_depth_agree_with_the_definition(value: Any, limit: int) -> None:
    deeper = depth_of(value) > limit
    assert value_nests_deeper(value, limit) is deeper
    for text in (json.dumps(value), json.dumps(value, indent=1, ensure_ascii=False)):
        assert json_nests_deeper(text.encode(), limit) is deeper, text


@pytest.mark.parametrize(
    "text",
    [
        r'{"a": "[[[[[[[[[[[["}',
        r'{"a": "\"[[[[[[[[[[[[\\"}',
        r'{"[[[[[[[[[[[[": "\\\\"}',
        r'["\\", "[[[[[[[[[[[[[[["]',
    ],
)
def test_raw_depth_ignores_brackets_inside_strings(text: str) -> None:
    json.loads(text)  # the cases are valid JSON
    assert not json_nests_deeper(text.encode(), 2)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 30_000])
async def test_store_refuses_deep_meta_and_result_and_stores_nothing(
    job_store: JobStore, depth: int
) -> None:
    await job_store.publish("deep-1", Update(progress=10))
    before = await job_store.get("deep-1")
    for update in (Update(meta={"x": nested(depth - 1)}), Update(result=nested(depth))):
        with pytest.raises(InvalidUpdate, match="nests more than 32 levels deep"):
            await job_store.publish("deep-1", update)
    with pytest.raises(InvalidUpdate, match="meta nests more than 32 levels deep"):
        await job_store.create("deep-2", meta={"x": nested(depth - 1)})
    assert await job_store.get("deep-1") == before
    with pytest.raises(JobNotFound):
        await job_store.get("deep-2")


async def test_store_accepts_meta_and_result_at_the_depth_limit(job_store: JobStore) -> None:
    meta = {"x": nested(MAX_DEPTH - 1)}
    await job_store.publish("deep-3", Update(meta=meta, result=nested(MAX_DEPTH)))
    assert (await job_store.get("deep-3")).meta == meta
    body, _ = await job_store.result("deep-3")
    assert json.loads(body) == nested(MAX_DEPTH)
