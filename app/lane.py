"""The hot lane: event streams and snapshot polls go straight to their handlers.

Starlette's router tries route after route, and its exception layer wraps `send` once
more; a stream pays for both on connect and, for the wrapper, on every frame it is sent
and in the memory it holds for its whole life (issue 6: connect time, memory per stream).
The three read routes that carry nearly all of a hub's traffic are matched here with one
regex, innermost in the middleware stack, so that they keep the request id, security
headers, CORS and admission and skip only the routing. Their domain errors get the same
JSON answers as everywhere else (`app.errors`); anything unexpected still reaches the
server-error layer.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from progress_hub import polling, sse
from progress_hub.errors import error_response
from pubsub.errors import ProgressError

Endpoint = Callable[[Request], Awaitable[Response]]

# `[^/]+` is what Starlette's `{job_id}` matches; the handlers check the id itself.
_HOT_PATH: Final = re.compile(r"/api/(?:events|jobs/(?P<job_id>[^/]+)(?P<events>/events)?)")
HOT_METHODS: Final = frozenset({"GET", "HEAD"})


def hot_endpoint(path: str) -> tuple[Endpoint, dict[str, str]] | None:
    """The handler of a hot read path and its path parameters; None for any other path."""
    match = _HOT_PATH.fullmatch(path)
    if match is None:
        return None
    job_id = match["job_id"]
    if job_id is None:
        return sse.all_events, {}
    if match["events"]:
        return sse.job_events, {"job_id": job_id}
    return polling.get_job, {"job_id": job_id}


class HotLaneMiddleware:
    """Dispatch `GET` of the hot read paths before the router; pass everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in HOT_METHODS:
            await self.app(scope, receive, send)
            return
        hot = hot_endpoint(scope["path"])
        if hot is None:
            await self.app(scope, receive, send)
            return
        endpoint, path_params = hot
        scope["path_params"] = path_params
        try:
            response = await endpoint(Request(scope, receive))
        except ProgressError as exc:
            response = error_response(exc)
        await response(scope, receive, send)
