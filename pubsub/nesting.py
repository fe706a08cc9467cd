"""How deep a JSON value nests, measured without recursion (docs/api.md §2).

`meta` and `result` are free-form JSON, and everything that reads or writes JSON here
(msgspec's decoder and encoder, the snapshot cache) recurses once per level: a value
nested a thousand levels deep ends in `RecursionError`, a 500. So the depth is bounded,
and measured before any of those touch the value: on the raw bytes of a request body,
and on the Python value a tracker is handed. Both measures are loops, not recursion.
"""

from __future__ import annotations

from array import array
from itertools import accumulate
from typing import Any, Final

from pubsub.errors import InvalidUpdate

MAX_DEPTH: Final = 32
"""How many containers (objects, arrays) `meta` and `result` may nest, counting their own."""

_CONTAINERS: Final = (dict, list, tuple, set, frozenset)
_NOT_BRACKETS: Final = bytes(set(range(256)) - set(b"[]{}"))
# An opening bracket steps one level in (+1), a closing one out (-1, as a signed byte).
_STEPS: Final = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")


def json_nests_deeper(raw: bytes, limit: int) -> bool:
    """True when the JSON text `raw` nests more than `limit` containers deep.

    The text outside strings is reduced to its brackets (by C-speed bytes operations:
    escapes dropped, strings cut out by splitting on quotes), and the deepest point is
    the largest running sum of +1/-1 steps. Cheap for ordinary bodies (a few brackets),
    and for a hostile megabyte still cheaper than decoding it. Malformed text gives a
    meaningless depth, but it is refused as malformed anyway.
    """
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    steps = brackets.translate(_STEPS)
    if b"\x01" * (limit + 1) in steps:
        return True
    return max(accumulate(array("b", steps))) > limit


def value_nests_deeper(value: Any, limit: int) -> bool:
    """True when the Python value nests more than `limit` containers deep."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if not isinstance(item, _CONTAINERS):
            continue
        depth += 1
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth) for child in children if isinstance(child, _CONTAINERS))
    return False


def check_nesting(value: Any, field: str) -> None:
    """Raise `InvalidUpdate` (a 400) when `value`, the contents of `field`, nests too deep."""
    if value_nests_deeper(value, MAX_DEPTH):
        raise InvalidUpdate(too_deep(field), field=field)


def too_deep(what: str) -> str:
    """The sentence that refuses `what` for nesting too deep."""
    return f"{what} nests more than {MAX_DEPTH} levels deep (objects and arrays)"
