"""A raw-socket Server-Sent Events client for fault tests.

No HTTP library sits between the test and the socket, so a test decides exactly when
(and whether) bytes are read: a slow client really stops reading, a hundred streams cost a
hundred sockets and nothing more, and a disconnect is a real close.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.sse_frames import Frame, FrameParser


@dataclass(eq=False)
class RawStream:
    """One `GET` of an event stream over HTTP/1.1, decoding chunked transfer by hand."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    _parser: FrameParser = field(default_factory=FrameParser)
    _frames: deque[Frame] = field(default_factory=deque)
    _chunked: bool = False
    _eof: bool = False

    @classmethod
    async def open(
        cls,
        base_url: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        receive_buffer: int | None = None,
        timeout: float = 10.0,
    ) -> RawStream:
        """Connect, send the request and read the status line and headers."""
        parts = urlsplit(base_url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Set before connect, so that the TCP window is small from the handshake on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (parts.hostname or "127.0.0.1", parts.port or 80))
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
            stream = cls(reader=reader, writer=writer)
            lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
            lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await writer.drain()
            await stream._read_head()
        return stream

    async def _read_head(self) -> None:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"

    async def _read_body_bytes(self) -> bytes:
        """The next piece of body; b'' at the end of the response."""
        if self._eof:
            return b""
        if not self._chunked:
            data = await self.reader.read(65536)
            self._eof = not data
            return data
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.strip(), 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")
            self._eof = True
            return b""
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def next_block(self, timeout: float = 10.0) -> Frame | None:
        """The next block of the stream, None once the server closed it."""
        async with asyncio.timeout(timeout):
            while not self._frames:
                try:
                    data = await self._read_body_bytes()
                except (asyncio.IncompleteReadError, ConnectionError):
                    data = b""
                    self._eof = True
                if not data:
                    return None
                self._frames.extend(self._parser.feed(data))
        return self._frames.popleft()

    async def next_event(self, timeout: float = 10.0) -> Frame | None:
        """The next block that is an event (skipping comments and `retry:` hints)."""
        async with asyncio.timeout(timeout):
            while (block := await self.next_block()) is not None:
                if block.event is not None:
                    return block
        return None

    async def blocks_until_close(self, timeout: float = 10.0) -> list[Frame]:
        """Every block until the server closes the stream."""
        blocks: list[Frame] = []
        async with asyncio.timeout(timeout):
            while (block := await self.next_block()) is not None:
                blocks.append(block)
        return blocks

    async def aclose(self) -> None:
        """Close the socket (a client going away)."""
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass

    async def __aenter__(self) -> RawStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
