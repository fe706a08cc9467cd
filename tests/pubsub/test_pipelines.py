"""Pipelines: the built-ins, and user pipelines from TOML with errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pubsub.pipelines import BUILTIN_PIPELINES, load_pipelines

GOOD = """
[pipelines.transcode]
stages = [
  { key = "fetch", label = "Fetching", start = 0, expected_seconds = 20 },
  { key = "encode", label = "Encoding", start = 10, chunks = true },
  { key = "publish", start = 90 },
]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipelines.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_pipelines_builtins_follow_the_contract() -> None:
    starts = {
        name: [(stage.key, stage.start) for stage in pipeline.stages]
        for name, pipeline in BUILTIN_PIPELINES.items()
    }
    assert starts["pdf"] == [("parse", 0), ("extract", 25), ("process", 50), ("finalize", 75)]
    assert starts["ocr"] == [("split", 0), ("chunks", 5), ("merge", 90)]
    assert starts["summary"] == [
        ("connecting", 5),
        ("metadata", 25),
        ("transcript", 40),
        ("analyzing", 60),
        ("generating", 80),
    ]
    assert [key for key, _ in starts["video"]][:3] == ["queued", "downloading", "downloaded"]
    assert BUILTIN_PIPELINES["ocr"].stage("merge").label == "Merging OCR results"
    # Each stage ends where the next begins; the last one at 100.
    assert [(s.start, s.end) for s in BUILTIN_PIPELINES["pdf"].stages] == [
        (0, 25),
        (25, 50),
        (50, 75),
        (75, 100),
    ]


def test_pipelines_load_a_user_file_next_to_the_builtins(tmp_path: Path) -> None:
    registry = load_pipelines(_write(tmp_path, GOOD))

    transcode = registry["transcode"]
    assert [(s.key, s.label, s.start, s.end) for s in transcode.stages] == [
        ("fetch", "Fetching", 0, 10),
        ("encode", "Encoding", 10, 90),
        ("publish", "Publish", 90, 100),
    ]
    assert transcode.stage("fetch").expected_seconds == 20
    assert transcode.stage("encode").chunks
    assert set(BUILTIN_PIPELINES) < set(registry)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 0, end = 60 },'
            ' { key = "b", start = 50 }]',
            "pipeline 'p', stage 2 ('b'): start 50 overlaps the previous stage, which ends at 60 "
            "(ranges must not overlap)",
        ),
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 0 }, { key = "b", start = 50 },'
            ' { key = "c", start = 30 }]',
            "pipeline 'p', stage 3 ('c'): start 30 is not after the previous stage's start 50 "
            "(stages must be listed in increasing order)",
        ),
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 0 }, { key = "b", start = 0 }]',
            "stage 2 ('b'): start 0 is not after the previous stage's start 0",
        ),
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 0, colour = "red" }]',
            "pipeline 'p': Object contains unknown field `colour` - at `$.stages[0]`",
        ),
        (
            '[pipelines.p]\nsteps = [{ key = "a", start = 0 }]',
            "pipeline 'p': Object contains unknown field `steps`",
        ),
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 0 }, { key = "a", start = 50 }]',
            "pipeline 'p', stage 2 ('a'): duplicate stage key",
        ),
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 0, expected_seconds = -5 }]',
            "pipeline 'p', stage 1 ('a'): expected_seconds must be positive",
        ),
        (
            '[pipelines.p]\nstages = [{ key = "a", start = 120 }]',
            "pipeline 'p', stage 1 ('a'): start and end must lie within 0-100",
        ),
        ("[pipelines.p]\nstages = []", "pipeline 'p' has no stages"),
        ("[pipelines.p\nstages = []", "is not valid TOML: Expected ']' at the end of a table"),
    ],
    ids=[
        "overlap",
        "not-increasing",
        "same-start",
        "unknown-stage-key",
        "unknown-pipeline-key",
        "duplicate",
        "negative-duration",
        "out-of-range",
        "empty",
        "not-toml",
    ],
)
def test_pipelines_file_errors_say_what_is_wrong(tmp_path: Path, text: str, says: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as raised:
        load_pipelines(path)
    assert says in str(raised.value)
    assert "\n" not in str(raised.value), "one line, fit for a start-up error"


def test_pipelines_unreadable_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(
        ValueError, match=r"cannot read pipelines file '.*nope\.toml': No such file"
    ):
        load_pipelines(missing)
