"""The `Idempotency-Key` of an HTTP publish or create: the caller's name for one request,
so that a retry after a `503` or a lost answer is applied once (docs/api.md §2,
"Repeating a publish").

The header is the IETF httpapi draft's: a string, quoted as a structured field or bare.
"""

from __future__ import annotations

import re
from typing import Final

from starlette.requests import Request

from progress_hub.headers import request_header
from pubsub.broker import RequestKey
from pubsub.errors import InvalidUpdate

HEADER: Final = b"idempotency-key"
# Visible ASCII with no space nor quote (the draft's string, its quotes taken off): what
# fits a header and a log line.
_KEY: Final = re.compile(r'"?([!#-~]{1,255})"?')


def request_key(request: Request, body: bytes) -> RequestKey | None:
    """The request's key for its body, None without the header; `InvalidUpdate`
    for a key the hub cannot keep."""
    raw = request_header(request.scope, HEADER)
    if raw is None:
        return None
    match = _KEY.fullmatch(raw.decode("latin-1"))
    if match is None:
        raise InvalidUpdate(
            "Idempotency-Key must be 1-255 visible ASCII characters with no space or "
            "quote (a UUID, say), optionally in double quotes",
            field="Idempotency-Key",
        )
    # The same key must come with the same update: a retry repeats its body byte for byte.
    return RequestKey.of(match[1], body)
