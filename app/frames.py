"""The bytes of every Server-Sent Event the hub writes (WHATWG HTML §9.2 event stream).

Frames are built once per event and shared by every subscriber. Snapshot JSON from
msgspec never contains a raw newline, so each `data:` line is one line.
"""

from __future__ import annotations

from typing import Final

PING: Final = b": ping\n\n"


def retry(milliseconds: int) -> bytes:
    """The reconnection-delay hint that starts every stream."""
    return b"retry: %d\n\n" % milliseconds


def event(kind: bytes, data: bytes, seq: int | None = None) -> bytes:
    """One event: `event:`, `id:` when the stream is resumable, and `data:`."""
    if seq is None:
        return b"event: %s\ndata: %s\n\n" % (kind, data)
    return b"event: %s\nid: %d\ndata: %s\n\n" % (kind, seq, data)


def end(job_id: str, seq: int, status: str) -> bytes:
    """The last event of a finished job's stream.

    It carries `data` because a browser drops events with an empty data buffer, and the
    final seq as `id`, so that a reconnect gets `204 No Content` and the browser stops.
    """
    data = b'{"job_id":"%s","seq":%d,"status":"%s"}' % (job_id.encode(), seq, status.encode())
    return event(b"end", data, seq)
