"""Reading request bodies under the contract's size limits (API.md §2)."""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec
from starlette.requests import Request

from pubsub.errors import InvalidUpdate, PayloadTooLarge
from pubsub.events import MAX_RESULT_BYTES

MAX_BODY_BYTES: Final = 64 * 1024
# A body may carry a result of up to 1 MiB beside the other 64 KiB of fields.
MAX_BODY_WITH_RESULT: Final = MAX_BODY_BYTES + MAX_RESULT_BYTES + 1024

T = TypeVar("T")


async def read_body(request: Request, limit: int = MAX_BODY_WITH_RESULT) -> bytes:
    """The raw body, refusing (413) more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("the request body", MAX_BODY_BYTES)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("the request body", MAX_BODY_BYTES)
        chunks.append(chunk)
    return b"".join(chunks)


def decode_body(raw: bytes, decoder: msgspec.json.Decoder[T], *, empty: T | None = None) -> T:
    """Decode a JSON body; a 400 that names the field otherwise."""
    if not raw.strip() and empty is not None:
        return empty
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidUpdate(f"Invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidUpdate(f"The body is not valid JSON: {exc}") from None


def check_body_size(raw: bytes, result_bytes: int) -> None:
    """Refuse a body whose fields other than `result` pass 64 KiB."""
    if len(raw) - result_bytes > MAX_BODY_BYTES:
        raise PayloadTooLarge("the request body", MAX_BODY_BYTES)
