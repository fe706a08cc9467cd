"""Admission: at most `max_connections` requests in flight per process, streams included.

Counting here, around the whole request, means a slot is always given back, however the
request ends (a client that leaves before the stream starts, a crash in a route). Past the
limit a stream request gets `200`, a jittered `retry:` and a close, because a browser
never retries a non-200, and a JSON request gets `503` with `Retry-After` (docs/api.md §3,
§7).
Probes and metrics are always answered: an operator must see an overloaded hub.
Requests with oversized headers are refused here too, before any route runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import structlog
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from progress_hub.errors import error_response
from progress_hub.responses import json_response
from progress_hub.sse import turn_away
from pubsub.errors import Overloaded

log = structlog.get_logger(__name__)

ALWAYS_ADMITTED: Final = frozenset({"/healthz", "/readyz", "/metrics"})
# uvicorn's httptools parser accepts request headers of any size; past this the request
# is refused before any route sees it. (A proxy in front should bound them first.)
MAX_HEADER_BYTES: Final = 16 * 1024


def is_stream_request(scope: Scope, stream_routes: Sequence[Route]) -> bool:
    """True for a request that one of `stream_routes` (`app.routes.STREAM_ROUTES`) serves."""
    return any(route.matches(scope)[0] is Match.FULL for route in stream_routes)


class AdmissionMiddleware:
    """Pure ASGI, so that it neither buffers streams nor costs a task per request."""

    def __init__(
        self, app: ASGIApp, *, max_connections: int, stream_routes: Sequence[Route]
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.app = app
        self.max_connections = max_connections
        self.stream_routes = tuple(stream_routes)
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            body = {"error": f"The request headers are over the limit of {MAX_HEADER_BYTES} bytes."}
            await json_response(body, status_code=431)(scope, receive, send)
            return
        if scope["path"] in ALWAYS_ADMITTED:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_connections:
            log.debug("request_refused", path=scope["path"], in_flight=self.in_flight)
            if is_stream_request(scope, self.stream_routes):
                await turn_away()(scope, receive, send)
            else:
                await error_response(Overloaded(self.max_connections))(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
