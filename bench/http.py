"""A keep-alive HTTP/1.1 client over asyncio streams, for publishing and polling load.

Only what the hub's JSON endpoints answer is supported: a status line, headers and a
Content-Length body (or none for 204/304). Anything else is an error, not a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed HTTP response."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes


class HttpConnection:
    """One persistent connection to 127.0.0.1:port; one request at a time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def connect(cls, port: int) -> HttpConnection:
        """Open a connection to the server on loopback."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, f"127.0.0.1:{port}")

    def encode(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """The bytes of one request (exposed so load loops can build it once)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        if body is not None:
            lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(body)}")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")

    async def send(self, raw: bytes) -> Response:
        """Write one pre-encoded request and read its response."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, _, rest = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in rest.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
        if b"transfer-encoding" in headers:
            raise ValueError(f"chunked response not supported here: {status_line!r}")
        length = int(headers.get(b"content-length", b"0"))
        body = await self.reader.readexactly(length) if length else b""
        return Response(status, headers, body)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request and read its response."""
        return await self.send(self.encode(method, path, body, headers))

    async def aclose(self) -> None:
        """Close the connection."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
