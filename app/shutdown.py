"""Graceful shutdown: stop accepting, ask open streams to reconnect elsewhere, exit.

uvicorn alone would keep every stream open until its graceful timeout and then cut it,
and after serving it raises the signal again so that the default handler ends the process,
which would skip stopping the embedded broker. `HubServer` changes both.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import structlog
import uvicorn

log = structlog.get_logger(__name__)

HANDLED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

Listener = Callable[[], None]


class ShutdownNotice:
    """The server's word to the app that it is going away; the app's streams listen for it."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self.given = False

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` when the notice is given; returns the function that stops listening."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def give(self) -> None:
        """Tell every listener, once."""
        if self.given:
            return
        self.given = True
        for listener in list(self._listeners):
            listener()


class HubServer(uvicorn.Server):
    """uvicorn's server, which gives the app `notice` once it stops accepting connections."""

    def __init__(self, config: uvicorn.Config, notice: ShutdownNotice) -> None:
        super().__init__(config)
        self.notice = notice

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Close the listeners first, so that streams told to reconnect reach another hub."""
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        log.info("hub_draining")
        self.notice.give()
        await super().shutdown(sockets)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into a graceful exit, and then let `serve` return normally.

        Divergence from uvicorn: the signal is not raised again once serving ends, because
        with the default handler that kills the process before the CLI stops the embedded
        broker (whose append-only file must be flushed) and any demo child.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
