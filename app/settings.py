"""The hub's configuration: one frozen `Settings`, read once from `PROGRESS_*` and flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final
from urllib.parse import urlsplit

ENV_PREFIX: Final = "PROGRESS_"
# The embedded broker's fixed address: the README's worker example publishes there without
# configuration (README "Ten lines"). 0 takes any free port (the tests do, to run side by side).
DEFAULT_EMBEDDED_PORT: Final = 6390
KNOWN_BROKER_SCHEMES: Final = (
    "memory",
    "redis",
    "rediss",
    "redis+cluster",
    "rediss+cluster",
    "unix",
    "valkey",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything a hub process needs to know; validated on construction (docs/api.md §7)."""

    broker_url: str | None = None
    """None: `serve` starts an embedded Redis-compatible server and fills this in."""
    broker_replicas: int = 0
    """Acknowledge an update only once this many replicas hold it (`WAIT`, docs/api.md §8)."""
    host: str = "127.0.0.1"
    port: int = 8000
    heartbeat: float = 15.0
    stall_after: float = 60.0
    retention: int = 3600
    history: int = 1000
    publish_key: str | None = None
    subscriber_secret: str | None = None
    token_ttl: int = 3600
    cors_origins: tuple[str, ...] = ()
    max_connections: int = 10_000
    pipelines: str | None = None
    """Path of a TOML file of extra pipelines."""
    retry_ms: int = 3000
    """The reconnection delay every stream suggests to browsers."""
    send_timeout: float = 30.0
    """Seconds a stream may wait on a client that reads nothing before it is dropped."""
    data_dir: str = ".progress-data"
    """Where the embedded server keeps its data."""
    embedded_port: int = DEFAULT_EMBEDDED_PORT
    """The embedded server's port on 127.0.0.1 (0: any free port)."""

    def __post_init__(self) -> None:
        if self.broker_url is not None:
            scheme = urlsplit(self.broker_url).scheme
            if scheme not in KNOWN_BROKER_SCHEMES:
                raise ValueError(
                    f"unknown broker scheme {scheme!r} in {self.broker_url!r} "
                    "(use redis://host:port/db or memory://)"
                )
        if self.broker_replicas < 0:
            raise ValueError(f"broker_replicas must be 0 or more, got {self.broker_replicas}")
        if self.broker_replicas and self.broker_url == "memory://":
            raise ValueError("broker_replicas needs a Redis broker (memory:// has no replicas)")
        for name in ("heartbeat", "stall_after", "send_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        for name in ("retention", "history", "token_ttl", "max_connections", "retry_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("port", "embedded_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be within 0-65535, got {getattr(self, name)}")
        if self.pipelines is not None and not os.access(self.pipelines, os.R_OK):
            raise ValueError(f"pipelines file {self.pipelines!r} cannot be read")

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Settings from `PROGRESS_*` variables, then `overrides` (flags beat variables)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, f.type)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)


# `progress-hub serve --help`: one line per setting (its default is shown beside it).
HELP: Final = {
    "broker_url": "redis://host:port/db, rediss://..., memory:// (unset: an embedded server)",
    "host": "interface to listen on",
    "port": "port to listen on",
    "heartbeat": "seconds between SSE comment pings",
    "stall_after": "seconds without update or heartbeat before a job reads stalled",
    "retention": "seconds a finished job is kept",
    "history": "events kept per job for Last-Event-ID replay",
    "publish_key": "bearer key for HTTP writes (unset: loopback clients only)",
    "subscriber_secret": "HMAC secret for subscriber tokens (unset: reads are open)",
    "token_ttl": "seconds a token issued by POST /api/jobs lives",
    "cors_origins": "comma-separated origins allowed cross-origin",
    "max_connections": "requests in flight per process, open streams included",
    "pipelines": "TOML file of extra pipelines",
    "retry_ms": "the retry: hint (ms) every stream sends browsers",
    "send_timeout": "seconds a write to a stream may block before it is dropped",
    "data_dir": "where the embedded server keeps its data",
    "embedded_port": "the embedded server's port on 127.0.0.1 (0: any free port)",
}


def _parse(name: str, raw: str, kind: Any) -> Any:
    kind = str(kind)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a number, got {raw!r}") from None
    if kind.startswith("tuple"):
        return comma_list(raw)
    return raw


def comma_list(raw: str) -> tuple[str, ...]:
    """`"a, b,,c"` → `("a", "b", "c")`: how a list setting is written, as a variable or a flag."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())
