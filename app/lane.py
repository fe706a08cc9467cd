"""The hot lane: event streams, snapshot polls and publishes go straight to their handlers.

Starlette's router tries route after route, and its exception layer wraps `send` once
more; a stream pays for both on connect and, for the wrapper, in the memory it holds for
its whole life, and a publish, near the end of the table, pays for a match of every
route before it. The routes that carry nearly all of a hub's traffic
(`app.routes.HOT_ROUTES`, the router's own `Route` objects) are matched here first, each
request only against those that take its method, innermost in the middleware stack, so
that they keep the request id, security headers, CORS and admission and skip only the
routing; docs/performance.md (hot lane; publish path) has what that saves. Their domain
errors get the same JSON answers as everywhere else (`app.errors`); anything unexpected
still reaches the server-error layer.
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
        # In table order within each method (HEAD where Starlette adds it to a GET route).
        by_method: dict[str, list[Route]] = {}
        for route in self.routes:
            for method in sorted(route.methods or ()):
                by_method.setdefault(method, []).append(route)
        self.by_method = {method: tuple(found) for method, found in by_method.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.by_method.get(scope["method"], ()):
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
