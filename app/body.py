"""Reading request bodies under the contract's size limits (docs/api.md §2)."""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec
from starlette.requests import Request

from pubsub.errors import InvalidUpdate, PayloadTooLarge
from pubsub.events import MAX_RESULT_BYTES
from pubsub.nesting import MAX_DEPTH, json_nests_deeper, too_deep

MAX_BODY_BYTES: Final = 64 * 1024
# A body may carry a result of up to 1 MiB beside the other 64 KiB of fields.
MAX_BODY_WITH_RESULT: Final = MAX_BODY_BYTES + MAX_RESULT_BYTES + 1024

T = TypeVar("T")


class _ResultOnly(msgspec.Struct):
    """Just enough of a publish body to weigh its `result` before validating the rest."""

    result: msgspec.Raw = msgspec.Raw(b"")


_RESULT_ONLY: Final = msgspec.json.Decoder(_ResultOnly)


def whole_number(raw: str) -> int | None:
    """`raw` as a non-negative int when it is plain ASCII digits (`int()` also takes
    "²" and "٣", and fails on some of them); None otherwise."""
    return int(raw) if raw.isascii() and raw.isdigit() else None


async def read_body(request: Request, limit: int = MAX_BODY_WITH_RESULT) -> bytes:
    """The raw body, refusing (413) more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    size = whole_number(declared) if declared is not None else None
    if size is not None and size > limit:
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


def check_body_limits(raw: bytes) -> None:
    """Refuse a body that nests too deep (400) or whose fields other than `result` pass
    64 KiB (413), before anything decodes it.

    Nesting comes first: weighing `result` decodes the body, and decoding recurses once
    per level (pubsub/nesting.py). Then size, so that an oversized body is a 413 whatever
    else is wrong with it (docs/api.md §2).
    """
    # The body is an object around `meta` and `result`: one level more than theirs.
    if json_nests_deeper(raw, MAX_DEPTH + 1):
        raise InvalidUpdate(f"Invalid body: {too_deep('meta or result')}")
    if len(raw) <= MAX_BODY_BYTES:
        return
    try:
        result_bytes = len(_RESULT_ONLY.decode(raw).result)
    except (msgspec.DecodeError, msgspec.ValidationError):
        result_bytes = 0  # not even a JSON object: nothing excuses its size
    if len(raw) - result_bytes > MAX_BODY_BYTES:
        raise PayloadTooLarge("the request body", MAX_BODY_BYTES)
