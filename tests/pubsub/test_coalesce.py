"""Coalescing never changes the outcome: merged updates end in the state of the sequence."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pubsub.coalesce import Backlog
from pubsub.errors import JobTerminal
from pubsub.events import ChunkRef, ChunksPatch, JobStatus, Snapshot, Update
from pubsub.merge import JobRecord, apply_update, new_record
from pubsub.pipelines import PipelineRegistry
from pubsub.updates import UpdateBuilder

PIPELINES = PipelineRegistry()

Op = tuple[Any, ...]

ops = st.one_of(
    st.tuples(st.just("stage"), st.sampled_from(["split", "chunks", "merge"])),
    st.tuples(st.just("advance"), st.floats(0, 1)),
    st.tuples(st.just("set"), st.floats(0, 100)),
    st.tuples(st.just("message"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("heartbeat")),
    st.tuples(st.just("meta"), st.dictionaries(st.sampled_from("xyz"), st.integers(0, 9))),
    st.tuples(st.just("chunks"), st.integers(1, 6)),
    st.tuples(st.just("chunk_done")),
    st.tuples(st.just("chunk_failed"), st.sampled_from(["timeout", "bad scan"])),
    st.tuples(st.just("retrying"), st.integers(1, 3)),
    st.tuples(st.just("start")),
)
endings = st.sampled_from(
    [(), ("complete", "text"), ("complete", {"n": 1}), ("fail",), ("cancel",)]
)


def _updates(script: list[Op]) -> list[Update]:
    """The updates a tracker would send for `script`, skipping calls it would refuse."""
    builder = UpdateBuilder(PIPELINES["ocr"])
    updates: list[Update] = []
    done = 0
    for op in script:
        name, args = op[0], op[1:]
        if name == "stage":
            updates.append(builder.stage(args[0], None, None)[0])
        elif name == "chunks":
            done = 0
            updates.append(builder.chunks(args[0]))
        elif name in ("chunk_done", "chunk_failed"):
            if builder.chunk_total is None or done >= builder.chunk_total:
                continue
            if name == "chunk_done":
                updates.append(builder.chunk_done(done, None, None))
            else:
                updates.append(builder.chunk_failed(done, done * 10 + 1, done * 10 + 10, args[0]))
            done += 1
        elif name == "retrying":
            updates.append(builder.retrying(args[0], 3, "flaky"))
        elif name == "advance":
            updates.append(builder.advance(args[0], None))
        elif name == "set":
            updates.append(builder.set(args[0], None))
        elif name == "message":
            updates.append(builder.message(args[0]))
        elif name == "cancel":
            updates.append(builder.cancel(None))
        elif name == "meta":
            updates.append(builder.meta(args[0]))
        elif name == "start":
            updates.append(builder.start(None))
        elif name == "heartbeat":
            updates.append(builder.heartbeat())
        elif name == "complete":
            updates.append(builder.complete(args[0], None))
        elif name == "fail":
            updates.append(builder.fail("it broke"))
    return updates


def _apply(updates: list[Update]) -> Snapshot:
    record: JobRecord = new_record("job", now=0.0, pipeline=PIPELINES["ocr"])
    for update in updates:
        try:
            record = apply_update(record, update, now=1.0, pipelines=PIPELINES)
        except JobTerminal:
            break
    return record.snapshot


def _coalesced(updates: list[Update]) -> list[Update]:
    backlog = Backlog()
    for update in updates:
        backlog.add(update)
    entries = []
    while (entry := backlog.take()) is not None:
        entries.append(entry.update)
    return entries


def _state(snapshot: Snapshot) -> tuple[Any, ...]:
    return (
        snapshot.status,
        snapshot.stage,
        snapshot.stage_label,
        snapshot.progress,
        snapshot.message,
        snapshot.chunks,
        snapshot.attempt,
        snapshot.max_attempts,
        snapshot.error,
        snapshot.meta,
        snapshot.has_result,
    )


@settings(max_examples=400, deadline=None)
@given(script=st.lists(ops, max_size=25), ending=endings)
def test_backlog_coalesced_updates_end_in_the_same_state(script: list[Op], ending: Op) -> None:
    updates = _updates([*script, ending] if ending else script)
    coalesced = _coalesced(updates)

    assert _state(_apply(coalesced)) == _state(_apply(updates))
    assert len(coalesced) <= len(updates)


def test_backlog_sums_chunk_increments_and_keeps_the_latest_chunk() -> None:
    builder = UpdateBuilder(PIPELINES["ocr"])
    backlog = Backlog()
    backlog.add(builder.chunks(17))
    for index in range(10):
        backlog.add(builder.chunk_done(index, None, None))
    backlog.add(builder.chunk_failed(10, 251, 275, "timeout"))

    entry = backlog.take()
    assert entry is not None and backlog.take() is None, "one publish for all of it"
    assert entry.urgent, "it enters the chunk stage, so it goes out at once"
    chunks = entry.update.chunks
    assert isinstance(chunks, ChunksPatch)
    assert (chunks.total, chunks.completed, chunks.add_completed) == (17, 0, 10)
    assert (chunks.failed, chunks.add_failed) == (0, 1)
    assert isinstance(chunks.current, ChunkRef) and chunks.current.index == 10


@pytest.mark.parametrize(
    ("first", "second", "entries"),
    [
        (Update(stage_progress=0.2), Update(stage_progress=0.6), 1),
        (Update(stage_progress=0.2), Update(message="hello"), 1),
        (Update(stage_progress=0.2), Update(progress=50.0), 2),
        (Update(stage="split"), Update(stage="chunks"), 2),
        (Update(message="x"), Update(status=JobStatus.COMPLETED), 2),
    ],
    ids=["same-source", "message-joins", "mixed-sources", "stage-change", "end-state"],
)
def test_backlog_merges_only_what_is_safe_to_merge(
    first: Update, second: Update, entries: int
) -> None:
    backlog = Backlog()
    backlog.add(first)
    backlog.add(second)
    assert len(backlog) == entries


def test_backlog_retries_an_entry_in_doubt_as_it_was_under_its_number() -> None:
    # A publish whose answer was lost may be stored: its retry must be the same update
    # under the same number, or the broker could not tell it was already applied.
    backlog = Backlog()
    backlog.add(Update(chunks=ChunksPatch(add_completed=1)))
    tried = backlog.take()
    assert tried is not None and tried.number == 1
    backlog.put_back(tried)
    backlog.add(Update(chunks=ChunksPatch(add_completed=1)))
    retried, following = backlog.take(), backlog.take()
    assert retried is tried and retried.update == Update(chunks=ChunksPatch(add_completed=1))
    assert following is not None and following.number == 2
