"""The event-stream parser reads what the hub writes, however the bytes are cut."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from progress_hub import frames
from tests.sse_frames import Frame, FrameParser

STREAM = b"".join(
    [
        frames.retry(3000),
        frames.event(b"snapshot", b'{"job_id":"a","seq":1}', 1),
        frames.PING,
        frames.event(b"progress", '{"message":"é 😀"}'.encode(), 2),
        frames.end("a", 2, "completed"),
    ]
)
EXPECTED = [
    Frame(retry=3000),
    Frame(event="snapshot", data='{"job_id":"a","seq":1}', id="1"),
    Frame(comment="ping"),
    Frame(event="progress", data='{"message":"é 😀"}', id="2"),
    Frame(event="end", data='{"job_id":"a","seq":2,"status":"completed"}', id="2"),
]


def feed_all(parser: FrameParser, chunks: list[bytes]) -> list[Frame]:
    return [frame for chunk in chunks for frame in parser.feed(chunk)]


@settings(max_examples=100, derandomize=True, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_parser_reads_the_hubs_frames_however_the_bytes_are_cut(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[start:end] for start, end in zip(edges, edges[1:], strict=False)]
    assert feed_all(FrameParser(), chunks) == EXPECTED
    assert [frame.is_event for frame in EXPECTED] == [False, True, False, True, True]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_parser_takes_every_line_end_and_joins_data_lines(newline: bytes) -> None:
    lines = [b"event: x", b"data: one", b"data:two", b"id: 7", b"retry: soon", b"", b""]
    raw = newline.join(lines)
    parsed = feed_all(FrameParser(), [raw[i : i + 1] for i in range(len(raw))])
    assert parsed == [Frame(event="x", data="one\ntwo", id="7")]
