"""The hub's route table, and the few hot routes the hot lane serves before it.

The hot routes are the same `Route` objects the router holds, so that a path is spelled
once: `app.lane` dispatches them, `app.limits` tells streams from other requests by them.
"""

from __future__ import annotations

from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from progress_hub import health, jobs, polling, sse
from progress_hub.openapi import openapi_schema

ALL_EVENTS: Final = Route("/api/events", sse.all_events, methods=["GET"])
JOB_EVENTS: Final = Route("/api/jobs/{job_id}/events", sse.job_events, methods=["GET"])
JOB_SNAPSHOT: Final = Route("/api/jobs/{job_id}", polling.get_job, methods=["GET"])
PUBLISH: Final = Route("/api/jobs/{job_id}/events", jobs.publish, methods=["POST"])

STREAM_ROUTES: Final = (ALL_EVENTS, JOB_EVENTS)
"""The event-stream routes: past the connection limit they get a `retry:`, not a 503."""
HOT_ROUTES: Final = (JOB_EVENTS, JOB_SNAPSHOT, ALL_EVENTS, PUBLISH)
"""The reads and the write that carry nearly all of a hub's traffic (docs/performance.md,
hot lane; publish path)."""


async def _no_such_endpoint(request: Request) -> Response:
    raise HTTPException(404, f"There is no endpoint at {request.url.path}.")


def api_routes() -> list[BaseRoute]:
    """Every endpoint of the hub but the dashboard's files."""
    return [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.prometheus, methods=["GET"]),
        Route("/openapi.json", openapi_schema, methods=["GET"]),
        Route("/api/pipelines", jobs.list_pipelines, methods=["GET"]),
        Route("/api/access", jobs.access, methods=["GET"]),
        ALL_EVENTS,
        Route("/api/jobs", polling.list_jobs, methods=["GET"]),
        Route("/api/jobs", jobs.create_job, methods=["POST"]),
        JOB_SNAPSHOT,
        Route("/api/jobs/{job_id}", jobs.delete_job, methods=["DELETE"]),
        JOB_EVENTS,
        PUBLISH,
        Route("/api/jobs/{job_id}/cancel", jobs.cancel_job, methods=["POST"]),
        Route("/api/jobs/{job_id}/history", jobs.job_history, methods=["GET"]),
        Route("/api/jobs/{job_id}/result", jobs.job_result, methods=["GET"]),
        Route("/api/jobs/{job_id}/milestone", polling.milestone_gate, methods=["GET"]),
        # Anything else under /api is a JSON 404, whatever the method, never the static files.
        Route(
            "/api/{rest:path}",
            _no_such_endpoint,
            methods=["GET", "POST", "DELETE"],
            include_in_schema=False,
        ),
    ]
