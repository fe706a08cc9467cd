"""Logging: output setup (the one place that configures structlog; the CLI calls it), and
the request id that ties a request's log lines together."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(*, json: bool, level: int = logging.INFO) -> None:
    """JSON lines for machines, or coloured console lines for people."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
