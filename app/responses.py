"""JSON responses encoded by msgspec (the same encoder as the wire model)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from pubsub.events import ENCODER


class MsgspecJSONResponse(Response):
    """A JSON response whose body msgspec encodes (Structs, dicts, lists)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return ENCODER.encode(content)


def json_response(
    content: Any, *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer; `content` may be pre-encoded bytes."""
    return MsgspecJSONResponse(content, status_code=status_code, headers=headers)
