"""The ASGI application: `create_app(settings)` and the lifespan that owns every task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, cast

import anyio
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from progress_hub import metrics, routes
from progress_hub.errors import EXCEPTION_HANDLERS
from progress_hub.fanout import Fanout
from progress_hub.headers import EdgeHeadersMiddleware, JSONErrorCORSMiddleware
from progress_hub.lane import HotLaneMiddleware
from progress_hub.limits import AdmissionMiddleware
from progress_hub.settings import Settings
from progress_hub.shutdown import ShutdownNotice
from progress_hub.state import HubState
from pubsub.broker import Broker, open_broker, redacted_url, unreachable_hint
from pubsub.errors import BrokerUnavailable
from pubsub.pipelines import PipelineRegistry, load_pipelines
from pubsub.store import JobStore

log = structlog.get_logger(__name__)

# Installed as `progress_hub/static` (pyproject.toml maps the repository's `static/` there).
STATIC_DIR: Final = Path(__file__).parent / "static"
STALL_SWEEP_MAX_INTERVAL: Final = 5.0
FEED_STARTUP_WAIT: Final = 3.0
FEED_STARTUP_POLL: Final = 0.01


def _routes() -> list[BaseRoute]:
    # The routes of `routes.HOT_ROUTES` are served by the hot lane before the router sees
    # them (`app.lane`); they are in the table all the same (OpenAPI, HEAD, 405s).
    return routes.api_routes() + _dashboard()


def _dashboard() -> list[BaseRoute]:
    # Without static/ (an install without the dashboard), `/` is a plain 404: StaticFiles on
    # a missing directory answers every unmatched path, OPTIONS included, with a 500.
    if not STATIC_DIR.is_dir():
        return []
    # follow_symlink: the editable install (Makefile) serves static/ through a tree of links.
    files = StaticFiles(directory=STATIC_DIR, html=True, follow_symlink=True)
    return [Mount("/", files, name="static")]


async def _sweep_stalls(store: JobStore, stall_after: float) -> None:
    """Flag silent jobs as stalled (so streams hear of it, not only the next poll), and
    drop expired jobs from the index (so it does not grow without bound)."""
    interval = min(stall_after / 2, STALL_SWEEP_MAX_INTERVAL)
    while True:
        await anyio.sleep(interval)
        try:
            await store.mark_stalled(stall_after)
            await store.prune_index()
        except BrokerUnavailable:
            log.debug("stall_sweep_skipped")


class LifespanNotRun(RuntimeError):
    """A request reached a mounted hub whose lifespan nobody runs."""

    def __init__(self) -> None:
        super().__init__(
            "the hub's lifespan has not run: a host app that mounts the hub must run it in "
            "its own lifespan, `async with hub_lifespan(hub): yield` (docs/production.md, "
            "Mounting into an existing app)"
        )


class _Hub(Starlette):
    """Starlette with the edge headers outside its server-error layer, which Starlette
    puts outside all user middleware: a 500 gets the request id and the security headers
    like every other answer, and the log line of the error carries the request id.

    Mounted in a host app (`host.mount("/progress", hub)`), the hub gets no lifespan
    events of its own: `hub_lifespan` runs its lifespan inside the host's and keeps the
    state here, and each request of the hub sees it as `request.state` (the host's own
    state keeps its keys for the host's routes).
    """

    mounted_state: HubState | None = None

    def build_middleware_stack(self) -> ASGIApp:
        return EdgeHeadersMiddleware(super().build_middleware_stack())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and "fanout" not in scope.get("state", ()):
            if self.mounted_state is None:
                raise LifespanNotRun()
            scope = {**scope, "state": {**scope.get("state", {}), **self.mounted_state}}
        await super().__call__(scope, receive, send)


@asynccontextmanager
async def hub_lifespan(hub: Starlette) -> AsyncIterator[None]:
    """Run the resources of `hub` (from `create_app`) while the block runs: for a host app
    that mounts the hub, inside the host's own lifespan (docs/production.md).
    """
    if not isinstance(hub, _Hub):
        raise TypeError(f"hub_lifespan takes the app create_app returns, not {hub!r}")
    async with hub.router.lifespan_context(hub) as state:
        hub.mounted_state = cast(HubState, state)
        try:
            yield
        finally:
            hub.mounted_state = None


async def _feed_started(broker: Broker) -> None:
    """Serve once the subscription feed is up, so that a hub that answers is ready
    (`/readyz`); but not later than FEED_STARTUP_WAIT: with Redis down at start, the hub
    serves anyway, says 503 where it must, and the feed connects when Redis is back."""
    with anyio.move_on_after(FEED_STARTUP_WAIT):
        while not broker.feed_up:
            await anyio.sleep(FEED_STARTUP_POLL)


def create_app(settings: Settings, *, shutdown: ShutdownNotice | None = None) -> Starlette:
    """The hub for `settings` (its broker URL must be set: see `app.embedded`).

    Args:
        shutdown: given by the server when it stops accepting connections (see
            `app.shutdown.HubServer`); open streams are then told to reconnect elsewhere.
    """
    if settings.broker_url is None:
        raise ValueError("settings.broker_url is not set (the CLI starts an embedded server)")
    broker_url = settings.broker_url
    pipelines = load_pipelines(settings.pipelines) if settings.pipelines else PipelineRegistry()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[HubState]:
        broker = open_broker(broker_url, replicas=settings.broker_replicas)
        metrics.watch_feed(broker)
        store = JobStore(broker, pipelines, history=settings.history, retention=settings.retention)
        fanout = Fanout(broker, store, heartbeat=settings.heartbeat)
        metrics.watch_held(
            ("", fanout.footprint), ("", store.footprint), ("feed.", broker.feed_footprint)
        )
        stop_listening = shutdown.listen(fanout.drain) if shutdown is not None else None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fanout.run)
                tg.start_soon(_sweep_stalls, store, settings.stall_after)
                await _feed_started(broker)
                _log_start(settings, broker_url, broker_feed_down=not broker.feed_up)
                yield {"settings": settings, "broker": broker, "store": store, "fanout": fanout}
                tg.cancel_scope.cancel()
        finally:
            if stop_listening is not None:
                stop_listening()
            with anyio.CancelScope(shield=True):
                await broker.aclose()
            log.info("hub_stopped")

    return _Hub(
        routes=_routes(),
        middleware=_middleware(settings),
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
    )


def _middleware(settings: Settings) -> list[Middleware]:
    """Outermost first, inside the edge headers (`_Hub`): CORS, admission, the hot lane."""
    middleware: list[Middleware] = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                JSONErrorCORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "Last-Event-ID",
                    "If-None-Match",
                    "X-Request-ID",
                ],
                expose_headers=["ETag", "Retry-After", "Location", "X-Request-ID"],
                max_age=600,
            )
        )
    middleware.append(
        Middleware(
            AdmissionMiddleware,
            max_connections=settings.max_connections,
            stream_routes=routes.STREAM_ROUTES,
        )
    )
    middleware.append(Middleware(HotLaneMiddleware, routes=routes.HOT_ROUTES))
    return middleware


def _log_start(settings: Settings, broker_url: str, *, broker_feed_down: bool) -> None:
    """Say how the hub is set up, and warn about open doors; never log a secret."""
    log.info(
        "hub_started",
        broker=redacted_url(broker_url),
        publish_key=settings.publish_key is not None,
        subscriber_tokens=settings.subscriber_secret is not None,
        cors_origins=list(settings.cors_origins),
        max_connections=settings.max_connections,
    )
    if broker_feed_down:
        log.warning(
            "broker_unreachable",
            broker=redacted_url(broker_url),
            check=unreachable_hint(broker_url),
            detail="serving anyway: /readyz answers 503 until the broker answers",
        )
    if settings.publish_key is None:
        # docs/api.md §6: with no key, writes are refused from anywhere but this machine.
        log.warning(
            "publish_key_missing",
            detail="no PROGRESS_PUBLISH_KEY: only loopback clients may create, publish or delete",
        )
    if settings.subscriber_secret is None:
        log.info("subscriber_tokens_off", detail="no PROGRESS_SUBSCRIBER_SECRET: reads are open")
