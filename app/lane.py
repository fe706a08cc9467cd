"""The hot lane: event streams and snapshot polls go straight to their handlers.

Starlette's router tries route after route, and its exception layer wraps `send` once
more; a stream pays for both on connect and, for the wrapper, in the memory it holds for
its whole life. The read routes that carry nearly all of a hub's traffic
(`app.routes.HOT_ROUTES`, the router's own `Route` objects) are matched here first,
innermost in the middleware stack, so that they keep the request id, security headers,
CORS and admission and skip only the routing; docs/performance.md (hot lane) has what
that saves. Their domain errors get the same JSON answers as everywhere else
(`app.errors`); anything unexpected still reaches the server-error layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from progress_hub.errors import error_response
from pubsub.errors import ProgressError


class HotLaneMiddleware:
    """Dispatch requests that fully match one of `routes` before the router; pass
    everything else on (a method the route does not take goes to the router's 405)."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[Route]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    try:
                        response = await route.endpoint(Request(scope, receive))
                    except ProgressError as exc:
                        response = error_response(exc)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
