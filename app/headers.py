"""Headers on every answer: the request id, and security headers with a strict CSP that
the dashboard works under. One pure-ASGI layer: each layer wraps `send`, and a stream
pays for every wrapper on every frame (docs/performance.md)."""

from __future__ import annotations

import random
import re
from typing import Final

import structlog
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from progress_hub.responses import json_response

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REQUEST_ID_HEADER: Final = b"x-request-id"
# A caller's own request id is kept when it is short and plain (it ends up in log lines,
# so nothing that could forge a line or grow without bound); else the hub makes one.
_REQUEST_ID_RE: Final = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
SECURITY_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
)


def request_header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's raw value (`name` in lower case), from one scan of the ASGI
    list. Starlette's `Headers.get` raises and catches a KeyError for a header that is
    absent, and the ones read this way are absent from most requests."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value
    return None


def incoming_request_id(scope: Scope) -> str | None:
    """The caller's `X-Request-ID`, when it is fit to log."""
    value = request_header(scope, REQUEST_ID_HEADER)
    if value is None or not _REQUEST_ID_RE.fullmatch(value):
        return None
    return value.decode("ascii")


class EdgeHeadersMiddleware:
    """Give every request an id (bound to its log lines, echoed as `X-Request-ID`) and
    every answer the security headers; pure ASGI, so streamed bodies are not buffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # An id to find log lines by, not a secret: no need for os.urandom per request.
        request_id = incoming_request_id(scope) or f"{random.getrandbits(64):016x}"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Raw header tuples: a stream connect pays for this once, a poll on every
                # request, and Starlette's MutableHeaders rescans the list per call.
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        # Bound and reset by hand: `bound_contextvars()` is a generator-based context
        # manager, and a stream would hold its suspended generator for its whole life.
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


class JSONErrorCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the hub's error shape
    (`{"error": ...}`, docs/api.md §2) instead of plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        kept = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        reason = bytes(response.body).decode()  # e.g. "Disallowed CORS origin"
        return json_response({"error": f"{reason}."}, status_code=400, headers=kept)
