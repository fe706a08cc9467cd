"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from progress_hub.auth import require_any_reader
from progress_hub.metrics import REGISTRY
from progress_hub.responses import json_response
from progress_hub.settings import Settings
from pubsub.broker import Broker, redacted_url
from pubsub.errors import BrokerUnavailable

HINT: Final = "check that it runs and that PROGRESS_BROKER_URL is the URL your workers use"


async def healthz(request: Request) -> Response:
    """`GET /healthz` → 200 while the process lives."""
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """`GET /readyz` → 200 only while the broker answers and this hub's subscription feed
    is up, so that it can deliver what is published (503 + Retry-After otherwise)."""
    require_any_reader(request)
    broker: Broker = request.state.broker
    settings: Settings = request.state.settings
    url = settings.broker_url or ""
    try:
        await broker.ping()
    except BrokerUnavailable as exc:
        # Name the address tried: a wrong PROGRESS_BROKER_URL is found from this answer.
        raise BrokerUnavailable(f"{exc.detail} at {redacted_url(url)}; {HINT}") from exc
    if not broker.feed_up:
        where = redacted_url(url)
        raise BrokerUnavailable(f"this hub's subscription feed to {where} is reconnecting")
    return json_response({"status": "ready"})


async def prometheus(request: Request) -> Response:
    """`GET /metrics` → Prometheus text exposition."""
    require_any_reader(request)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
