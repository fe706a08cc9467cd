"""The progress-hub ASGI application (routes, SSE, polling, auth, settings, CLI)."""

from app.main import create_app
from app.settings import Settings

__all__ = ["Settings", "create_app"]
