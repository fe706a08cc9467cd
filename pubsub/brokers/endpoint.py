"""What our own connections to a Redis server share: where to, how to greet it, how it fails.

Two connections of ours speak RESP to the server themselves, each for a figure that
redis-py's public API could not reach (docs/performance.md): the subscription connection
(`pubsub.brokers.subscription`) and the command connection
(`pubsub.brokers.command_connection`). Both take the broker's URL as redis-py reads it
(`redis.asyncio.connection.parse_url`), so a URL means to them what it means to the
command client: `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS; the
documented `ssl_*` options of redis-py's `SSLConnection` as query arguments, with its
defaults: certificate and host name checked), `unix://path`, and `client_name` (sent as
`CLIENT SETNAME`). Here that URL becomes an `Endpoint`: the address error messages name
(never the URL, which may hold a password), how to connect, and the handshake commands.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from redis.asyncio.connection import parse_url

DEFAULT_PORT: Final = 6379
CLOSE_TIMEOUT: Final = 1.0
CERT_REQS: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


class ErrorReply(Exception):
    """An error reply of the server, e.g. `MOVED 1234 127.0.0.1:7001`."""

    @property
    def slot(self) -> int | None:
        """The slot a `MOVED` redirection names; None for any other error."""
        words = str(self).split()
        return int(words[1]) if len(words) == 3 and words[0] == "MOVED" else None


class Unanswered(ConnectionError):
    """A connection of ours that can no longer answer: lost, unreadable, or silent past
    its deadline. Its message names the address, which `translated_outage` passes on in
    the `BrokerUnavailable` it becomes (never the URL: it may hold a password)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server as a URL names it: where to connect and what to say first."""

    address: str
    """`host:port` or the socket's path: what error messages name."""
    host: str
    port: int
    path: str | None
    tls: ssl.SSLContext | None
    handshake: tuple[tuple[bytes | str, ...], ...]
    """`AUTH`, `CLIENT SETNAME` and (if asked) `SELECT`, in that order, each one reply."""

    @classmethod
    def of(cls, url: str, *, select: bool) -> Endpoint:
        """The endpoint of `url`; `select`: send `SELECT db` when the URL names a database
        other than 0 (commands care; pub/sub ignores databases)."""
        options: Mapping[str, Any] = parse_url(url)
        scheme = urlsplit(url).scheme
        path = options.get("path") if scheme == "unix" else None
        host, port = str(options.get("host", "localhost")), int(options.get("port", DEFAULT_PORT))
        handshake: list[tuple[bytes | str, ...]] = []
        if options.get("password") is not None:
            user = (options["username"],) if options.get("username") else ()
            handshake.append((b"AUTH", *user, options["password"]))
        if options.get("client_name"):
            handshake.append((b"CLIENT", b"SETNAME", options["client_name"]))
        db = int(options.get("db") or 0)
        if select and db:
            handshake.append((b"SELECT", b"%d" % db))
        return cls(
            address=path or f"{host}:{port}",
            host=host,
            port=port,
            path=path,
            tls=tls_context(options) if scheme == "rediss" else None,
            handshake=tuple(handshake),
        )

    async def connect(self, protocol: Callable[[], asyncio.Protocol]) -> None:
        """Open the socket (TLS included) for `protocol`; the caller bounds the time."""
        loop = asyncio.get_running_loop()
        if self.path is not None:
            await loop.create_unix_connection(protocol, self.path)
        else:
            await loop.create_connection(protocol, self.host, self.port, ssl=self.tls)

    def refusal(self, connection: str, reply: ErrorReply) -> str:
        """What a `BrokerUnavailable` says when the handshake was refused: the server's
        sentence (WRONGPASS, NOAUTH, NOPERM ...), which names no secret."""
        return f"{self.address} refused the {connection} connection: {str(reply).rstrip('.')}"


async def close(transport: asyncio.Transport, closed: asyncio.Future[None]) -> None:
    """Close `transport` (TLS says goodbye) and wait for `closed` (set by the protocol's
    `connection_lost`), at most `CLOSE_TIMEOUT` seconds; then drop it."""
    transport.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await asyncio.shield(closed)
    except TimeoutError:
        transport.abort()


def tls_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context of redis-py's documented `ssl_*` options, with its defaults."""
    unknown = {
        name for name in options if name.startswith("ssl_") and name not in TLS_OPTIONS
    }
    if unknown:
        raise ValueError(f"TLS options not supported by the broker: {sorted(unknown)}")
    reqs = options.get("ssl_cert_reqs", "required")
    if isinstance(reqs, str) and reqs not in CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {sorted(CERT_REQS)}, got {reqs!r}")
    verify = CERT_REQS[reqs] if isinstance(reqs, str) else ssl.VerifyMode(reqs)
    context = ssl.create_default_context()
    context.check_hostname = verify != ssl.CERT_NONE and options.get("ssl_check_hostname", True)
    context.verify_mode = verify
    for flag in options.get("ssl_include_verify_flags") or ():
        context.verify_flags |= flag
    for flag in options.get("ssl_exclude_verify_flags") or ():
        context.verify_flags &= ~flag
    if options.get("ssl_certfile") or options.get("ssl_keyfile"):
        context.load_cert_chain(
            options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password")
        )
    cafile, capath = options.get("ssl_ca_certs"), options.get("ssl_ca_path")
    cadata = options.get("ssl_ca_data")
    if cafile or capath or cadata:
        context.load_verify_locations(cafile, capath, cadata)
    if options.get("ssl_min_version") is not None:
        context.minimum_version = ssl.TLSVersion(options["ssl_min_version"])
    if options.get("ssl_ciphers"):
        context.set_ciphers(options["ssl_ciphers"])
    return context


TLS_OPTIONS: Final = frozenset(
    {"ssl_cert_reqs", "ssl_check_hostname", "ssl_include_verify_flags",
     "ssl_exclude_verify_flags", "ssl_certfile", "ssl_keyfile", "ssl_password",
     "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_min_version", "ssl_ciphers"}
)  # fmt: skip
