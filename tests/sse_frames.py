"""Reading an event stream in tests: bytes in, frames out (WHATWG HTML §9.2.6), the
reverse of `app/frames.py`.

The product reads streams with httpx-sse (`progress-hub watch`, `app/follow.py`); the
tests need what it rightly drops, the frames that dispatch no event (a bare `retry:`
hint, a `: ping` comment), to assert the exact stream a browser gets. This is the one
parser the tests share, over httpx (`tests/sse.py`) and over raw sockets
(`tests/streams.py`); `Frame.is_event` says which frames a browser would dispatch.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Final

_LINE_END: Final = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Frame:
    """One blank-line-terminated block of an event stream: an event, a `retry:` or a comment."""

    event: str | None = None
    """The `event:` field as sent; None when absent (a browser then says "message")."""
    data: str = ""
    """The `data:` lines joined with newlines (a browser's data buffer)."""
    id: str | None = None
    retry: int | None = None
    comment: str | None = None
    """The last comment line (`: ping`), without its colon and spaces."""

    @property
    def is_event(self) -> bool:
        """True when a browser would dispatch an event for this frame (it has data)."""
        return bool(self.data)

    @property
    def seq(self) -> int:
        """The event's id as a number (the job's seq)."""
        assert self.id is not None, f"frame has no id: {self}"
        return int(self.id)


_NOTHING: Final = Frame()


@dataclass(slots=True)
class _Fields:
    event: str | None = None
    data: list[str] | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def frame(self) -> Frame | None:
        """The frame these fields make; None for a blank line that ended nothing."""
        data = "" if self.data is None else "\n".join(self.data)
        frame = Frame(self.event, data, self.id, self.retry, self.comment)
        return None if frame == _NOTHING else frame


class FrameParser:
    """Feed it the bytes of a stream as they come; it returns each frame once complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._after_cr = False
        self._fields = _Fields()

    def feed(self, chunk: bytes) -> list[Frame]:
        """The frames that `chunk` completes, in order (none while a frame is unfinished)."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the second half of a "\r\n" cut between two chunks
        text = self._text + text
        self._after_cr = text.endswith("\r")
        lines = _LINE_END.split(text)
        self._text = lines.pop()  # the line still unfinished
        frames: list[Frame] = []
        for line in lines:
            if line:
                self._field(line)
                continue
            frame = self._fields.frame()
            self._fields = _Fields()
            if frame is not None:
                frames.append(frame)
        return frames

    def _field(self, line: str) -> None:
        name, colon, value = line.partition(":")
        if not name and colon:
            self._fields.comment = value.strip()
            return
        value = value.removeprefix(" ")
        fields = self._fields
        if name == "data":
            if fields.data is None:
                fields.data = []
            fields.data.append(value)
        elif name == "event":
            fields.event = value
        elif name == "id" and "\0" not in value:
            fields.id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            fields.retry = int(value)
