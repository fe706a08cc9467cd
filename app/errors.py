"""Translate domain errors into HTTP answers, once, for every route."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Final

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from progress_hub.responses import json_response
from pubsub.errors import (
    AccessDenied,
    BrokerUnavailable,
    IdempotencyKeyReused,
    InvalidUpdate,
    JobExists,
    JobNotFound,
    JobTerminal,
    NoResult,
    Overloaded,
    PayloadTooLarge,
    ProgressError,
)

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS: Final = 2

_STATUS: Final[Mapping[type[ProgressError], int]] = {
    JobNotFound: 404,
    NoResult: 404,
    JobExists: 409,
    JobTerminal: 409,
    InvalidUpdate: 400,
    IdempotencyKeyReused: 422,
    PayloadTooLarge: 413,
    BrokerUnavailable: 503,
    Overloaded: 503,
}


def error_response(exc: ProgressError) -> Response:
    """The JSON answer to a domain error: `{"error": "<sentence>", ...}`."""
    body: dict[str, Any] = {"error": str(exc)}
    headers: dict[str, str] = {}
    if isinstance(exc, AccessDenied):
        status = 403 if exc.authenticated else 401
        if not exc.authenticated:
            headers["WWW-Authenticate"] = "Bearer"
    else:
        # By the nearest class that has a status: a subclass (`ReplicasUnconfirmed`)
        # answers as the error it refines.
        status = next((_STATUS[cls] for cls in type(exc).__mro__ if cls in _STATUS), 400)
    if isinstance(exc, InvalidUpdate) and exc.field:
        body["field"] = exc.field
    if isinstance(exc, JobTerminal):
        body["status"] = str(exc.status)
    if status == 503:
        # Jittered so that clients turned away together do not all come back together.
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS + random.randint(0, 3))
    return json_response(body, status_code=status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProgressError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return json_response({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # A bug, not a caller's mistake: the contract still promises a JSON body, and the log
    # line carries the request id that the caller can quote.
    log.error("unexpected_error", path=request.url.path, exc_info=exc)
    return json_response({"error": "The hub hit an unexpected error."}, status_code=500)


EXCEPTION_HANDLERS: Final[Mapping[Any, ExceptionHandler]] = {
    ProgressError: _domain_error,
    HTTPException: _http_error,
    Exception: _unexpected_error,
}
