"""Subscriber tokens: HMAC-SHA256-signed claims naming the jobs a reader may follow.

A token is `<payload>.<signature>`, both base64url without padding; the payload is JSON
`{"jobs": [...], "exp": <unix seconds>}` where `"*"` in jobs allows every job, plus
`"cancel": true` for a token that may also ask to cancel those jobs (docs/api.md §9).
The claim is left out of tokens without the right, so they read as before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import Final

import msgspec

from pubsub.errors import AccessDenied

ALL_JOBS: Final = "*"
MAX_TOKEN_CHARS: Final = 8192


class TokenClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a valid token allows, and until when."""

    jobs: list[str]
    exp: float
    cancel: bool = False
    """The token may also ask to cancel the jobs it may read."""

    def allows(self, job_id: str) -> bool:
        """True when the token may read `job_id`."""
        return ALL_JOBS in self.jobs or job_id in self.jobs

    @property
    def allows_all(self) -> bool:
        """True for a token that may read every job (dashboards)."""
        return ALL_JOBS in self.jobs


_CLAIMS_DECODER: Final = msgspec.json.Decoder(TokenClaims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: str) -> bytes:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()).encode()


def issue_token(
    secret: str,
    job_ids: Iterable[str],
    ttl: float,
    *,
    can_cancel: bool = False,
    now: float | None = None,
) -> str:
    """A token allowing `job_ids` (or `["*"]`) to be read for `ttl` seconds.

    Args:
        can_cancel: the token may also ask to cancel those jobs (`POST
            /api/jobs/{job_id}/cancel`, docs/api.md §9).
    """
    if not secret:
        raise ValueError("a subscriber secret is needed to issue tokens")
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    jobs = list(job_ids)
    if not jobs:
        raise ValueError("a token must name at least one job id, or '*'")
    issued = time.time() if now is None else now
    payload = _b64(msgspec.json.encode(TokenClaims(jobs=jobs, exp=issued + ttl, cancel=can_cancel)))
    return f"{payload}.{_sign(secret, payload).decode()}"


def verify_token(secret: str, token: str, *, now: float | None = None) -> TokenClaims:
    """The claims of a genuine, unexpired token; `AccessDenied` otherwise."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise AccessDenied("The token is malformed.")
    payload, signature = token.split(".")
    # Compared as bytes, in constant time: compare_digest refuses non-ASCII str (a 500
    # for a token like 'é.é'), and the signature must not leak through timing.
    if not hmac.compare_digest(_sign(secret, payload), signature.encode()):
        raise AccessDenied("The token's signature is not valid.")
    try:
        claims = _CLAIMS_DECODER.decode(_unb64(payload))
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise AccessDenied("The token is malformed.") from None
    if claims.exp <= (time.time() if now is None else now):
        raise AccessDenied("The token has expired.")
    return claims
