"""A TCP relay in front of a Redis that can hold back the replies of one connection.

For races a real server answers too fast to show: a test arms it with bytes a command
carries (a key), the next connection to send them has its replies held, and the test
lets them through once it has done what must happen meanwhile. The relay runs its own
event loop in a thread, so that a test blocked in a synchronous wait (starting a hub)
does not stall the connections it relays.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType


class HoldingRelay:
    """Relays 127.0.0.1:`port` to the server on 127.0.0.1:`target` while in `with`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.holding = threading.Event()
        """Set once a connection sent the armed bytes; its replies wait for `release`."""
        self._armed: bytes | None = None
        self._released = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def arm(self, marker: bytes) -> None:
        """Hold the replies of the next connection whose request carries `marker`."""
        self.holding.clear()
        self._released.clear()
        self._armed = marker

    def release(self) -> None:
        """Let the held replies through, and hold nothing more."""
        self._armed = None
        self._released.set()

    def __enter__(self) -> HoldingRelay:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = started.result(10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        held = False

        async def upstream() -> None:
            nonlocal held
            while data := await client_r.read(65536):
                marker = self._armed
                if marker is not None and marker in data and not self.holding.is_set():
                    held = True
                    self.holding.set()
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if held:
                    await asyncio.to_thread(self._released.wait)
                client_w.write(data)
                await client_w.drain()

        pumps = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            # Either side closing ends the connection, as it would without the relay.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_w, server_w):
                writer.close()
