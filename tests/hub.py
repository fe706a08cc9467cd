"""Real hubs for tests: uvicorn in a thread of this process, or a `progress-hub` child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from progress_hub.embedded import free_port, stop_process
from progress_hub.main import create_app
from progress_hub.settings import Settings
from progress_hub.shutdown import HubServer, ShutdownNotice
from tests.conditions import wait_until

START_TIMEOUT = 15.0
REPO = Path(__file__).resolve().parent.parent


@dataclass
class ThreadHub:
    """A hub served by uvicorn in a background thread, on a socket bound before start."""

    settings: Settings
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def run_hub(
    settings: Settings,
    port: int = 0,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    drain: bool = False,
) -> Iterator[ThreadHub]:
    """Serve `settings` on a free port (or `port`, to restart a hub in place) for the block.

    Args:
        wrap: puts ASGI middleware of the test's around the app (to delay what a loaded
            machine delays, say); it sees every request before the hub does.
        drain: stop as `progress-hub serve` does on SIGTERM (`HubServer`): stop accepting,
            tell open streams to reconnect soon, exit; else streams are cut after 1 s.
    """
    notice = ShutdownNotice() if drain else None
    app: ASGIApp = create_app(settings, shutdown=notice)
    served = serve_app(wrap(app) if wrap is not None else app, port, notice=notice)
    with served as (url, server, thread):
        yield ThreadHub(settings=settings, url=url, server=server, thread=thread)


@contextmanager
def serve_app(
    app: Any, port: int = 0, notice: ShutdownNotice | None = None
) -> Iterator[tuple[str, uvicorn.Server, threading.Thread]]:
    """Serve any ASGI `app` (its lifespan on) with uvicorn in a thread; its URL, server, thread.

    Args:
        notice: given on stop, as `HubServer` gives it (the hub's streams drain).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, lifespan="on")
    server = uvicorn.Server(config) if notice is None else HubServer(config, notice)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, START_TIMEOUT, "the server did not start")
        yield f"http://127.0.0.1:{port}", server, thread
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class ProcessHub:
    """A `progress-hub serve` child process."""

    url: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to anyone."""
        self.process.kill()
        self.process.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextmanager
def spawn_hub(
    env: Mapping[str, str],
    *args: str,
    log: Path | None = None,
    command: Sequence[str] = (sys.executable, "-m", "progress_hub.cli", "serve"),
    cwd: Path = REPO,
) -> Iterator[ProcessHub]:
    """Run `progress-hub serve` with `env` (PROGRESS_* variables) until the block ends.

    Args:
        log: a file that receives the hub's stdout and stderr (its log lines).
        command: how to start `serve` (another venv's `progress-hub serve`, say).
        cwd: the directory it runs in.
    """
    port = free_port()
    output = open(log, "wb") if log is not None else None
    process = subprocess.Popen(
        [*command, "--port", str(port), *args],
        # Any free port for an embedded broker: test hubs run side by side (README "Ten lines").
        env={"PROGRESS_EMBEDDED_PORT": "0", **os.environ, **env},
        cwd=cwd,
        stdout=output or subprocess.DEVNULL,
        stderr=output or subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"progress-hub exited with {process.returncode}")
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, START_TIMEOUT, "progress-hub serve did not become healthy", 0.05)
        yield ProcessHub(url=url, process=process)
    finally:
        stop_process(process, signal.SIGTERM, 15)
        if output is not None:
            output.close()


def serve_refuses(*args: str, env: Mapping[str, str]) -> str:
    """Run `progress-hub serve` where it must refuse to start: exit 2 and one line on
    stderr (docs/api.md §7), which is returned."""
    result = subprocess.run(
        [sys.executable, "-m", "progress_hub.cli", "serve", *args],
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]
