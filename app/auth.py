"""Who may write (publish key, else loopback only), who may read (subscriber tokens), and
who may ask to cancel a job (either, docs/api.md §9)."""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Iterable
from typing import Final

from starlette.requests import Request

from progress_hub.settings import Settings
from pubsub.errors import AccessDenied
from pubsub.tokens import TokenClaims, verify_token


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


# A request a proxy relayed is not a loopback client, even when the proxy runs on this
# machine (and its forwarding headers were not trusted): without a publish key, the
# whole internet behind a local reverse proxy would otherwise be "loopback".
FORWARDING_HEADERS: Final = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip"})


def _is_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    # The raw names, lowercase in ASGI: one pass, not a `Headers` lookup per name.
    if any(name in FORWARDING_HEADERS for name, _ in request.scope["headers"]):
        return False
    return _is_loopback_address(request.client.host)


@functools.lru_cache(maxsize=1024)
def _is_loopback_address(host: str) -> bool:
    # Parsed once per address, not on every write of a client (docs/performance.md:
    # publish path); bounded, as the addresses come from the network.
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_publisher(request: Request) -> None:
    """Allow a write only with the publish key, or from loopback when no key is set."""
    settings: Settings = request.state.settings
    if settings.publish_key is None:
        if not _is_loopback(request):
            raise AccessDenied("With no publish key configured, only loopback clients may publish.")
        return
    given = _bearer(request)
    if given is None:
        raise AccessDenied(
            "Publishing needs 'Authorization: Bearer <publish key>'.", authenticated=False
        )
    # Constant-time comparison: the key must not leak through response timing.
    if not hmac.compare_digest(given.encode(), settings.publish_key.encode()):
        raise AccessDenied("The publish key is not valid.")


def reader_claims(request: Request) -> TokenClaims | None:
    """The caller's token claims; None when reads are open (no subscriber secret)."""
    settings: Settings = request.state.settings
    if settings.subscriber_secret is None:
        return None
    token = request.query_params.get("token") or _bearer(request)
    if not token:
        raise AccessDenied("Reading needs a subscriber token (?token= or Authorization).")
    return verify_token(settings.subscriber_secret, token)


def require_reader(request: Request, job_ids: Iterable[str] | None = None) -> TokenClaims | None:
    """Allow a read of `job_ids` (None: of every job) by the caller's token."""
    claims = reader_claims(request)
    if claims is None:
        return None
    if job_ids is None:
        if not claims.allows_all:
            raise AccessDenied("This token may not read every job.")
        return claims
    for job_id in job_ids:
        if not claims.allows(job_id):
            raise AccessDenied(f"This token may not read job {job_id!r}.")
    return claims


def require_any_reader(request: Request) -> None:
    """Allow a read of job-independent data (pipelines, metrics) by any valid token."""
    reader_claims(request)


def require_canceller(request: Request, job_id: str | None) -> None:
    """Allow a cancel request for `job_id` (None: any job the caller's token names).

    The publish key, or a subscriber token carrying the cancel right; with neither a key
    nor a secret configured, loopback clients only (docs/api.md §9).
    """
    settings: Settings = request.state.settings
    key, secret = settings.publish_key, settings.subscriber_secret
    if key is None and secret is None:
        if not _is_loopback(request):
            raise AccessDenied(
                "With no publish key or subscriber secret, only loopback clients may cancel."
            )
        return
    bearer = _bearer(request)
    if (
        key is not None
        and bearer is not None
        and hmac.compare_digest(bearer.encode(), key.encode())
    ):
        return
    token = request.query_params.get("token") or bearer
    if token is None:
        raise AccessDenied(
            "Cancelling needs the publish key or a subscriber token with the cancel right.",
            authenticated=False,
        )
    if secret is None:
        raise AccessDenied("The publish key is not valid.")
    claims = verify_token(secret, token)
    if job_id is not None and not claims.allows(job_id):
        raise AccessDenied(f"This token may not read job {job_id!r}.")
    if not claims.cancel:
        raise AccessDenied("This token does not carry the right to cancel.")


def may_cancel(request: Request, job_id: str | None) -> bool:
    """Whether `require_canceller` would let this caller cancel (for the dashboard)."""
    try:
        require_canceller(request, job_id)
    except AccessDenied:
        return False
    return True
