"""The hub's configuration: one frozen `Settings`, read once from `PROGRESS_*` and flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final
from urllib.parse import urlsplit

ENV_PREFIX: Final = "PROGRESS_"
KNOWN_BROKER_SCHEMES: Final = ("memory", "redis", "rediss", "unix", "valkey")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything a hub process needs to know; validated on construction (API.md §7)."""

    broker_url: str | None = None
    """None: `serve` starts an embedded Redis-compatible server and fills this in."""
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

    def __post_init__(self) -> None:
        if self.broker_url is not None:
            scheme = urlsplit(self.broker_url).scheme
            if scheme not in KNOWN_BROKER_SCHEMES:
                raise ValueError(
                    f"unknown broker scheme {scheme!r} in {self.broker_url!r} "
                    "(use redis://host:port/db or memory://)"
                )
        for name in ("heartbeat", "stall_after", "send_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        for name in ("retention", "history", "token_ttl", "max_connections", "retry_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0-65535, got {self.port}")
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
