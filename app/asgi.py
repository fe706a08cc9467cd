"""The hub as a module-level ASGI app, built from `PROGRESS_*` variables, for servers that
import one: `uvicorn progress_hub.asgi:app`, `gunicorn -k uvicorn.workers.UvicornWorker
progress_hub.asgi:app --workers N`, and `progress-hub serve --workers N` (docs/production.md).

Building the app opens nothing: the broker connects in the lifespan, in each worker.
There is no embedded broker here (each worker process would start its own), so
`PROGRESS_BROKER_URL` must be set; `progress-hub serve --workers N` sets it for its workers.
"""

from __future__ import annotations

from starlette.applications import Starlette

from progress_hub.main import create_app
from progress_hub.settings import Settings


def app_from_environment() -> Starlette:
    """The hub for the `PROGRESS_*` variables; `ValueError` when no broker URL is set."""
    settings = Settings.load()
    if settings.broker_url is None:
        raise ValueError(
            "progress_hub.asgi needs PROGRESS_BROKER_URL (redis://host:port/db): the embedded "
            "broker is started only by `progress-hub serve`"
        )
    return create_app(settings)


app = app_from_environment()
