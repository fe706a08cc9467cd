"""Liveness, readiness and metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from progress_hub.auth import require_any_reader
from progress_hub.metrics import REGISTRY
from progress_hub.responses import json_response
from pubsub.broker import Broker
from pubsub.errors import BrokerUnavailable


async def healthz(request: Request) -> Response:
    """`GET /healthz` → 200 while the process lives."""
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """`GET /readyz` → 200 only while the broker answers and this hub's subscription feed
    is up, so that it can deliver what is published (503 + Retry-After otherwise)."""
    require_any_reader(request)
    broker: Broker = request.state.broker
    await broker.ping()
    if not broker.feed_up:
        raise BrokerUnavailable("this hub's subscription feed is reconnecting")
    return json_response({"status": "ready"})


async def prometheus(request: Request) -> Response:
    """`GET /metrics` → Prometheus text exposition."""
    require_any_reader(request)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
