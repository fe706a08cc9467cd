"""The progress-hub ASGI application (routes, SSE, polling, auth, settings, CLI)."""

from progress_hub.main import create_app, hub_lifespan
from progress_hub.settings import Settings

__all__ = ["Settings", "create_app", "hub_lifespan"]
